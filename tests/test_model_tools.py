"""Model tools: the VAE override (files in both layouts and folders, infotext, replay, HTTP)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sfumato.engine import Engine
from sfumato.errors import ModelNotFound, UnsupportedModel
from sfumato.models.singlefile import vae_to_ldm
from sfumato.models.tiny import _vae
from sfumato.output import parse_infotext
from sfumato.requests import GenerationRequest


@pytest.fixture(scope="module")
def other_vae(tmp_path_factory, sd1):
    """A second tiny VAE (other weights, same architecture) as a diffusers folder, an A1111/LDM-layout file, a
    diffusers-layout file, and as the `vae/` of a copy of the tiny SD1 model (the reference)."""
    root = tmp_path_factory.mktemp("vae")
    torch.manual_seed(7)
    vae = _vae()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae.save_pretrained(str(root / "folder"), safe_serialization=True)
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    save_file(vae_to_ldm(state, dict(vae.config)), str(root / "ldm.vae.safetensors"))
    save_file({"first_stage_model." + k: v for k, v in vae_to_ldm(state, dict(vae.config)).items()},
              str(root / "checkpoint-prefix.safetensors"))
    save_file(state, str(root / "diffusers-layout.safetensors"))
    reference = root / "sd1-other-vae"
    shutil.copytree(sd1, reference)
    shutil.rmtree(reference / "vae")
    shutil.copytree(root / "folder", reference / "vae")
    return root


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def test_vae_override_equals_a_model_with_that_vae_in_every_format(other_vae, sd1):
    request = GenerationRequest("a red apple", seed=5, steps=4, width=64, height=64)
    engine = Engine(sd1)
    own = _pixels(engine.generate(request))
    reference = _pixels(Engine(other_vae / "sd1-other-vae").generate(request))
    assert np.abs(own - reference).max() > 10  # the VAE matters
    for name in ("folder", "ldm.vae.safetensors", "checkpoint-prefix.safetensors", "diffusers-layout.safetensors",
                 "sd1-other-vae"):  # a model folder: its vae/ is used
        result = engine.generate(GenerationRequest("a red apple", seed=5, steps=4, width=64, height=64,
                                                   vae=str(other_vae / name)))
        assert np.abs(_pixels(result) - reference).max() <= 1, name
        fields = parse_infotext(result.images[0].infotext)
        assert fields["VAE"] == name and len(fields["VAE hash"]) == 10
    back = engine.generate(dataclass_replace(request, vae="Automatic"))  # the model's own again, same engine
    assert np.array_equal(_pixels(back), own) and "VAE" not in parse_infotext(back.images[0].infotext)


def dataclass_replace(request, **changes):
    import dataclasses

    return dataclasses.replace(request, **changes)


def test_vae_names_resolve_in_the_models_home_and_bad_vaes_fail_in_one_line(other_vae, sd1, tmp_path):
    folder = Path(os.environ["SFUMATO_HOME"]) / "models" / "vae"
    folder.mkdir(parents=True)
    shutil.copy(other_vae / "ldm.vae.safetensors", folder)
    engine = Engine(sd1)
    resolved = engine.resolve(GenerationRequest("x", vae="ldm.vae"))
    assert resolved.vae == str(folder / "ldm.vae.safetensors")
    assert engine.resolve(GenerationRequest("x", vae="None")).vae is None
    with pytest.raises(ModelNotFound, match="vae 'nope' not found"):
        engine.resolve(GenerationRequest("x", vae="nope"))
    (tmp_path / "old.pt").write_bytes(b"not really")
    with pytest.raises(Exception, match="pickle"):
        engine.resolve(GenerationRequest("x", vae=str(tmp_path / "old.pt")))
    save_file({"decoder.conv_in.weight": torch.zeros(8, 8, 3, 3)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(UnsupportedModel, match="does not fit this model's VAE"):
        engine.generate(GenerationRequest("x", steps=1, vae=str(tmp_path / "wrong.safetensors")))


def test_cli_vae_is_recorded_and_replayed(other_vae, sd1, tmp_path, capsys):
    from sfumato.cli import main

    vae = other_vae / "ldm.vae.safetensors"
    assert main(["generate", "a red apple", "--model", str(sd1), "--vae", str(vae), "--steps", "3", "--seed", "2",
                 "--width", "64", "--height", "64", "-o", str(tmp_path / "a.png")]) == 0
    assert main(["replay", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png")]) == 0
    from PIL import Image

    first, again = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert "VAE: ldm.vae.safetensors" in first.info["parameters"]
    capsys.readouterr()
    assert main(["generate", "x", "--model", str(sd1), "--vae", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]


def test_http_vae_by_name_only(other_vae, sd1, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sfumato.server.app import create_app
    from test_server import LOCAL, _settings

    folder = Path(os.environ["SFUMATO_HOME"]) / "models" / "vae"
    folder.mkdir(parents=True)
    shutil.copy(other_vae / "ldm.vae.safetensors", folder / "other.safetensors")
    with TestClient(create_app(_settings(tmp_path, sd1)), base_url=LOCAL) as client:
        assert client.get("/sdapi/v1/sd-vae").json() == [{"model_name": "other.safetensors",
                                                          "filename": "other.safetensors"}]
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"
        body = {"prompt": "apple", "steps": 2, "width": 64, "height": 64, "seed": 1,
                "override_settings": {"sd_vae": "other.safetensors"}}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        assert "VAE: other.safetensors" in json.loads(response.json()["info"])["infotexts"][0]
        body["override_settings"] = {"sd_vae": str(folder / "other.safetensors")}  # a path: never
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 404
        assert client.post("/sdapi/v1/options", json={"sd_vae": "missing"}).status_code == 404
        assert client.post("/sdapi/v1/options", json={"sd_vae": "other"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "other"
        job = client.post("/api/v1/jobs", json={"prompt": "apple", "steps": 2, "width": 64, "height": 64,
                                                "vae": str(other_vae / "ldm.vae.safetensors")})
        assert job.status_code == 404 and "sd-vae" in job.json()["error"]["message"]
