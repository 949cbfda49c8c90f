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
    ldm = vae_to_ldm(state, dict(vae.config))  # first_stage_model.* as in a checkpoint
    save_file(ldm, str(root / "checkpoint-prefix.safetensors"))
    save_file({k.removeprefix("first_stage_model."): v for k, v in ldm.items()}, str(root / "ldm.vae.safetensors"))
    save_file(state, str(root / "diffusers-layout.safetensors"))
    reference = root / "sd1-other-vae"
    shutil.copytree(sd1, reference)
    shutil.rmtree(reference / "vae")
    shutil.copytree(root / "folder", reference / "vae")
    return root


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- sfumato merge

@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three tiny SD1 models (different random weights), as diffusers folders and as LDM single files."""
    from sfumato.models.convert import convert
    from sfumato.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("merge")
    out = {}
    for name, seed in (("A", 0), ("B", 1), ("C", 2)):
        folder = build_tiny("sd1", root / name, seed=seed)
        out[name] = folder
        out[name + ".safetensors"] = convert(folder, root / f"{name}.safetensors")
    return out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if path.is_file():
        return load_file(str(path))
    return {f"{p.parent.name}/{k}": v for p in sorted(path.glob("*/*.safetensors")) for k, v in load_file(str(p)).items()}


def test_weighted_sum_and_add_difference_follow_the_formulas(three, tmp_path):
    from safetensors import safe_open

    from sfumato.models.merge import MergeRecipe, merge

    a, b, c = (_tensors(three[n + ".safetensors"]) for n in "ABC")
    out = merge(three["A.safetensors"], three["B.safetensors"], tmp_path / "ws.safetensors", MergeRecipe(alpha=0.3))
    merged = _tensors(out)
    assert merged.keys() == a.keys()
    for key, value in merged.items():
        expected = a[key] * 0.7 + b[key] * 0.3 if a[key].is_floating_point() else a[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    with safe_open(str(out), framework="pt") as handle:
        recipe = json.loads(handle.metadata()["sfumato.merge"])
        assert "sfumato.configs" in handle.metadata()  # A's configs ride along: it loads offline
    assert recipe["mode"] == "weighted-sum" and recipe["alpha"] == 0.3 and set(recipe["hashes"]) == {"A", "B"}
    out = merge(three["A.safetensors"], three["B.safetensors"], tmp_path / "ad.safetensors",
                MergeRecipe(mode="add-difference", alpha=0.8), c=three["C.safetensors"])
    for key, value in _tensors(out).items():
        if a[key].is_floating_point():
            torch.testing.assert_close(value, a[key] + (b[key] - c[key]) * 0.8, rtol=0, atol=1e-5)
    result = Engine(out).generate(GenerationRequest("apple", steps=2, width=64, height=64, seed=1))
    assert result.images[0].image.size == (64, 64)


def test_block_weights_hit_the_same_blocks_in_both_layouts(three, tmp_path):
    from sfumato.models.loader import load_model
    from sfumato.models.merge import MergeRecipe, block_index, merge

    weights = [i / 12 for i in range(13)]  # the tiny UNet: IN00..IN05, M00, OUT00..OUT05
    file = merge(three["A.safetensors"], three["B.safetensors"], tmp_path / "mbw.safetensors",
                 MergeRecipe(alpha=0.9, block_weights=weights, text_encoder="B"))
    folder = merge(three["A"], three["B"], tmp_path / "mbw", MergeRecipe(alpha=0.9, block_weights=weights,
                                                                          text_encoder="B"))
    a, b, merged = (_tensors(p) for p in (three["A.safetensors"], three["B.safetensors"], file))
    seen = set()
    for key in a:
        index = block_index(key, False, 2, 6, 6)
        if index is None or not a[key].is_floating_point():
            continue
        seen.add(index)
        torch.testing.assert_close(merged[key], a[key] * (1 - weights[index]) + b[key] * weights[index],
                                   rtol=0, atol=1e-6)
    assert seen == set(range(13))
    vae_key = next(k for k in a if k.startswith("first_stage_model."))
    torch.testing.assert_close(merged[vae_key], a[vae_key] * 0.1 + b[vae_key] * 0.9, rtol=0, atol=1e-6)
    text_key = next(k for k in a if k.startswith("cond_stage_model.") and a[k].is_floating_point())
    assert torch.equal(merged[text_key], b[text_key])
    one, other = load_model(file, device="cpu"), load_model(folder, device="cpu")
    for (name, x), (_, y) in zip(one.pipe.unet.state_dict().items(), other.pipe.unet.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None)
    assert pipe("apple", num_inference_steps=1, height=64, width=64, output_type="np").images.shape == (1, 64, 64, 3)
    assert json.loads((folder / "merge.json").read_text())["block_weights"] == weights


def test_block_presets_are_the_merge_block_weighted_tables():
    from sfumato.models.merge import preset_weights

    grad_v = preset_weights("GRAD_V", 25)
    assert grad_v[0] == 1 and grad_v[12] == 0 and grad_v[24] == 1
    assert grad_v[1] == pytest.approx(0.9166666667) and grad_v[13] == pytest.approx(0.0833333333)
    assert preset_weights("COSINE", 25)[1] == pytest.approx(0.995722430686905)
    assert preset_weights("SMOOTHSTEP", 25)[1] == pytest.approx(0.00506365740740741)
    assert len(preset_weights("GRAD_A", 19)) == 19


def test_merge_bakes_in_a_vae_and_fails_in_one_line(three, other_vae, sdxl, tmp_path, capsys):
    from sfumato.cli import main

    out = tmp_path / "vae.safetensors"
    assert main(["merge", str(three["A.safetensors"]), str(three["B.safetensors"]), "-o", str(out),
                 "--vae", str(other_vae / "ldm.vae.safetensors")]) == 0
    merged, baked = _tensors(out), _tensors(other_vae / "ldm.vae.safetensors")
    for key, value in baked.items():
        assert torch.equal(merged["first_stage_model." + key], value.reshape(merged["first_stage_model." + key].shape))
    cases = [
        ([str(three["A"]), str(three["B.safetensors"]), "-o", str(tmp_path / "x.safetensors")], 2, "one kind"),
        ([str(three["A"]), str(sdxl), "-o", str(tmp_path / "x")], 2, "different families"),
        ([str(three["A"]), str(three["B"]), "-o", str(tmp_path / "x"), "--block-weights", "1,2"], 2, "13 values"),
        ([str(three["A"]), str(three["B"]), "-o", str(tmp_path / "x"), "--mode", "add-difference"], 2, "third model"),
        ([str(three["A"]), str(three["B"]), "-o", str(tmp_path / "x.safetensors")], 2, "a folder"),
    ]
    for argv, code, message in cases:
        capsys.readouterr()
        assert main(["merge", *argv]) == code, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


# ----------------------------------------------------------------------------- LoRA tools

def _random_lora(path: Path, seed: int, rank: int = 4, scale: float = 0.3) -> Path:
    """A kohya-layout LoRA on the tiny SD1 UNet's attention projections and the text encoder's q/v/out (diffusers
    recognises a kohya text-encoder part only when it has `out_proj`: real files always do)."""
    from sfumato.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1")
    generator = torch.Generator().manual_seed(seed)
    state = {}
    targets = [("lora_unet", pipe.unet, ("attn1.to_q", "attn2.to_v", "proj_in")),
               ("lora_te", pipe.text_encoder, ("self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj"))]
    for prefix, model, names in targets:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(names):
                if prefix == "lora_te" and not name.startswith("text_model."):
                    name = "text_model." + name  # kohya names (transformers 5 dropped the wrapper module)
                key = f"{prefix}_{name.replace('.', '_')}"
                state[key + ".lora_down.weight"] = scale * torch.randn(rank, module.in_features, generator=generator)
                state[key + ".lora_up.weight"] = scale * torch.randn(module.out_features, rank, generator=generator)
                state[key + ".alpha"] = torch.tensor(float(rank) / 2)
    save_file(state, str(path))
    return path


def _image(model, loras=(), vae=None) -> np.ndarray:
    request = GenerationRequest("a red apple", seed=3, steps=4, width=64, height=64, loras=list(loras), vae=vae)
    return np.asarray(Engine(model).generate(request).images[0].image, dtype=np.int16)


@pytest.mark.slow
def test_bake_equals_generating_with_the_lora(three, tmp_path):
    from sfumato.models.lora_tools import bake_loras

    lora = _random_lora(tmp_path / "l.safetensors", 1)
    with_lora = _image(three["A"], [(str(lora), 0.8)])
    assert np.abs(with_lora - _image(three["A"])).max() > 10
    for out in (tmp_path / "baked", tmp_path / "baked.safetensors"):
        source = three["A"] if out.suffix == "" else three["A.safetensors"]
        bake_loras(source, [(str(lora), 0.8)], out)
        assert np.abs(_image(out) - with_lora).max() <= 1, out


def test_merged_loras_equal_the_loras_together(tmp_path):
    from sfumato.models.lora_tools import merge_loras, read_lora

    one, two = _random_lora(tmp_path / "one.safetensors", 1), _random_lora(tmp_path / "two.safetensors", 2, rank=2)
    merged = merge_loras([(str(one), 0.7), (str(two), 0.3)], tmp_path / "merged.safetensors")
    _, pairs, metadata = read_lora(merged)
    assert {p.rank for p in pairs.values()} == {6} and "sfumato.lora_tool" in metadata
    _, first, _ = read_lora(one)
    _, second, _ = read_lora(two)
    for module, pair in pairs.items():
        torch.testing.assert_close(pair.delta(), 0.7 * first[module].delta() + 0.3 * second[module].delta(),
                                   rtol=1e-5, atol=1e-5)
    model = tmp_path / "sd1"
    from sfumato.models.tiny import build_tiny

    build_tiny("sd1", model)
    together = _image(model, [(str(one), 0.7), (str(two), 0.3)])
    assert np.abs(_image(model, [(str(merged), 1.0)]) - together).max() <= 1
    small = merge_loras([(str(one), 0.7), (str(two), 0.3)], tmp_path / "r2.safetensors", rank=2)
    _, reduced, _ = read_lora(small)
    assert {p.rank for p in reduced.values()} == {2}
    module = next(iter(pairs))
    exact = pairs[module].delta()
    error = (reduced[module].delta() - exact).norm() / exact.norm()
    assert 0 < error < 0.9  # the best rank-2 approximation of a rank-6 change


@pytest.mark.slow
def test_extracted_lora_reproduces_the_fine_tune(three, tmp_path):
    import diffusers

    from sfumato.models.lora_tools import extract_lora, read_lora

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(three["A"]), local_files_only=True,
                                                             safety_checker=None)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for model, classes in ((pipe.unet, ("Transformer2DModel", "ResnetBlock2D")),
                               (pipe.text_encoder, ("CLIPAttention", "CLIPMLP"))):
            for module in model.modules():
                if type(module).__name__ in classes:
                    for layer in module.modules():
                        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                            layer.weight.add_(0.02 * torch.randn(layer.weight.shape, generator=generator))
    tuned = tmp_path / "tuned"
    pipe.save_pretrained(str(tuned), safe_serialization=True)
    full = extract_lora(tuned, three["A"], tmp_path / "full.safetensors", rank=128, conv_rank=128)
    layout, pairs, metadata = read_lora(full)
    assert layout == "kohya" and json.loads(metadata["ss_network_args"])["conv_dim"] == "128"
    assert any("resnets" in m and m.endswith("conv1") for m in pairs) and any(m.startswith("lora_te_") for m in pairs)
    target = _image(tuned)
    assert np.abs(_image(three["A"]) - target).max() > 10
    assert np.abs(_image(three["A"], [(str(full), 1.0)]) - target).max() <= 1
    low = extract_lora(tuned, three["A"], tmp_path / "low.safetensors", rank=4)  # attention only, rank 4
    assert {p.rank for p in read_lora(low)[1].values()} == {4}
    base_error = np.abs(_image(three["A"]) - target).mean()
    assert np.abs(_image(three["A"], [(str(low), 1.0)]) - target).mean() < base_error
    reference = diffusers.StableDiffusionPipeline.from_pretrained(str(three["A"]), local_files_only=True,
                                                                  safety_checker=None)
    reference.load_lora_weights(str(full))  # plain diffusers reads the kohya file
    tuned_out = pipe("a red apple", num_inference_steps=2, height=64, width=64, output_type="latent",
                     generator=torch.Generator().manual_seed(0)).images
    lora_out = reference("a red apple", num_inference_steps=2, height=64, width=64, output_type="latent",
                         generator=torch.Generator().manual_seed(0)).images
    assert (tuned_out - lora_out).abs().max() < 1e-3


def test_http_merge_writes_a_new_named_model_only(three, sd1, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from safetensors.torch import load_file

    from sfumato.server.app import create_app
    from test_server import LOCAL, _settings

    folder = Path(os.environ["SFUMATO_HOME"]) / "models" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("A", "B"):
        shutil.copy(three[f"{name}.safetensors"], folder / f"{name}.safetensors")
    with TestClient(create_app(_settings(tmp_path, sd1)), base_url=LOCAL) as client:
        assert "GRAD_V" in client.get("/api/v1/merge/presets").json()["presets"]
        response = client.post("/api/v1/merge", json={"a": "A", "b": "B", "alpha": 0.25, "name": "ab"})
        assert response.status_code == 200, response.text
        assert response.json()["file"] == "ab.safetensors" and "ab" in {
            m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()}
        a, b, ab = (load_file(str(folder / f"{n}.safetensors")) for n in ("A", "B", "ab"))
        key = next(k for k in ab if k.startswith("model.diffusion_model.") and ab[k].is_floating_point())
        torch.testing.assert_close(ab[key], 0.75 * a[key] + 0.25 * b[key])
        again = client.post("/api/v1/merge", json={"a": "A", "b": "B", "name": "ab"})
        assert again.status_code == 422 and "exists already" in again.json()["error"]["message"]
        assert client.post("/api/v1/merge", json={"a": "A", "b": "B", "name": "../x"}).status_code == 422
        assert client.post("/api/v1/merge", json={"a": str(folder / "A.safetensors"), "b": "B",
                                                  "name": "p"}).status_code == 404
        assert client.post("/api/v1/merge", json={"a": "A", "b": "B", "name": "v", "vae": "/etc/x"}).status_code == 404
        assert not (folder / "p.safetensors").exists() and not (folder / "v.safetensors").exists()
