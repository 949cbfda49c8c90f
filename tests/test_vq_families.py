"""VQ-autoencoder families from diffusers folders: CompVis' LDM text-to-image (VQModel) and Kandinsky 2.2 (prior + UNet
+ MoVQ), each equal to its plain diffusers pipeline given the same noise, with per-image seeds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sfumato.engine import Engine
from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.requests import GenerationRequest
from sfumato.sampling.noise import batch_noise, generators_for


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from sfumato.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("vq")
    return {family: build_tiny(family, root / family) for family in ("ldm-vq", "kandinsky22")}


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in images]


def test_ldm_vq_equals_the_diffusers_pipeline_with_the_same_noise(folders):
    from diffusers import VQModel

    engine = Engine(folders["ldm-vq"])
    assert engine.describe().family.name == "ldm-vq"
    request = GenerationRequest("red apple", seed=5, steps=4, width=32, height=32, batch_size=2)
    result = engine.generate(request)
    assert result.request.sampler == "DDIM" and result.request.cfg_scale == 6.0
    ours = _pixels(item.image for item in result.images)
    pipe = engine.load().pipe
    assert isinstance(pipe.vqvae, VQModel)
    noise = batch_noise((3, 4, 4), generators_for([5, 6]), [result.request.subseed] * 2, 0.0)
    from sfumato.sampling.samplers import make_scheduler

    pipe.scheduler = make_scheduler("DDIM", dict(pipe.scheduler.config))
    theirs = _pixels(pipe(prompt=["red apple"] * 2, height=32, width=32, num_inference_steps=4, guidance_scale=6.0,
                          latents=noise, output_type="pil").images)
    assert all(int(np.abs(a - b).max()) <= 1 for a, b in zip(ours, theirs))
    single = _pixels([engine.generate(dataclasses.replace(request, seed=6, batch_size=1)).images[0].image])[0]
    assert int(np.abs(single - ours[1]).max()) <= 1  # image k of a batch = seed + k alone
    assert not np.array_equal(ours[0], ours[1])


def test_kandinsky22_equals_the_combined_pipeline_per_image_seed(folders):
    engine = Engine(folders["kandinsky22"])
    assert engine.describe().family.name == "kandinsky22"
    request = GenerationRequest("red apple", seed=9, steps=3, width=32, height=32, batch_size=2,
                                negative_prompt="blurry")
    steps = []
    ours = _pixels(item.image for item in engine.generate(request, progress=lambda *p: steps.append(p)).images)
    pipe = engine.load().pipe
    theirs = []
    for seed in (9, 10):
        theirs += _pixels(pipe(prompt="red apple", negative_prompt="blurry", num_inference_steps=3,
                               guidance_scale=4.0, height=32, width=32, generator=torch.Generator().manual_seed(seed),
                               output_type="pil").images)
    assert all(int(np.abs(a - b).max()) <= 1 for a, b in zip(ours, theirs))
    assert not np.array_equal(ours[0], ours[1])
    assert steps[-1] == (6, 6)  # the decoder's steps of both images


def test_what_these_pipelines_cannot_do_is_refused(folders, tmp_path):
    from PIL import Image

    ldm, kandinsky = Engine(folders["ldm-vq"]), Engine(folders["kandinsky22"])
    request = GenerationRequest("red apple", seed=1, steps=2, width=32, height=32)
    with pytest.raises(InvalidRequest, match="does not scale the model input"):
        ldm.generate(dataclasses.replace(request, sampler="Euler a"))
    with pytest.raises(UnsupportedModel, match="no negative prompt"):
        ldm.generate(dataclasses.replace(request, negative_prompt="blurry"))
    Image.new("RGB", (32, 32)).save(tmp_path / "init.png")
    with pytest.raises(UnsupportedModel, match="txt2img only"):
        kandinsky.generate(dataclasses.replace(request, init_image=str(tmp_path / "init.png")))
    with pytest.raises(UnsupportedModel, match="variation seeds"):
        kandinsky.generate(dataclasses.replace(request, subseed_strength=0.5))
