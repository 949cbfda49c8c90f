"""The portrait workflow end to end on the embedded model (32², with its shipped canny ControlNet): crops and
captions, a staged subject LoRA with identity scores, the best stages merged, then the subject inpainted into a
template under ControlNet and polished."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sfumato.errors import InvalidRequest
from sfumato.models.embedded import embedded_model

pytestmark = pytest.mark.skipif(embedded_model("sfumato-emoji") is None, reason="sfumato-emoji is not in this checkout")


def _photo(seed: int) -> Image.Image:
    """A synthetic 'subject': a purple blob with two yellow eyes, at a random place on a random background."""
    from sfumato.portrait.synthetic import synthetic_photo

    return synthetic_photo(seed)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from sfumato.portrait.workflow import PortraitSettings, train_portrait

    root = tmp_path_factory.mktemp("portrait")
    photos = root / "photos"
    photos.mkdir()
    for seed in range(4):
        _photo(seed).save(photos / f"p{seed}.jpg")
    (photos / "notes.txt").write_text("not a photo")
    settings = PortraitSettings(subject="zorp blob", steps=4, stages=2, keep=2, rank=2, batch_size=2, samples=2,
                                learning_rate=1e-3)
    lines: list[str] = []
    record = train_portrait(photos, root / "run", embedded_model("sfumato-emoji"), settings, say=lines.append)
    return root / "run", record, lines


@pytest.mark.slow
def test_training_crops_scores_stages_and_merges_the_best(run):
    from sfumato.models.lora_tools import read_lora

    folder, record, lines = run
    crops = sorted((folder / "data").glob("*.png"))
    assert len(crops) == 4 and all(Image.open(p).size == (32, 32) for p in crops)
    captions = [json.loads(line)["text"] for line in (folder / "data" / "metadata.jsonl").read_text().splitlines()]
    assert captions[0] == ["zorp blob", "a portrait of zorp blob"]
    assert [s["step"] for s in record["stages"]] == [2, 4] and record["extractor"].startswith("open-nsfw")
    assert all(-1 <= s["identity"] <= 1 for s in record["stages"]) and sorted(record["kept"]) == [
        "step-000002.safetensors", "step-000004.safetensors"]
    assert json.loads((folder / "portrait.json").read_text()) == record
    _, merged, _ = read_lora(folder / "subject.safetensors")
    _, first, _ = read_lora(folder / "loras" / "step-000002.safetensors")
    _, second, _ = read_lora(folder / "loras" / "step-000004.safetensors")
    module = next(iter(merged))
    torch.testing.assert_close(merged[module].delta(), 0.5 * first[module].delta() + 0.5 * second[module].delta(),
                               rtol=1e-4, atol=1e-5)
    assert any("stage 2/2" in line for line in lines)


def test_generate_puts_the_subject_in_the_masked_region_under_controlnet(run, tmp_path):
    from sfumato.portrait.workflow import generate_portrait

    folder, _, _ = run
    template = Image.new("RGB", (32, 32), (90, 160, 220))
    ImageDraw.Draw(template).rectangle((0, 24, 31, 31), fill=(40, 140, 60))
    template.save(tmp_path / "template.png")
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).ellipse((8, 4, 24, 20), fill=255)
    mask.save(tmp_path / "mask.png")
    result = generate_portrait(folder, template=tmp_path / "template.png", mask=tmp_path / "mask.png", seed=3,
                               work=tmp_path / "steps", steps=4)
    before, inpainted, final = (np.asarray(i, dtype=np.int16) for i in (template, result.inpainted, result.final))
    far = np.asarray(mask.filter(__import__("PIL.ImageFilter").ImageFilter.MaxFilter(15))) == 0
    assert np.abs(inpainted - before)[far].max() <= 1  # outside the face region: the template
    assert np.abs(inpainted - before)[np.asarray(mask) > 0].mean() > 10  # inside: repainted
    assert np.abs(final - inpainted).mean() > 0  # the polish pass ran on the whole picture
    request = result.item.request
    assert request.init_image == str(tmp_path / "steps" / "inpainted.png") and request.strength == 0.25
    assert request.loras == [(str(folder / "subject.safetensors"), 1.0)]
    assert (tmp_path / "steps" / "mask.png").exists() and (tmp_path / "steps" / "template.png").exists()
    with pytest.raises(InvalidRequest, match="no face found in the template: pass --mask"):
        generate_portrait(folder, template=tmp_path / "template.png", work=tmp_path / "w2")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    (tmp_path / "haar.xml").write_text("<opencv_storage></opencv_storage>")
    from sfumato.portrait.faces import Detector

    with pytest.raises(InvalidRequest, match="bad.onnx is not a YuNet face detector"):
        Detector(tmp_path / "bad.onnx")
    with pytest.raises(InvalidRequest, match="a YuNet .onnx file"):
        Detector(tmp_path / "haar.xml")


def test_cli_portrait_generate_and_usage_errors(run, tmp_path, capsys):
    from sfumato.cli import main

    folder, _, _ = run
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 24, 24), fill=255)
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "me.png"
    assert main(["portrait", "generate", str(folder), "--style", "astronaut", "--mask", str(tmp_path / "mask.png"),
                 "--steps", "3", "-o", str(out)]) == 0
    assert Image.open(out).size == (32, 32) and (tmp_path / "me-steps" / "inpainted.png").exists()
    assert main(["info", str(out)]) == 0 and "zorp blob, astronaut" in capsys.readouterr().out
    assert main(["portrait", "generate", str(folder), "-o", str(tmp_path / "x.png")]) == 2
    assert "give a template image" in capsys.readouterr().err
    assert main(["portrait", "generate", str(tmp_path), "--style", "x", "-o", str(tmp_path / "y.png")]) == 2
    assert main(["portrait", "train", str(tmp_path / "none"), "-o", str(tmp_path / "r")]) == 2
