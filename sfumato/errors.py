"""User-facing failures: one exception type per kind, each with a message a user can act on.

Adapters map `SfumatoError` to exit code 2 (CLI) or an HTTP 4xx (server) in one place.
"""


class SfumatoError(Exception):
    """Base class for every error a user can fix by changing their input."""

    http_status = 400


class InvalidRequest(SfumatoError):
    """A request field is out of range, missing or inconsistent."""

    http_status = 422


class PromptSyntaxError(InvalidRequest):
    """A prompt uses unknown Midjourney-style flags or malformed syntax."""


class UnknownSampler(InvalidRequest):
    """The sampler name is not in the registry."""


class ModelNotFound(SfumatoError):
    """A model, LoRA or image path does not exist."""

    http_status = 404


class UnsupportedModel(SfumatoError):
    """A file exists but its format or family cannot be loaded."""


class PickleRefused(UnsupportedModel):
    """Pickle checkpoints are never loaded for generation."""

    def __init__(self, path: str):
        super().__init__(
            f"{path} is a pickle checkpoint, which can run arbitrary code and is never loaded for generation; "
            f"convert it once with: sfumato convert {path} OUT.safetensors --allow-pickle"
        )


class PromptBlocked(SfumatoError):
    """The prompt policy denies the prompt (the message names the category, never the rule)."""


class ImageBlocked(SfumatoError):
    """Every generated image was withheld by the image safety check in `block` mode."""
