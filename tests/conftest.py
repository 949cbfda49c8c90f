"""Tiny random models in the real families, built once per test session. Nothing touches the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own models home and output folder."""
    monkeypatch.setenv("SFUMATO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SFUMATO_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("SFUMATO_MODEL", raising=False)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def _tiny(models_dir, family: str, inpainting: bool = False):
    from sfumato.models.tiny import build_tiny

    path = models_dir / (family + ("-inpaint" if inpainting else ""))
    if not path.exists():
        build_tiny(family, path, inpainting=inpainting)
    return path


@pytest.fixture(scope="session")
def sd1(models_dir):
    return _tiny(models_dir, "sd1")


@pytest.fixture(scope="session")
def sd2(models_dir):
    return _tiny(models_dir, "sd2")


@pytest.fixture(scope="session")
def sdxl(models_dir):
    return _tiny(models_dir, "sdxl")


@pytest.fixture(scope="session")
def sd1_inpaint(models_dir):
    return _tiny(models_dir, "sd1", inpainting=True)


@pytest.fixture(scope="session")
def sd1_single(models_dir, sd1):
    """The tiny SD1 model written as one LDM-layout .safetensors file by our own converter."""
    from sfumato.models.convert import convert

    path = models_dir / "sd1.safetensors"
    if not path.exists():
        convert(sd1, path)
    return path


@pytest.fixture(scope="session")
def engine_sd1(sd1):
    from sfumato.engine import Engine

    return Engine(sd1)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 CPUs, no dashboard), started on first use."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
