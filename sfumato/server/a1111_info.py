"""The A1111 routes that describe the server (clients read them at start-up): embeddings, schedulers, face
restorers, Real-ESRGAN models, command-line flags, memory, and interrogate (answered 501: no offline captioner)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException

from sfumato import upscale as upscalers
from sfumato.errors import SfumatoError
from sfumato.models.home import embeddings_dir, open_weights
from sfumato.server.settings import is_loopback

# A1111's schedulers (1.9+) that sfumato's samplers take as `scheduler`: Automatic is each sampler's own schedule
SCHEDULERS = [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1.0,
               "need_inner_model": False},
              {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False}]


def embeddings() -> dict:
    """`$SFUMATO_HOME/embeddings/*.safetensors` as A1111 lists them (vectors and width from the file header)."""
    loaded, skipped = {}, {}
    folder = embeddings_dir()
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
        try:
            with open_weights(path) as handle:
                shape = handle.get_slice(next(iter(handle.keys()))).get_shape()
            loaded[path.stem] = {**entry, "shape": int(shape[-1]), "vectors": int(shape[0]) if len(shape) == 2 else 1}
        except (SfumatoError, StopIteration):
            skipped[path.stem] = {**entry, "shape": None, "vectors": None}
    return {"loaded": loaded, "skipped": skipped}


def memory() -> dict:
    """A1111's `/memory` shape: system RAM from /proc/meminfo, and CUDA when torch has it (torch only if imported)."""
    ram: dict = {}
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(fields["MemTotal"].split()[0]) * 1024
        free = int(fields["MemAvailable"].split()[0]) * 1024
        ram = {"free": free, "used": total - free, "total": total}
    except (OSError, KeyError, ValueError):
        ram = {"error": "memory figures are not available on this system"}
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        cuda = {"system": {"free": free, "used": total - free, "total": total},
                "active": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()}}
    else:
        cuda = {"error": "CUDA is not available"}
    return {"ram": ram, "cuda": cuda}


def add_routes(app: FastAPI, service, guarded: list) -> None:
    @app.get("/sdapi/v1/embeddings", tags=["a1111"], dependencies=guarded)
    def list_embeddings():
        return embeddings()

    @app.get("/sdapi/v1/schedulers", tags=["a1111"], dependencies=guarded)
    def list_schedulers():
        return SCHEDULERS

    @app.get("/sdapi/v1/face-restorers", tags=["a1111"], dependencies=guarded)
    def face_restorers():
        return []  # none ships offline; `restore_faces` is not applied

    @app.get("/sdapi/v1/realesrgan-models", tags=["a1111"], dependencies=guarded)
    def realesrgan_models():
        return [{"name": info.name, "path": Path(info.path).name if info.path else None, "scale": info.scale}
                for info in upscalers.list_upscalers() if info.kind in ("builtin", "ncnn")]

    @app.get("/sdapi/v1/cmd-flags", tags=["a1111"], dependencies=guarded)
    def cmd_flags():
        settings = service.settings
        return {"api": True, "nowebui": False, "listen": not is_loopback(settings.host), "port": settings.port,
                "api_auth": "set" if settings.api_key else None, "cors_allow_origins": list(settings.cors_origins),
                "ckpt": service.current_model, "device_id": settings.device, "data_dir": Path(settings.data_dir).name}

    @app.get("/sdapi/v1/memory", tags=["a1111"], dependencies=guarded)
    def get_memory():
        return memory()

    @app.post("/sdapi/v1/interrogate", tags=["a1111"], dependencies=guarded)
    def interrogate():
        raise HTTPException(501, "interrogate needs a captioning model (CLIP interrogator, DeepBooru); none ships "
                                 "with sfumato and nothing is downloaded")
