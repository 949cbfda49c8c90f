"""The portrait workflow: a subject LoRA from a few photos, then the subject put into templates (`workflow.py`);
face regions from a user-supplied detector or mask (`faces.py`)."""
