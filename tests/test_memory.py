"""Memory modes: 8-bit weights, VAE tiling without seams, slicing, offload hooks, presets, the CLI flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.engine import Engine
from sfumato.errors import InvalidRequest
from sfumato.evaluation.metrics import psnr
from sfumato.memory import PRESETS, memory_settings
from sfumato.memory.quantize import QuantizedConv2d, QuantizedLinear, quantize_weights, weight_bytes
from sfumato.models.embedded import embedded_model
from sfumato.requests import GenerationRequest
from test_models import lora_files  # noqa: F401 (a fixture)

REQUEST = dict(prompt="a cat", seed=1, steps=3, width=64, height=64, sampler="Euler")
# the dB below were measured on sfumato-emoji (f4 VAE); the default sfumato-scenes' f8c8 VAE is coarser
needs_emoji = pytest.mark.skipif(embedded_model("sfumato-emoji") is None, reason="sfumato-emoji is not in this checkout")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_presets_and_settings():
    assert memory_settings("lowvram").offload == "sequential" and memory_settings("medvram").offload == "model"
    assert memory_settings("medvram", quantize="int8").quantize == "int8"
    assert memory_settings(None, vae_tiling=True) == PRESETS["medvram"].__class__(vae_tiling=True)
    with pytest.raises(InvalidRequest):
        memory_settings("tinyvram")
    with pytest.raises(InvalidRequest):
        memory_settings(None, quantize="int4")


@pytest.mark.parametrize("kind, max_error", [("int8", 0.03), ("fp8", 0.2)])
def test_8bit_weights_halve_float16_memory(sd1, kind, max_error):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(sd1), subfolder="unet")
    sample, t, context = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)), 10, \
        torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = unet(sample, t, context).sample
    fp16_bytes = weight_bytes(unet) / 2
    report = quantize_weights(unet, kind)
    assert report["layers"] > 50 and report["bytes"] <= 0.55 * fp16_bytes  # measured 0.53
    assert isinstance(unet.conv_in, torch.nn.Conv2d) and not isinstance(unet.conv_in, QuantizedConv2d)
    layer = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert isinstance(layer, QuantizedLinear) and layer.qweight.element_size() == 1
    with torch.no_grad():
        assert (unet(sample, t, context).sample - reference).abs().max() < max_error
    unet.to(torch.bfloat16)  # moving the model keeps 8-bit storage, computes in the new dtype
    assert layer.qweight.element_size() == 1 and layer.compute_dtype == torch.bfloat16
    assert layer.weight.dtype == torch.bfloat16


@pytest.mark.slow
@needs_emoji
def test_int8_on_the_embedded_model_keeps_the_image():
    plain = Engine("sfumato-emoji").generate(GenerationRequest("a red apple", seed=3)).images[0].image
    for kind, floor in (("int8", 45), ("fp8", 35)):  # measured 54.2 and 43.8 dB
        engine = Engine("sfumato-emoji", memory=memory_settings(quantize=kind))
        image = engine.generate(GenerationRequest("a red apple", seed=3)).images[0].image
        assert psnr(plain, image) > floor
        assert engine.load().memory == [f"{kind} weights"]


@pytest.mark.slow
@needs_emoji
def test_tiled_vae_shares_statistics_and_leaves_no_seams():
    from skimage import data

    from sfumato.memory import tiled_vae
    from sfumato.pipelines.steps import decode_latents, encode_images, from_pil, to_pil

    image = Image.fromarray(data.astronaut()).resize((512, 512))
    full_model = Engine("sfumato-emoji").load()
    latents = encode_images(full_model, from_pil([image]))
    full = pixels(to_pil(decode_latents(full_model, latents))[0])
    tiled_model = Engine("sfumato-emoji", memory=memory_settings(vae_tiling=True)).load()
    assert tiled_model.pipe.vae.tile_sample_min_size == 256
    tiled = pixels(to_pil(decode_latents(tiled_model, latents))[0])
    shared = psnr(Image.fromarray(full.astype(np.uint8)), Image.fromarray(tiled.astype(np.uint8)))
    columns = np.abs(tiled - full).mean(axis=(0, 2))
    assert shared > 38, shared  # measured 41 dB
    assert columns.max() < 4 * np.median(columns) + 2  # no column (tile seam) stands out
    old, tiled_vae.STAT_PASSES = tiled_vae.STAT_PASSES, 0
    try:  # what plain per-tile GroupNorm statistics give
        plain = pixels(to_pil(decode_latents(tiled_model, latents))[0])
    finally:
        tiled_vae.STAT_PASSES = old
    assert psnr(Image.fromarray(full.astype(np.uint8)), Image.fromarray(plain.astype(np.uint8))) < shared - 10


def test_slicing_and_offload_hooks_keep_the_image(sd1):
    reference = pixels(Engine(sd1).generate(GenerationRequest(**REQUEST, batch_size=2)).images[1].image)
    engine = Engine(sd1, memory=memory_settings("lowvram"))
    model = engine.load()
    assert model.memory == ["VAE tiling", "VAE slicing", "attention slicing", "sequential offload skipped (no GPU)"]
    assert np.abs(pixels(engine.generate(GenerationRequest(**REQUEST, batch_size=2)).images[1].image)
                  - reference).max() <= 1
    hooked = Engine(sd1)  # the hooks model offload installs on CUDA, here moving to the CPU: our loops call modules
    hooked.load().pipe.enable_model_cpu_offload(device=torch.device("cpu"))  # directly, so the hooks must fire
    image = hooked.generate(GenerationRequest(**REQUEST, batch_size=2)).images[1].image
    assert np.abs(pixels(image) - reference).max() <= 1


@pytest.mark.slow
def test_sequential_offload_hooks_keep_every_task(sd1, tmp_path):
    """The hooks `enable_sequential_cpu_offload` installs (accelerate's `cpu_offload` on every component; diffusers
    itself refuses a CPU device), here with the CPU as execution device: weights wait on the meta device and come in
    per layer. Tensors our code makes "on the encoder's device" used to land on meta (NotImplementedError: Cannot
    copy out of meta tensor); `memory.execution_device` asks the hook."""
    from accelerate import cpu_offload
    from PIL import Image

    from sfumato.memory import execution_device

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    plain, offloaded = Engine(sd1), Engine(sd1)
    pipe = offloaded.load().pipe
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cpu_offload(component, torch.device("cpu"), offload_buffers=len(component._parameters) > 0)
    assert next(pipe.unet.parameters()).device.type == "meta"
    assert execution_device(pipe.text_encoder) == torch.device("cpu")
    base = dict(prompt="a red apple", seed=3, steps=3, width=64, height=64)
    for extra in ({"batch_size": 2}, {"init_image": str(tmp_path / "init.png"), "strength": 0.6},
                  {"init_image": str(tmp_path / "init.png"), "mask": str(tmp_path / "mask.png")},
                  {"hires_scale": 1.5, "hires_steps": 2}):
        expected = plain.generate(GenerationRequest(**base, **extra)).images[-1].image
        assert np.array_equal(pixels(offloaded.generate(GenerationRequest(**base, **extra)).images[-1].image),
                              pixels(expected)), extra


def test_quantized_weights_take_loras(sd1, lora_files):  # noqa: F811
    lora = [(str(lora_files[0]), 1.0)]
    plain = Engine(sd1).generate(GenerationRequest(**REQUEST, loras=lora)).images[0].image
    engine = Engine(sd1, memory=memory_settings(quantize="int8"))
    with_lora = engine.generate(GenerationRequest(**REQUEST, loras=lora)).images[0].image
    without = engine.generate(GenerationRequest(**REQUEST)).images[0].image
    assert psnr(plain, with_lora) > 35 and psnr(with_lora, without) < psnr(plain, with_lora)


def test_cli_memory_flags(sd1, tmp_path):
    from sfumato.cli import main

    base = ["generate", "a cat", "--model", str(sd1), "-W", "64", "-H", "64", "--steps", "2", "--seed", "4"]
    assert main([*base, "-o", str(tmp_path / "plain.png")]) == 0
    assert main([*base, "--medvram", "--quantize", "int8", "-o", str(tmp_path / "small.png")]) == 0
    assert psnr(Image.open(tmp_path / "plain.png"), Image.open(tmp_path / "small.png")) > 35
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--medvram", "--lowvram"])
    assert exit_info.value.code == 2
