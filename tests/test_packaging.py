"""The wheel: what a `pip install sfumato` carries — the default model and its ControlNet, within the issue's weight
budget (<= 60 MB of weights), and not the earlier sfumato-emoji, which stays in the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEIGHT_BUDGET = 60 * 10**6


@pytest.mark.slow
def test_the_wheel_carries_the_default_model_within_the_weight_budget(tmp_path):
    # built from a copy without build outputs: an old egg-info manifest would add files a clean clone does not
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "site",
                                                                "outputs", "test-artifacts", "__pycache__", ".whl"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path), str(source)], check=True, cwd=tmp_path, timeout=600)
    wheel = next(tmp_path.glob("sfumato-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        entries = {info.filename: info.file_size for info in archive.infolist()}
    weights = {name: size for name, size in entries.items() if name.endswith((".safetensors", ".gguf", ".onnx"))}
    assert sum(weights.values()) <= WEIGHT_BUDGET, weights
    for part in ("unet", "vae"):
        assert f"sfumato/models/embedded/sfumato-scenes/{part}/diffusion_pytorch_model.safetensors" in weights
    assert "sfumato/models/embedded/sfumato-scenes-canny/diffusion_pytorch_model.safetensors" in weights
    assert "sfumato/models/embedded/sfumato-scenes/sfumato.json" in entries
    assert not [name for name in entries if "/sfumato-emoji" in name]
