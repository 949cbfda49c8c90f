"""`--dtype auto`: the precision a model loads in, recorded in the PNG and used again by replay."""

from __future__ import annotations

import pytest
import torch


def test_pick_dtype_rules(sd1, sd1_single, monkeypatch):
    from sfumato.models import precision
    from sfumato.models.detect import describe

    info = describe(sd1)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.pick_dtype(cpu, "float16", info) == torch.float16  # explicit always wins
    assert precision.pick_dtype(cuda, "auto", info) == torch.float16
    monkeypatch.setenv("SFUMATO_CPU_BF16", "0")
    assert precision.pick_dtype(cpu, "auto", info) == torch.float32
    monkeypatch.setenv("SFUMATO_CPU_BF16", "1")
    assert precision.pick_dtype(cpu, None, info) == torch.float32  # a small model loses to the casts: float32
    monkeypatch.setattr(precision, "BF16_MIN_PARAMETERS", 1000)
    assert precision.pick_dtype(cpu, "auto", info) == torch.bfloat16
    assert precision.pick_dtype(cpu, "auto", None) == torch.float32

    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(sd1 / "unet"))
    count = sum(p.numel() for p in unet.parameters())
    assert precision.denoiser_parameters(info) == count
    assert precision.denoiser_parameters(describe(sd1_single)) == count  # the single file's model.diffusion_model.*


def test_auto_bf16_is_recorded_in_the_png_and_replay_uses_it(sd1, tmp_path, monkeypatch):
    from PIL import Image

    from sfumato.cli import main
    from sfumato.models import precision
    from sfumato.output import read_png

    monkeypatch.setenv("SFUMATO_CPU_BF16", "1")
    monkeypatch.setattr(precision, "BF16_MIN_PARAMETERS", 1000)
    out = tmp_path / "a.png"
    assert main(["generate", "a cat", "--model", str(sd1), "--steps", "2", "--seed", "3", "-W", "64", "-H", "64",
                 "-o", str(out)]) == 0
    assert read_png(out).precision == "bfloat16"
    assert "Precision: bfloat16" in Image.open(out).text["parameters"]
    monkeypatch.setenv("SFUMATO_CPU_BF16", "0")  # this machine would now pick float32, the PNG says bfloat16
    again = tmp_path / "b.png"
    assert main(["replay", str(out), "-o", str(again)]) == 0
    assert list(Image.open(again).getdata()) == list(Image.open(out).getdata())
    f32 = tmp_path / "c.png"
    assert main(["replay", str(out), "-o", str(f32), "--dtype", "float32"]) == 0
    assert read_png(f32).precision == "float32" and "Precision" not in Image.open(f32).text["parameters"]


@pytest.mark.parametrize("flags, expected", [(" fpu amx_bf16 amx_tile", True), (" avx512f avx512_bf16", True),
                                             (" avx2 avx512f", False)])
def test_cpu_bf16_reads_the_processor_flags(flags, expected, monkeypatch):
    from sfumato.models import precision

    monkeypatch.delenv("SFUMATO_CPU_BF16", raising=False)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: "flags\t:" + flags + "\n")
    assert precision.cpu_bf16() is expected
