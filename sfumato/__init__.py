"""sfumato: generate, edit, train, evaluate and serve latent-diffusion image models."""

from sfumato.errors import SfumatoError
from sfumato.requests import GenerationRequest, GenerationResult
from sfumato.version import __version__

__all__ = ["Engine", "GenerationRequest", "GenerationResult", "SfumatoError", "__version__"]


def __getattr__(name: str):
    # The engine pulls in torch and diffusers; import it only when asked for.
    if name == "Engine":
        from sfumato.engine import Engine

        return Engine
    raise AttributeError(name)
