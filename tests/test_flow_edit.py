"""SD3 and FLUX img2img, inpainting and outpainting: the same images as the plain diffusers Img2Img/Inpaint pipelines
with a generator per image seeded by the image's seed; the original kept outside the mask."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sfumato.engine import Engine
from sfumato.errors import UnsupportedModel
from sfumato.requests import GenerationRequest

PIPELINES = {"sd3": ("StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
             "flux": ("FluxImg2ImgPipeline", "FluxInpaintPipeline")}


@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_model(request, tmp_path_factory):
    from sfumato.models.tiny import build_tiny

    return request.param, build_tiny(request.param, tmp_path_factory.mktemp(request.param) / "model")


def _pictures(tmp_path):
    init = Image.new("RGB", (32, 32), (40, 90, 200))
    ImageDraw.Draw(init).ellipse((6, 6, 26, 26), fill=(230, 60, 40))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    init.save(tmp_path / "init.png")
    mask.save(tmp_path / "mask.png")
    return init, mask


def _reference(engine, family, inpaint, request, images, **extra):
    import diffusers

    resolved = engine.resolve(request)
    pipe = getattr(diffusers, PIPELINES[family][inpaint]).from_pipe(engine.load().pipe)
    count = request.batch_size
    texts = {"prompt": [request.prompt] * count}
    if family == "sd3":
        texts["negative_prompt"] = [resolved.negative_prompt] * count
    out = pipe(num_inference_steps=request.steps, guidance_scale=resolved.cfg_scale, height=32, width=32,
               image=[images[0]] * count, strength=request.strength, output_type="pil",
               generator=[torch.Generator().manual_seed(resolved.seed + i) for i in range(count)], **texts, **extra)
    return [np.asarray(image, dtype=np.int16) for image in out.images]


def _ours(result):
    return [np.asarray(item.image, dtype=np.int16) for item in result.images]


def test_img2img_and_inpaint_equal_the_diffusers_pipelines(flow_model, tmp_path):
    family, folder = flow_model
    init, mask = _pictures(tmp_path)
    engine = Engine(folder)
    request = GenerationRequest("red apple", seed=5, steps=4, width=32, height=32, init_image=str(tmp_path / "init.png"),
                                strength=0.6, batch_size=2)
    ours = engine.generate(request)
    reference = _reference(engine, family, False, request, [init])
    for a, b in zip(_ours(ours), reference):
        assert np.abs(a - b).max() <= 1
    assert np.abs(_ours(ours)[0] - np.asarray(init, dtype=np.int16)).mean() > 3  # it did change the picture
    assert ours.images[1].seed == 6 and "Denoising strength: 0.6" in ours.images[0].infotext
    # inpainting: the same as diffusers' Inpaint pipeline inside the mask; the original outside it (overlay)
    inpaint = dataclasses.replace(request, mask=str(tmp_path / "mask.png"), mask_blur=0, strength=0.9)
    raw = engine.generate(dataclasses.replace(inpaint, inpaint_full_image_overlay=False))
    reference = _reference(engine, family, True, inpaint, [init], mask_image=[mask] * 2)
    for a, b in zip(_ours(raw), reference):
        assert np.abs(a - b).max() <= 1
    kept = _ours(engine.generate(inpaint))[0]
    assert np.abs(kept[:, 17:] - np.asarray(init, dtype=np.int16)[:, 17:]).max() <= 1
    assert np.abs(kept[:, :15] - np.asarray(init, dtype=np.int16)[:, :15]).mean() > 3


def test_outpaint_grows_the_canvas_and_keeps_the_original(flow_model, tmp_path):
    family, folder = flow_model
    init, _ = _pictures(tmp_path)
    engine = Engine(folder)
    result = engine.generate(GenerationRequest("red apple", seed=2, steps=4, init_image=str(tmp_path / "init.png"),
                                               outpaint={"right": 16}, strength=1.0))
    picture = np.asarray(result.images[0].image, dtype=np.int16)
    assert picture.shape == (32, 48, 3)
    assert np.abs(picture[:, :16] - np.asarray(init, dtype=np.int16)[:, :16]).max() <= 1
    with pytest.raises(UnsupportedModel, match="variation seeds"):
        engine.generate(GenerationRequest("x", init_image=str(tmp_path / "init.png"), subseed_strength=0.5))
    with pytest.raises(UnsupportedModel, match="hires fix of an edit"):
        engine.generate(GenerationRequest("x", hires_scale=2.0, init_image=str(tmp_path / "init.png")))


def test_hires_fix_refines_the_upscaled_first_pass(flow_model):
    """First pass, bicubic upscale ("latent" means pixels for these families), then the Img2Img pipeline at
    hires_strength: the same as doing those steps by hand with diffusers."""
    import diffusers

    family, folder = flow_model
    engine = Engine(folder)
    request = GenerationRequest("red apple", seed=4, steps=4, width=32, height=32, hires_scale=1.5, hires_strength=0.5)
    result = engine.generate(request)
    assert result.images[0].image.size == (48, 48) and "Hires upscale: 1.5" in result.images[0].infotext
    first = engine.generate(dataclasses.replace(request, hires_scale=1.0)).images[0].image
    resolved = engine.resolve(request)
    pipe = getattr(diffusers, PIPELINES[family][0]).from_pipe(engine.load().pipe)
    texts = {"prompt": ["red apple"]} | ({"negative_prompt": [""]} if family == "sd3" else {})
    reference = pipe(image=[first.resize((48, 48), Image.Resampling.BICUBIC)], strength=0.5, num_inference_steps=4,
                     guidance_scale=resolved.cfg_scale, height=48, width=48, output_type="pil",
                     generator=[torch.Generator().manual_seed(resolved.seed)], **texts).images[0]
    assert np.abs(_ours(result)[0] - np.asarray(reference, dtype=np.int16)).max() <= 1
    assert np.abs(_ours(result)[0] - np.asarray(first.resize((48, 48), Image.Resampling.BICUBIC),
                                                dtype=np.int16)).mean() > 2


def test_flux_fill_models_inpaint_through_the_fill_pipeline(tmp_path):
    """A FLUX.1 Fill transformer (latent + masked-image latent + mask channels in) is told apart by its input width and
    inpaints through FluxFillPipeline: the same image as that pipeline with a generator per image; txt2img refused."""
    import diffusers

    from sfumato.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("flux")
    torch.manual_seed(2)
    pipe.transformer = diffusers.FluxTransformer2DModel(  # 16 packed latent + 16 masked-image + 16 mask (2x2 x 2x2)
        patch_size=1, in_channels=48, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True)
    pipe.save_pretrained(str(tmp_path / "fill"), safe_serialization=True)
    engine = Engine(tmp_path / "fill")
    init, mask = _pictures(tmp_path)
    request = GenerationRequest("red apple", seed=5, steps=4, width=32, height=32, init_image=str(tmp_path / "init.png"),
                                mask=str(tmp_path / "mask.png"), mask_blur=0, strength=1.0, cfg_scale=30.0,
                                batch_size=2, inpaint_full_image_overlay=False)
    ours = _ours(engine.generate(request))
    fill = diffusers.FluxFillPipeline.from_pipe(engine.load().pipe)
    theirs = fill(prompt=["red apple"] * 2, image=[init] * 2, mask_image=[mask] * 2, height=32, width=32, strength=1.0,
                  num_inference_steps=4, guidance_scale=30.0, output_type="pil",
                  generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).images
    for a, b in zip(ours, theirs):
        assert np.abs(a - np.asarray(b, dtype=np.int16)).max() <= 1
    with pytest.raises(UnsupportedModel, match="Fill models inpaint"):
        engine.generate(GenerationRequest("red apple", seed=1, steps=2, width=32, height=32))
