"""Model tools over HTTP (the UI's Merge tab): `POST /api/v1/merge` writes a merged checkpoint into the models home
under a new name; `GET /api/v1/merge/presets` lists the block-weight presets. Models and VAEs are named, never
given as paths, and a merge never overwrites a file."""

from __future__ import annotations

import re
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from sfumato.errors import InvalidRequest, SfumatoError
from sfumato.models.home import checkpoints_dir

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: str = Field(description="model A (a name from GET /sdapi/v1/sd-models)")
    b: str
    c: str | None = Field(None, description="model C: add difference A + (B − C)·α")
    mode: str | None = Field(None, description="weighted-sum | add-difference (default: by whether C is given)")
    alpha: float = Field(0.5, ge=-1.0, le=2.0)
    block_weights: list[float] | None = None
    block_preset: str | None = None
    text_encoder: str = "merge"
    vae: str = Field("merge", description="merge | A | B | a VAE name (GET /sdapi/v1/sd-vae) baked in")
    half: bool = False
    name: str = Field(description="the new checkpoint's name in the models home")


class SimultaneousMerge(SfumatoError):
    http_status = 409


def add_routes(app: FastAPI, service, guarded: list) -> None:
    busy: list[bool] = []

    @app.get("/api/v1/merge/presets", tags=["native"], dependencies=guarded)
    def presets():
        from sfumato.models.merge_presets import MODES, PRESETS

        return {"modes": list(MODES), "presets": sorted(PRESETS)}

    @app.post("/api/v1/merge", tags=["native"], dependencies=guarded)
    async def merge_models(body: MergeBody):
        """Checkpoint merger (A1111's tab, block-weighted too); the result is listed as a model at once."""
        from sfumato.models.merge import MergeRecipe, merge

        if not NAME.match(body.name):
            raise InvalidRequest("name: letters, digits, space, '.', '_' or '-' (at most 100), no path")
        paths = {k: Path(service.model_path(v)) for k, v in (("A", body.a), ("B", body.b), ("C", body.c)) if v}
        if body.block_weights and body.block_preset:
            raise InvalidRequest("give block_weights or block_preset, not both")
        vae = body.vae if body.vae in ("merge", "A", "B") else service.vae_path(body.vae)
        if vae is None:
            raise InvalidRequest("vae: merge, A, B or a VAE name")
        stem = body.name.removesuffix(".safetensors")
        out = checkpoints_dir() / (stem if paths["A"].is_dir() else stem + ".safetensors")
        if out.exists() or stem in service.models:
            raise InvalidRequest(f"a model named {stem!r} exists already: choose another name")
        recipe = MergeRecipe(mode=body.mode or ("add-difference" if "C" in paths else "weighted-sum"),
                             alpha=body.alpha, block_weights=body.block_weights, block_preset=body.block_preset,
                             text_encoder=body.text_encoder, vae=vae, half=body.half)
        if busy:
            raise SimultaneousMerge("a merge is running: one at a time (it holds a whole model in memory)")
        busy.append(True)
        started = time.perf_counter()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            await run_in_threadpool(merge, paths["A"], paths["B"], out, recipe, paths.get("C"))
        finally:
            busy.clear()
        service.refresh_models()
        return {"name": out.name if out.is_dir() else out.stem, "file": out.name, "mode": recipe.mode,
                "seconds": round(time.perf_counter() - started, 2)}
