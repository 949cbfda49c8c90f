"""User-facing failures: one exception type per kind, each with a message a user can act on.

Adapters map `SfumatoError` to its exit code (2: bad input, 1: the machine failed the work) or HTTP status
in one place (`cli.main`, the server's exception handler).
"""


class SfumatoError(Exception):
    """Base class for every error a user can fix by changing their input."""

    http_status = 400
    exit_code = 2


class RuntimeFailure(SfumatoError):
    """The input was fine but the machine could not do the work: a full disk, an unwritable or unreadable folder."""

    http_status = 503
    exit_code = 1


class OutOfSpace(RuntimeFailure):
    """The disk filled up while writing; nothing half-written is kept."""

    http_status = 507


class MissingDependency(RuntimeFailure):
    """An optional package is not installed; the message names the exact `pip install`."""


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
