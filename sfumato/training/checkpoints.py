"""Training checkpoints: atomic, pickle-free, keep the last N, resume exactly.

A checkpoint is a folder `checkpoints/step-NNNNNNN/` holding `trainable.safetensors` (the trained
tensors), `ema.safetensors`, `optimizer.safetensors` + `state.json` (optimizer param groups, LR
scheduler, RNG states, data position, loss history). It is written to a temporary folder and renamed
into place, and `checkpoints/latest` (a text file naming the folder) is replaced atomically last, so
killing the process during a save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def random_to_json(rng: random.Random | None = None) -> list[Any]:
    """A Python `random` state (the module's, or `rng`'s) as JSON."""
    version, state, gauss = (rng or random).getstate()
    return [version, list(state), gauss]


def random_from_json(data: list[Any], rng: random.Random | None = None) -> None:
    version, state, gauss = data
    (rng or random).setstate((version, tuple(state), gauss))


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch, numpy and Python RNG states as tensors + JSON."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": random_to_json(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return {"rng.torch": torch.get_rng_state()}, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    random_from_json(meta["python"])
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"opt.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, step: int, trainable: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None,
                    optimizer: torch.optim.Optimizer, lr_scheduler, extra: dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint `step` atomically and prune all but the newest `keep`."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    for stale in root.glob(".tmp-step-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    rng_tensors, rng_meta = rng_state()
    save_file({**opt_tensors, **rng_tensors}, str(tmp / "optimizer.safetensors"))
    state = {"step": step, "optimizer": opt_meta, "rng": rng_meta,
             "lr_scheduler": {k: ([None] * len(v) if k == "lr_lambdas" else v)
                                           for k, v in lr_scheduler.state_dict().items()}, **extra}
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write_text(root / LATEST, final.name)
    checkpoints = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in checkpoints[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None,
                                         dict[str, torch.Tensor], dict[str, Any]]:
    """(trainable tensors, EMA tensors or None, optimizer+RNG tensors, state)."""
    trainable = load_file(str(path / "trainable.safetensors"))
    ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").exists() else None
    return trainable, ema, load_file(str(path / "optimizer.safetensors")), json.loads((path / "state.json").read_text())
