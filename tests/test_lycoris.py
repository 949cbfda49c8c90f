"""LyCORIS files (LoCon, LoHa, LoKr, full/diff) in kohya key layouts, applied with the weights of the request.

The reference is the same math written out here and patched into a copy of the tiny model with plain torch: the
engine with the file must give that copy's image (±1/255), and taking the file off gives the original image
bit for bit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sfumato.engine import Engine
from sfumato.errors import UnsupportedModel
from sfumato.requests import GenerationRequest

LINEAR = ("attn1.to_q", "attn2.to_v", "ff.net.2")
CONV = ("resnets.0.conv1",)


def _targets(pipe):
    """(kohya name, layer) of the tiny SD1 model: UNet linears and 3×3 convolutions, text encoder q_proj."""
    for name, module in pipe.unet.named_modules():
        if (isinstance(module, torch.nn.Linear) and name.endswith(LINEAR)) or (
                isinstance(module, torch.nn.Conv2d) and name.endswith(CONV) and name.startswith("down_blocks.0")):
            yield "lora_unet_" + name.replace(".", "_"), module
    for name, module in pipe.text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith("self_attn.q_proj"):
            name = name if name.startswith("text_model.") else "text_model." + name
            yield "lora_te_" + name.replace(".", "_"), module


def _reference_delta(kind: str, p: dict[str, torch.Tensor], shape) -> torch.Tensor:
    """ΔW written out independently of sfumato: LoHa ⊙ of two low-rank products (Tucker for convs), LoKr block
    matrix w1[i, j]·w2 (built block by block), full = diff; all × alpha/dim."""
    if kind == "full":
        return p["diff"]
    if kind == "loha":
        def part(a, b, t):
            if t is None:
                return (a @ b.reshape(b.shape[0], -1)).reshape(shape)
            out = torch.zeros(shape)
            for k in range(shape[2]):
                for m in range(shape[3]):
                    out[:, :, k, m] = a.T @ t[:, :, k, m] @ b
            return out
        delta = part(p["hada_w1_a"], p["hada_w1_b"], p.get("hada_t1")) * part(p["hada_w2_a"], p["hada_w2_b"],
                                                                              p.get("hada_t2"))
        return delta * (p["alpha"] / p["hada_w1_b"].shape[0])
    w1 = p["lokr_w1"]
    w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
    c, d = w2.shape[:2]
    out = torch.zeros(shape)
    for i in range(w1.shape[0]):
        for j in range(w1.shape[1]):
            out[i * c:(i + 1) * c, j * d:(j + 1) * d] = w1[i, j] * w2
    return out * (p["alpha"] / p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else 1.0)


def _network(kind: str, path: Path, seed: int, scale: float = 0.25) -> dict[str, dict[str, torch.Tensor]]:
    from sfumato.models.tiny import build_tiny_pipeline

    generator = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return scale * torch.randn(*shape, generator=generator)

    modules = {}
    for name, layer in _targets(build_tiny_pipeline("sd1")):
        out, inp = layer.weight.shape[:2]
        conv = layer.weight.dim() == 4
        kernel = tuple(layer.weight.shape[2:])
        if kind == "loha":
            rnd = lambda *shape: 0.6 * torch.randn(*shape, generator=generator)  # noqa: E731 (⊙ of 4 factors)
            if conv:  # Tucker form, as LyCORIS writes convolutions with use_tucker
                p = {"hada_t1": rnd(3, 3, *kernel), "hada_w1_a": rnd(3, out), "hada_w1_b": rnd(3, inp),
                     "hada_t2": rnd(3, 3, *kernel), "hada_w2_a": rnd(3, out), "hada_w2_b": rnd(3, inp)}
            else:
                p = {"hada_w1_a": rnd(out, 3), "hada_w1_b": rnd(3, inp), "hada_w2_a": rnd(out, 3),
                     "hada_w2_b": rnd(3, inp)}
            p["alpha"] = torch.tensor(2.0)
        elif kind == "lokr":
            p = {"lokr_w1": rnd(2, 2) * 4}
            if conv:
                p["lokr_w2"] = rnd(out // 2, inp // 2, *kernel)
            else:
                p["lokr_w2_a"], p["lokr_w2_b"] = rnd(out // 2, 4), rnd(4, inp // 2)
                p["alpha"] = torch.tensor(2.0)
        else:
            p = {"diff": rnd(*layer.weight.shape) * 0.4}
            if layer.bias is not None:
                p["diff_b"] = rnd(out)
        modules[name] = p
    save_file({f"{m}.{k}": v.contiguous() for m, p in modules.items() for k, v in p.items()}, str(path))
    return modules


def _patched_copy(model: Path, modules, kind: str, weight: float, out: Path) -> Path:
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(model), local_files_only=True, safety_checker=None)
    layers = dict(_targets(pipe))
    with torch.no_grad():
        for name, p in modules.items():
            layer = layers[name]
            layer.weight.add_(weight * _reference_delta(kind, p, layer.weight.shape).reshape(layer.weight.shape))
            if "diff_b" in p:
                layer.bias.add_(weight * p["diff_b"])
    pipe.save_pretrained(str(out), safe_serialization=True)
    shutil.copy(model / "sfumato.json", out / "sfumato.json") if (model / "sfumato.json").exists() else None
    return out


def _pixels(engine: Engine, prompt="a red apple", loras=()) -> np.ndarray:
    request = GenerationRequest(prompt, seed=3, steps=4, width=64, height=64, loras=list(loras))
    return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("kind,weight", [("loha", 1.0), ("lokr", 0.7), ("full", 0.5)])
def test_lycoris_files_apply_with_the_reference_math(kind, weight, sd1, tmp_path):
    from sfumato.models.lycoris import is_lycoris, network_type

    path = tmp_path / f"{kind}.safetensors"
    modules = _network(kind, path, seed=5)
    assert is_lycoris(path) and network_type(path) == {"loha": "LoHa", "lokr": "LoKr", "full": "full"}[kind]
    reference = _patched_copy(sd1, modules, kind, weight, tmp_path / "reference")
    engine = Engine(sd1)
    base = _pixels(engine)
    with_file = _pixels(engine, loras=[(str(path), weight)])
    assert np.abs(with_file - base).max() > 10  # the file changes the picture
    assert np.abs(with_file - _pixels(Engine(reference))).max() <= 1
    assert np.array_equal(_pixels(engine), base)  # taken off: the original weights, bit for bit


@pytest.mark.slow
def test_prompt_syntax_weights_and_plain_loras_together(sd1, tmp_path):
    from test_model_tools import _random_lora

    folder = Path(os.environ["SFUMATO_HOME"]) / "models" / "loras"
    folder.mkdir(parents=True)
    modules = _network("loha", folder / "hada.safetensors", seed=6)
    lora = _random_lora(folder / "plain.safetensors", 1)
    engine = Engine(sd1)
    by_prompt = _pixels(engine, "a red apple <lora:hada:0.5>")
    assert np.array_equal(by_prompt, _pixels(engine, loras=[("hada", 0.5)]))
    half = _patched_copy(sd1, modules, "loha", 0.5, tmp_path / "half")
    assert np.abs(by_prompt - _pixels(Engine(half))).max() <= 1
    both = _pixels(engine, "a red apple <lora:hada:0.5> <lora:plain:0.8>")
    assert np.abs(both - _pixels(Engine(half), loras=[(str(lora), 0.8)])).max() <= 1
    info = engine.generate(GenerationRequest("a red apple <lora:hada:0.5>", seed=3, steps=1, width=64,
                                             height=64)).images[0].infotext
    assert "hada: " in info  # Lora hashes, as A1111 writes them


def test_locon_goes_through_diffusers_and_bad_files_fail_in_one_line(sd1, tmp_path):
    from sfumato.models.lycoris import is_lycoris, network_type

    generator = torch.Generator().manual_seed(1)
    locon = {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.randn(4, 32, 3, 3,
                                                                                     generator=generator),
             "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.randn(32, 4, 1, 1, generator=generator),
             "lora_unet_down_blocks_0_resnets_0_conv1.alpha": torch.tensor(4.0)}
    save_file(locon, str(tmp_path / "locon.safetensors"))
    assert network_type(tmp_path / "locon.safetensors") == "LoCon" and not is_lycoris(tmp_path / "locon.safetensors")
    wrong = {"lora_unet_down_blocks_9_resnets_0_conv1.hada_w1_a": torch.ones(32, 2),
             "lora_unet_down_blocks_9_resnets_0_conv1.hada_w1_b": torch.ones(2, 288),
             "lora_unet_down_blocks_9_resnets_0_conv1.hada_w2_a": torch.ones(32, 2),
             "lora_unet_down_blocks_9_resnets_0_conv1.hada_w2_b": torch.ones(2, 288)}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    engine = Engine(sd1)
    base = _pixels(engine)
    with pytest.raises(UnsupportedModel, match="does not fit this sd1 model .1 of 1 modules"):
        _pixels(engine, loras=[(str(tmp_path / "wrong.safetensors"), 1.0)])
    assert np.array_equal(_pixels(engine), base)


def test_dora_magnitude_replaces_the_column_norms():
    from sfumato.models.lycoris import weight_decompose

    weight, delta = torch.randn(6, 5), 0.1 * torch.randn(6, 5)
    magnitude = torch.rand(1, 5) + 0.5
    merged = weight + weight_decompose(delta, weight, magnitude)
    torch.testing.assert_close(merged.norm(dim=0), magnitude[0])
    torch.testing.assert_close(merged / merged.norm(dim=0), (weight + delta) / (weight + delta).norm(dim=0))
    rows = torch.rand(6) + 0.5  # one magnitude per output channel (LyCORIS wd_on_output)
    merged = weight + weight_decompose(delta, weight, rows)
    torch.testing.assert_close(merged.norm(dim=1), rows)


@pytest.mark.slow
def test_baked_lycoris_and_the_listing_by_type(sd1, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sfumato.models.catalog import list_models
    from sfumato.models.lora_tools import bake_loras
    from sfumato.server.app import create_app
    from test_model_tools import _random_lora
    from test_server import LOCAL, _settings

    folder = Path(os.environ["SFUMATO_HOME"]) / "models" / "loras"
    folder.mkdir(parents=True)
    _network("lokr", folder / "kron.safetensors", seed=8)
    _random_lora(folder / "plain.safetensors", 1)
    baked = bake_loras(sd1, [("kron", 0.7), ("plain", 0.5)], tmp_path / "baked")
    together = _pixels(Engine(sd1), loras=[("kron", 0.7), ("plain", 0.5)])
    assert np.abs(_pixels(Engine(baked)) - together).max() <= 1
    assert {e.name: e.family for e in list_models() if e.kind == "lora"} == {"kron": "LoKr", "plain": "LoRA"}
    with TestClient(create_app(_settings(tmp_path, sd1)), base_url=LOCAL) as client:
        listed = client.get("/sdapi/v1/loras").json()
        assert [(e["name"], e["path"], e["type"]) for e in listed] == [("kron", "kron.safetensors", "LoKr"),
                                                                       ("plain", "plain.safetensors", "LoRA")]
        body = {"prompt": "a red apple <lora:kron:0.7>", "steps": 2, "width": 64, "height": 64, "seed": 1}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200 and "kron: " in response.json()["info"]


SGM = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q":
       "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
       "lora_unet_middle_block_1_proj_in": "lora_unet_mid_block_attentions_0_proj_in",
       "lora_unet_input_blocks_1_0_in_layers_2": "lora_unet_down_blocks_0_resnets_0_conv1",
       "lora_unet_output_blocks_2_0_skip_connection": "lora_unet_up_blocks_0_resnets_2_conv_shortcut",
       "lora_unet_middle_block_0_emb_layers_1": "lora_unet_mid_block_resnets_0_time_emb_proj"}


def test_sdxl_files_in_sgm_block_names_hit_the_same_layers(sdxl, tmp_path):
    """kohya trains SDXL on the SGM UNet: its files say `input_blocks_4_1_…`; they must patch the layers the
    diffusers-named file patches (the tiny SDXL has 2 layers per block, as the real one)."""
    from sfumato.models.tiny import build_tiny_pipeline

    unet = build_tiny_pipeline("sdxl").unet
    layers = {"lora_unet_" + n.replace(".", "_"): m for n, m in unet.named_modules()}
    generator = torch.Generator().manual_seed(2)
    by_diffusers, by_sgm = {}, {}
    for sgm, name in SGM.items():
        shape = layers[name].weight.shape
        p = {"hada_w1_a": torch.randn(shape[0], 2, generator=generator),
             "hada_w1_b": torch.randn(2, int(np.prod(shape[1:])), generator=generator),
             "hada_w2_a": torch.randn(shape[0], 2, generator=generator),
             "hada_w2_b": torch.randn(2, int(np.prod(shape[1:])), generator=generator), "alpha": torch.tensor(1.0)}
        by_diffusers.update({f"{name}.{k}": v for k, v in p.items()})
        by_sgm.update({f"{sgm}.{k}": v for k, v in p.items()})
    save_file(by_diffusers, str(tmp_path / "diffusers.safetensors"))
    save_file(by_sgm, str(tmp_path / "sgm.safetensors"))
    engine = Engine(sdxl)
    base = _pixels(engine)
    first = _pixels(engine, loras=[(str(tmp_path / "diffusers.safetensors"), 1.0)])
    assert np.abs(first - base).max() > 10
    assert np.array_equal(_pixels(engine, loras=[(str(tmp_path / "sgm.safetensors"), 1.0)]), first)


def test_module_kinds_are_read_once_per_file_version(tmp_path, monkeypatch):
    """The request hot path asks every LoRA file whether it is LyCORIS: the header is read once per (path, mtime)."""
    from sfumato.models import lycoris

    path = tmp_path / "net.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(2, 4), "lora_unet_a.lora_up.weight": torch.zeros(4, 2)},
              str(path))
    reads = []
    real = lycoris.open_weights
    monkeypatch.setattr(lycoris, "open_weights", lambda p: reads.append(p) or real(p))
    assert not lycoris.is_lycoris(path) and not lycoris.is_lycoris(path) and len(reads) == 1
    save_file({"lora_unet_a.hada_w1_a": torch.zeros(2, 4), "lora_unet_a.hada_w1_b": torch.zeros(2, 4)}, str(path))
    os.utime(path, ns=(1, 10**18))  # a new version of the file
    assert lycoris.is_lycoris(path) and len(reads) == 2


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_lokr_and_loha_on_sd3_and_flux_transformers(family, tmp_path):
    """LyCORIS files for the MM-DiT transformers, in the LyCORIS library's names (`lycoris_<diffusers path>`), plus a
    kohya text-encoder module: applied with the reference math (a second engine whose weights were patched by hand
    gives the same image)."""
    from sfumato.models.tiny import build_tiny

    folder = build_tiny(family, tmp_path / family)
    reference = Engine(folder)
    pipe = reference.load().pipe  # patched by hand below: the reference
    generator = torch.Generator().manual_seed(11)
    modules, layers = {}, {}
    for name, layer in pipe.transformer.named_modules():
        if isinstance(layer, torch.nn.Linear) and name.endswith(("attn.to_q", "attn.to_out.0", "ff.net.2")):
            out, inp = layer.weight.shape
            kind = "lokr" if len(modules) % 2 else "loha"
            if kind == "lokr":
                p = {"lokr_w1": torch.randn(2, 2, generator=generator),
                     "lokr_w2_a": 0.3 * torch.randn(out // 2, 4, generator=generator),
                     "lokr_w2_b": 0.3 * torch.randn(4, inp // 2, generator=generator), "alpha": torch.tensor(2.0)}
            else:
                p = {k: 0.5 * torch.randn(*shape, generator=generator) for k, shape in (
                    ("hada_w1_a", (out, 3)), ("hada_w1_b", (3, inp)), ("hada_w2_a", (out, 3)), ("hada_w2_b", (3, inp)))}
                p["alpha"] = torch.tensor(3.0)
            modules["lycoris_" + name.replace(".", "_")] = (kind, p)
            layers["lycoris_" + name.replace(".", "_")] = layer
    encoder = next((n, m) for n, m in pipe.text_encoder.named_modules() if n.endswith("self_attn.q_proj"))
    te_name = ("lora_te1_" + ("" if encoder[0].startswith("text_model.") else "text_model.") + encoder[0])
    te_name = te_name.replace(".", "_")
    modules[te_name] = ("full", {"diff": 0.2 * torch.randn(*encoder[1].weight.shape, generator=generator)})
    layers[te_name] = encoder[1]
    path = tmp_path / "network.safetensors"
    save_file({f"{m}.{k}": v.contiguous() for m, (_, p) in modules.items() for k, v in p.items()}, str(path))
    weight = 0.8
    engine = Engine(folder)

    def pixels(engine, loras=()):
        request = GenerationRequest("red apple", seed=3, steps=3, width=32, height=32, loras=list(loras))
        return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)

    base = pixels(engine)
    with_file = pixels(engine, [(str(path), weight)])
    with torch.no_grad():
        for name, (kind, p) in modules.items():
            layers[name].weight.add_(weight * _reference_delta(kind, p, layers[name].weight.shape))
    assert np.abs(with_file - base).max() > 10
    assert np.abs(with_file - pixels(reference)).max() <= 1
    assert np.array_equal(pixels(engine), base)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_original_layout_modules_split_over_the_diffusers_layers(family, tmp_path):
    """LyCORIS modules in the original block names (BFL `double_blocks_0_img_attn_qkv`, `single_blocks_0_linear1`,
    SAI `joint_blocks_0_x_block_attn_qkv`, the final adaLN with its shift/scale order) give the same image as the
    same ΔW written per diffusers layer: the fused ΔW is split by the single-file rule table."""
    from sfumato.models.flowfile import RULES
    from sfumato.models.tiny import build_tiny

    folder = build_tiny(family, tmp_path / family)
    engine = Engine(folder)
    transformer = engine.load().pipe.transformer
    state = transformer.state_dict()
    wanted = {"flux": ("double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight",
                       "final_layer.adaLN_modulation.1.weight"),
              "sd3": ("joint_blocks.0.x_block.attn.qkv.weight", "joint_blocks.0.context_block.adaLN_modulation.1.weight",
                      "final_layer.adaLN_modulation.1.weight")}[family]
    generator = torch.Generator().manual_seed(4)
    original, split = {}, {}
    for name, sources, kind in RULES[family](state.keys(), False):
        if name not in wanted:
            continue
        delta = 0.3 * torch.randn(sum(state[s].shape[0] for s in sources), state[sources[0]].shape[1],
                                  generator=generator)
        original["lora_unet_" + name.removesuffix(".weight").replace(".", "_") + ".diff"] = delta
        per_layer = torch.cat(delta.chunk(2)[::-1]) if kind == "swap" else delta
        for source, part in zip(sources, torch.split(per_layer, [state[s].shape[0] for s in sources])):
            split["lycoris_" + source.removesuffix(".weight").replace(".", "_") + ".diff"] = part.contiguous()
    assert len(original) == 3
    save_file(original, str(tmp_path / "original.safetensors"))
    save_file(split, str(tmp_path / "split.safetensors"))

    def pixels(path=None):
        loras = [(str(path), 0.7)] if path else []
        request = GenerationRequest("red apple", seed=3, steps=3, width=32, height=32, loras=loras)
        return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)

    base = pixels()
    fused = pixels(tmp_path / "original.safetensors")
    assert np.abs(fused - base).max() > 10
    assert np.abs(fused - pixels(tmp_path / "split.safetensors")).max() <= 1
    assert np.array_equal(pixels(), base)  # restored
