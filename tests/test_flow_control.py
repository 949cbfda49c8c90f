"""ControlNets for SD3 and FLUX: a control unit runs the family's diffusers ControlNet pipeline over the loaded
components, with sfumato's noise; the same image as that pipeline given the same latents; mismatched models refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sfumato.engine import Engine
from sfumato.errors import UnsupportedModel
from sfumato.requests import GenerationRequest
from sfumato.sampling.noise import batch_noise, generators_for


def _controlnet(family: str, pipe, out):
    import diffusers

    torch.manual_seed(5)
    if family == "sd3":
        net = diffusers.SD3ControlNetModel.from_transformer(pipe.transformer, num_layers=1,
                                                            num_extra_conditioning_channels=0,
                                                            load_weights_from_transformer=False)
    else:
        net = diffusers.FluxControlNetModel.from_transformer(pipe.transformer, num_layers=1, num_single_layers=1,
                                                             attention_head_dim=16, num_attention_heads=2)
    for name, parameter in net.named_parameters():  # ControlNets start with zero outputs: give them some
        if parameter.dim() > 1 and parameter.abs().sum() == 0:
            torch.nn.init.normal_(parameter, std=0.2)
    net.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module", params=["sd3", "flux"])
def setup(request, tmp_path_factory):
    from sfumato.models.loader import load_model
    from sfumato.models.tiny import build_tiny

    root = tmp_path_factory.mktemp(f"{request.param}-control")
    if request.param == "sd3":  # SD3 adds control only to blocks with a context output: not the last, so two blocks
        import diffusers

        from sfumato.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline("sd3")
        pipe.transformer = diffusers.SD3Transformer2DModel(
            sample_size=16, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=16)
        pipe.save_pretrained(str(root / "model"), safe_serialization=True)
        folder = root / "model"
    else:
        folder = build_tiny(request.param, root / "model")
    net = _controlnet(request.param, load_model(folder, "cpu", "float32").pipe, root / "controlnet")
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((8, 8, 24, 24), outline=(255, 255, 255), width=2)
    image.save(root / "map.png")
    return request.param, Engine(folder), net, root


def test_control_unit_equals_the_diffusers_controlnet_pipeline(setup):
    import diffusers

    family, engine, net, root = setup
    unit = {"image": str(root / "map.png"), "model": str(net), "weight": 0.8, "guidance_end": 0.75}
    request = GenerationRequest("red apple", seed=11, steps=4, width=32, height=32, batch_size=2, controls=[unit])
    ours = [np.asarray(item.image, dtype=np.int16) for item in engine.generate(request).images]
    again = [np.asarray(item.image, dtype=np.int16) for item in engine.generate(request).images]
    assert all(np.array_equal(a, b) for a, b in zip(ours, again))  # a seed replays
    plain = [np.asarray(item.image, dtype=np.int16)
             for item in engine.generate(dataclasses.replace(request, controls=[])).images]
    assert all(np.abs(a - b).mean() > 1.0 for a, b in zip(ours, plain))  # the control changes the picture

    pipe = engine.load().pipe
    resolved = engine.resolve(request)
    channels = pipe.vae.config.latent_channels if family == "flux" else pipe.transformer.config.in_channels
    scale = engine.load().vae_scale
    noise = batch_noise((channels, 32 // scale, 32 // scale), generators_for([11, 12]), [resolved.subseed] * 2, 0.0)
    if family == "flux":
        noise = pipe._pack_latents(noise, 2, channels, 32 // scale, 32 // scale)
    names = {"sd3": ("StableDiffusion3ControlNetPipeline", "SD3ControlNetModel"),
             "flux": ("FluxControlNetPipeline", "FluxControlNetModel")}[family]
    controlnet = getattr(diffusers, names[1]).from_pretrained(str(net))
    reference = getattr(diffusers, names[0]).from_pipe(pipe, controlnet=controlnet)
    from sfumato.sampling.samplers import make_scheduler

    reference.scheduler = make_scheduler(resolved.sampler, dict(pipe.scheduler.config), 11, flow=True)
    texts = {"prompt": ["red apple"] * 2}
    if family == "sd3":
        texts["negative_prompt"] = [resolved.negative_prompt] * 2
    torch.manual_seed(11)  # the pipeline samples the control image's VAE posterior from the global generator
    out = reference(num_inference_steps=4, guidance_scale=resolved.cfg_scale, height=32, width=32, latents=noise,
                    control_image=Image.open(root / "map.png"), controlnet_conditioning_scale=0.8,
                    control_guidance_start=[0.0], control_guidance_end=[0.75], output_type="pil", **texts).images
    for a, b in zip(ours, out):
        assert int(np.abs(a - np.asarray(b, dtype=np.int16)).max()) <= 1


def test_mismatched_control_models_are_refused(setup, tmp_path):
    from sfumato.control.models import save_single_file
    from sfumato.models.tiny import build_tiny_pipeline

    family, engine, net, root = setup
    unit = {"image": str(root / "map.png"), "model": str(net)}
    request = GenerationRequest("red apple", seed=1, steps=2, width=32, height=32, controls=[unit])
    with pytest.raises(UnsupportedModel, match="control_mode"):
        engine.generate(dataclasses.replace(request, controls=[{**unit, "control_mode": "prompt"}]))
    with pytest.raises(UnsupportedModel, match="init image or hires fix"):
        engine.generate(dataclasses.replace(request, hires_scale=2.0))
    import diffusers

    unet_net = diffusers.ControlNetModel.from_unet(build_tiny_pipeline("sd1").unet)
    unet_file = save_single_file(unet_net, tmp_path / "sd1-controlnet.safetensors")
    with pytest.raises(UnsupportedModel, match="does not fit"):
        engine.generate(dataclasses.replace(request, controls=[{**unit, "model": str(unet_file)}]))
    sd1 = Engine(build_tiny_pipeline("sd1").save_pretrained(str(tmp_path / "sd1")) or tmp_path / "sd1")
    with pytest.raises(UnsupportedModel, match="does not fit a UNet"):
        sd1.generate(dataclasses.replace(request, controls=[unit]))
