"""GGUF: write with the `gguf` package, read back (exact for float blocks, within tolerance for quantized ones), and
generate close to the unquantized model with the matrices kept quantized."""

from __future__ import annotations

import numpy as np
import pytest

from sfumato.engine import Engine
from sfumato.evaluation.metrics import psnr
from sfumato.models.convert import convert
from sfumato.models.detect import describe
from sfumato.requests import GenerationRequest

REQUEST = dict(prompt="a cat", seed=1, steps=4, width=64, height=64, sampler="Euler")


@pytest.fixture(scope="module")
def files(sd1, sd1_single, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return {quant: convert(sd1, folder / f"sd1-{quant}.gguf", quant=quant) for quant in ("q8_0", "q4_0", "f32", "f16")}


def test_gguf_tensors_round_trip(files, sd1_single):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    original = load_file(str(sd1_single))
    for quant in ("f32", "f16", "q8_0"):
        reader = GGUFReader(str(files[quant]))
        tensors = {t.name: t for t in reader.tensors}
        assert set(tensors) == set(original)
        key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
        entry, expected = tensors[key], original[key].float().numpy()
        values = dequantize(entry.data, entry.tensor_type).reshape(expected.shape)
        if quant == "f32":
            assert np.array_equal(values, expected)  # tensor-exact
        elif quant == "f16":
            assert np.array_equal(values, expected.astype(np.float16).astype(np.float32))
        else:
            assert entry.tensor_type.name == "Q8_0"
            scale = np.abs(expected).reshape(-1, 32).max(axis=1) / 127
            error = np.abs(values - expected).reshape(-1, 32)
            assert np.all(error <= scale[:, None] * 0.6 + 1e-7)  # half a step, plus the float16 scale's rounding
        norm = "model.diffusion_model.input_blocks.1.1.norm.weight"
        assert tensors[norm].tensor_type.name == "F32"
        assert np.array_equal(np.asarray(tensors[norm].data), original[norm].float().numpy())
    conv = GGUFReader(str(files["q8_0"])).tensors
    kinds = {t.name: t.tensor_type.name for t in conv}
    assert kinds["model.diffusion_model.input_blocks.0.0.weight"] == "F16"  # convolutions stay float16
    assert kinds["first_stage_model.decoder.conv_in.weight"] == "F16"  # and the VAE


def test_gguf_models_generate_close_to_the_original(files, sd1):
    from diffusers.quantizers.gguf.utils import GGUFLinear

    from sfumato.memory.quantize import weight_bytes

    plain = Engine(sd1)
    reference = plain.generate(GenerationRequest(**REQUEST)).images[0].image
    measured = {}
    for quant in ("q8_0", "q4_0", "f32"):
        info = describe(files[quant])
        assert (info.format, info.quantization, info.family.name) == ("gguf", quant, "sd1")
        engine = Engine(files[quant])
        image = engine.generate(GenerationRequest(**REQUEST)).images[0].image
        measured[quant] = psnr(reference, image)
        linears = sum(isinstance(m, GGUFLinear) for m in engine.load().pipe.unet.modules())
        assert (linears > 50) == (quant != "f32")  # quantized matrices stay quantized in memory
        if quant == "q8_0":  # and float16 convolutions stay float16: 0.45 of the float32 UNet's bytes
            assert weight_bytes(engine.load().pipe.unet) < 0.5 * weight_bytes(plain.load().pipe.unet)
    assert measured["f32"] == float("inf")
    assert measured["q8_0"] > 58 and measured["q4_0"] > 45, measured  # measured 63.5 and 51.5 dB


def test_gguf_cli_convert_and_models_listing(sd1, tmp_path, monkeypatch, capsys):
    from sfumato.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("SFUMATO_HOME", str(home))
    target = home / "models" / "checkpoints" / "tiny-q5.gguf"
    assert main(["convert", str(sd1), str(target), "--quant", "q5_1"]) == 0
    capsys.readouterr()
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-q5" in out and "gguf q5_1" in out
    assert main(["convert", str(sd1), str(tmp_path / "x.safetensors"), "--quant", "q8_0"]) == 2
    assert main(["generate", "a cat", "--model", str(target), "-W", "64", "-H", "64", "--steps", "2",
                 "-o", str(tmp_path / "cat.png")]) == 0
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    assert main(["generate", "a cat", "--model", str(tmp_path / "broken.gguf")]) == 2


@pytest.mark.parametrize("family", ["flux", "sd1"])
def test_a_folder_whose_denoiser_is_gguf(family, sd1, models_dir, tmp_path):
    from diffusers.quantizers.gguf.utils import GGUFLinear

    from sfumato.models.tiny import build_tiny

    source = sd1 if family == "sd1" else models_dir / "flux"
    if not source.exists():
        build_tiny("flux", source)
    target = convert(source, tmp_path / f"{family}-q8", quant="q8_0")
    part = "transformer" if family == "flux" else "unet"
    assert sorted(p.name for p in (target / part).iterdir()) == ["config.json", "diffusion_pytorch_model.gguf"]
    assert describe(target).quantization == "q8_0"
    request = dict(prompt="a cat", seed=1, steps=3, width=64, height=64)
    reference = Engine(source).generate(GenerationRequest(**request)).images[0].image
    engine = Engine(target)
    image = engine.generate(GenerationRequest(**request)).images[0].image
    assert psnr(reference, image) > 55  # measured 64.9 dB (FLUX)
    assert any(isinstance(m, GGUFLinear) for m in getattr(engine.load().pipe, part).modules())


def test_city96_style_gguf_in_the_original_flux_layout(models_dir, tmp_path):
    """A FLUX transformer GGUF in Black Forest Labs' key layout (city96's files: fused q/k/v and single-block
    projections, Q8_0 rows) dropped into a diffusers folder: the same weights, so the same image, as the
    diffusers-layout Q8_0 conversion (Q8_0 quantizes each row on its own, so fused rows quantize identically)."""
    import shutil

    from sfumato.models.flowfile import to_original
    from sfumato.models.gguf import write_gguf
    from sfumato.models.loader import load_model
    from sfumato.models.tiny import build_tiny

    source = models_dir / "flux"
    if not source.exists():
        build_tiny("flux", source)
    diffusers_layout = convert(source, tmp_path / "flux-q8", quant="q8_0")
    city96 = tmp_path / "flux-city96"
    shutil.copytree(diffusers_layout, city96)
    (city96 / "transformer" / "diffusion_pytorch_model.gguf").unlink()
    transformer = load_model(source, "cpu", "float32").pipe.transformer
    counts = write_gguf(to_original(transformer.state_dict(), "flux"), city96 / "transformer" / "flux1-tiny-Q8_0.gguf",
                        "q8_0", {"sfumato.family": "flux"}, prefix="")
    assert counts["Q8_0"] > 5
    from gguf import GGUFReader

    names = {t.name for t in GGUFReader(str(city96 / "transformer" / "flux1-tiny-Q8_0.gguf")).tensors}
    assert "double_blocks.0.img_attn.qkv.weight" in names and "single_blocks.0.linear1.weight" in names
    request = GenerationRequest(prompt="a cat", seed=1, steps=3, width=64, height=64)
    ours = np.asarray(Engine(city96).generate(request).images[0].image)
    theirs = np.asarray(Engine(diffusers_layout).generate(request).images[0].image)
    assert np.array_equal(ours, theirs)
    from sfumato.errors import UnsupportedModel

    with pytest.raises(UnsupportedModel, match="transformer/ folder"):
        Engine(city96 / "transformer" / "flux1-tiny-Q8_0.gguf").generate(request)
