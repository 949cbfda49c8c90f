"""PixArt-Σ and class-conditional DiT from diffusers folders: detected, generated with sfumato's seeds, and equal to
the plain diffusers pipelines on tiny random models in the real layouts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sfumato.engine import Engine
from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.models.detect import describe
from sfumato.requests import GenerationRequest


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from sfumato.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("dit")
    return {family: build_tiny(family, root / family) for family in ("pixart", "dit")}


def _pixels(images):
    return [np.asarray(image.convert("RGB"), dtype=np.int16) for image in images]


def test_pixart_equals_the_diffusers_pipeline_with_the_same_noise(folders):
    import diffusers

    folder = folders["pixart"]
    assert describe(folder).family.name == "pixart"
    engine = Engine(folder)
    request = GenerationRequest("a red apple", negative_prompt="blurry", seed=11, steps=5, width=32, height=32,
                                batch_size=2)
    ours = engine.generate(request)
    assert ours.request.sampler == "DPM++ 2M" and ours.request.cfg_scale == 4.5 and ours.images[1].seed == 12
    reference = diffusers.PixArtSigmaPipeline.from_pretrained(str(folder), local_files_only=True)
    reference.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    noise = torch.stack([torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (11, 12)])
    theirs = reference(prompt=["a red apple"] * 2, negative_prompt="blurry", num_inference_steps=5, guidance_scale=4.5,
                       height=32, width=32, latents=noise, use_resolution_binning=False, output_type="pil").images
    for a, b in zip(_pixels(i.image for i in ours.images), _pixels(theirs)):
        assert np.abs(a - b).max() <= 1
    assert np.abs(_pixels([ours.images[0].image])[0] - _pixels([ours.images[1].image])[0]).mean() > 3
    # a single image of the batch replays alone; another prompt changes it
    alone = engine.generate(dataclasses.replace(request, batch_size=1, seed=12))
    assert np.abs(_pixels([alone.images[0].image])[0] - _pixels([ours.images[1].image])[0]).max() <= 1
    other = engine.generate(dataclasses.replace(request, prompt="a blue house", batch_size=1))
    assert np.abs(_pixels([other.images[0].image])[0] - _pixels([ours.images[0].image])[0]).max() > 0


def test_dit_class_labels_as_prompts_equal_the_diffusers_pipeline(folders):
    import diffusers

    folder = folders["dit"]
    assert describe(folder).family.name == "dit"
    engine = Engine(folder)
    request = GenerationRequest("golden retriever", seed=3, steps=6, batch_size=2)
    ours = engine.generate(request)
    assert (ours.request.width, ours.request.height) == (16, 16)  # the model's one size, by default
    reference = diffusers.DiTPipeline.from_pretrained(str(folder), local_files_only=True)
    reference.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    theirs = reference(class_labels=[207, 207], guidance_scale=4.0, num_inference_steps=6, output_type="pil",
                       generator=[torch.Generator().manual_seed(s) for s in (3, 4)]).images
    for a, b in zip(_pixels(i.image for i in ours.images), _pixels(theirs)):
        assert np.abs(a - b).max() <= 1
    by_number = engine.generate(dataclasses.replace(request, prompt="207", batch_size=1))
    assert np.array_equal(_pixels([by_number.images[0].image])[0], _pixels([ours.images[0].image])[0])
    goldfish = engine.generate(dataclasses.replace(request, prompt="Goldfish", batch_size=1))  # a synonym, any case
    assert np.abs(_pixels([goldfish.images[0].image])[0] - _pixels([ours.images[0].image])[0]).max() > 0
    with pytest.raises(InvalidRequest, match="not a class of this DiT model"):
        engine.generate(dataclasses.replace(request, prompt="spaceship"))
    with pytest.raises(UnsupportedModel, match="no negative prompt"):
        engine.generate(dataclasses.replace(request, negative_prompt="blurry"))
    with pytest.raises(UnsupportedModel, match="16x16 images only"):
        engine.generate(dataclasses.replace(request, width=32, height=32))
    with pytest.raises(UnsupportedModel, match="txt2img only for now, not hires fix"):
        engine.generate(dataclasses.replace(request, hires_scale=2.0))
