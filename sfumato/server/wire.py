"""The native API's request bodies, derived from `GenerationRequest` (one definition of every field)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from sfumato.requests import GenerationRequest


NOT_ON_THE_WIRE = {"inpaint_full_image_overlay", "prediction_type", "template", "image_prompts", "ip_image_encoder"}


def _job_request_model() -> type[BaseModel]:
    """The native job body: `GenerationRequest`'s fields (one definition), unknown fields refused.

    Over HTTP `init_image`, `mask` and `reference_image` are base64 images, never paths, and `loras` are names from
    GET /api/v1/loras; each control unit's `image`/`mask` is base64 and its `model` a name from
    GET /controlnet/model_list (or null for the default).
    """
    hints = typing.get_type_hints(GenerationRequest)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(GenerationRequest):
        if f.name in NOT_ON_THE_WIRE:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ...
        fields[f.name] = (hints[f.name], default)
    return create_model("JobRequest", __config__=ConfigDict(extra="forbid"), **fields)


JobRequest = _job_request_model()


class TokensRequest(BaseModel):
    prompt: str
    model: str | None = None


async def json_object(request) -> dict[str, Any]:
    """A route's JSON body as an object ({} for any other JSON value); not JSON -> one-line InvalidRequest."""
    from sfumato.errors import InvalidRequest

    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("the body is not JSON") from None
    return body if isinstance(body, dict) else {}
