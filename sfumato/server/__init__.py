"""`sfumato serve`: OpenAI Images, A1111 `/sdapi/v1` and native jobs APIs over one persistent, batching job queue."""
