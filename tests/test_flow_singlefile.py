"""SD3 and FLUX single files in their original layouts (Stability's joint_blocks, BFL's double/single blocks,
text encoders under text_encoders.*): written by `sfumato convert`, read back offline, checked against diffusers'
own key converters, with configs read off the tensor shapes when the file carries none."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sfumato.engine import Engine
from sfumato.errors import UnsupportedModel
from sfumato.models.convert import convert
from sfumato.models.detect import CONFIGS_METADATA_KEY, describe
from sfumato.models.loader import load_model
from sfumato.requests import GenerationRequest

ORIGINAL_KEYS = {
    "sd3": ["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "model.diffusion_model.pos_embed",
            "model.diffusion_model.final_layer.adaLN_modulation.1.weight", "first_stage_model.decoder.conv_in.weight",
            "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight",
            "text_encoders.clip_g.transformer.text_projection.weight"],
    "flux": ["model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "model.diffusion_model.single_blocks.0.linear1.weight",
             "model.diffusion_model.guidance_in.in_layer.weight", "first_stage_model.encoder.conv_in.weight",
             "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight",
             "text_encoders.t5xxl.transformer.shared.weight"],
}


@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_pair(request, tmp_path_factory):
    from sfumato.models.tiny import build_tiny

    root = tmp_path_factory.mktemp(request.param)
    folder = build_tiny(request.param, root / "model")
    return request.param, folder, convert(folder, root / f"{request.param}.safetensors")


def _image(engine: Engine, **extra) -> np.ndarray:
    request = GenerationRequest(prompt="red apple", seed=3, steps=3, width=32, height=32, **extra)
    return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)


def test_round_trip_is_exact_and_in_the_original_layout(flow_pair, tmp_path):
    family, folder, file = flow_pair
    keys = set(load_file(str(file)))
    assert all(key in keys for key in ORIGINAL_KEYS[family])
    assert not any(key.startswith(("transformer.", "model.diffusion_model.transformer_blocks")) for key in keys)
    info = describe(file)
    assert (info.family.name, info.format, info.prediction_type) == (family, "safetensors", "flow")
    a, b = load_model(folder, "cpu", "float32"), load_model(file, "cpu", "float32")
    assert type(a.pipe) is type(b.pipe)
    for name, module in a.pipe.components.items():
        if isinstance(module, torch.nn.Module):
            theirs = getattr(b.pipe, name).state_dict()
            assert set(theirs) == set(module.state_dict()), name
            assert all(torch.equal(value, theirs[key]) for key, value in module.state_dict().items()), name
    assert len(b.pipe.tokenizer_2) == len(a.pipe.tokenizer_2)
    folder_engine, file_engine = Engine.with_model(a), Engine.with_model(b)
    assert _close(_image(folder_engine), _image(file_engine))
    from PIL import Image

    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (200, 60, 40)).save(init)
    edit = {"init_image": str(init), "strength": 0.6}
    assert _close(_image(folder_engine, **edit), _image(file_engine, **edit))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal weights, differently laid out in memory, may round one pixel level apart (float kernels), no more."""
    return int(np.abs(a - b).max()) <= 1 and float(np.abs(a - b).mean()) < 0.05


def test_diffusers_own_converters_read_our_transformer_layout(flow_pair):
    """Our writer's layout is the one diffusers' single-file converters read (SD3: at the tiny width; FLUX's converter
    hard-codes the 3072 width, so it is checked on a real-width model built on the meta device)."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import (convert_flux_transformer_checkpoint_to_diffusers,
                                                     convert_sd3_transformer_checkpoint_to_diffusers)

    from sfumato.models.flowfile import to_diffusers, to_original, transformer_config

    family, folder, file = flow_pair
    if family == "sd3":
        original = {k: v for k, v in load_file(str(file)).items() if k.startswith("model.diffusion_model.")}
        theirs = convert_sd3_transformer_checkpoint_to_diffusers(original)
        ours = load_model(folder, "cpu", "float32").pipe.transformer.state_dict()
        assert set(theirs) == set(ours)
        assert all(torch.equal(theirs[k], ours[k]) for k in ours)
        return
    with torch.device("meta"):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                                       attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                       pooled_projection_dim=768, guidance_embeds=True)
    state = model.state_dict()
    original = to_original(state, "flux")
    assert original["single_blocks.1.linear1.weight"].shape == (3 * 3072 + 4 * 3072, 3072)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert {k: tuple(v.shape) for k, v in to_diffusers(original, "flux").items()} == \
        {k: tuple(v.shape) for k, v in state.items()}
    config = transformer_config("flux", original)
    assert {k: config[k] for k in ("num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim",
                                   "joint_attention_dim", "pooled_projection_dim", "in_channels", "guidance_embeds")} == \
        {"num_layers": 2, "num_single_layers": 2, "num_attention_heads": 24, "attention_head_dim": 128,
         "joint_attention_dim": 4096, "pooled_projection_dim": 768, "in_channels": 64, "guidance_embeds": True}


def test_configs_are_read_off_the_shapes_when_the_file_has_none(tmp_path):
    """An SD3.5-style file (q/k RMS norms, a dual-attention block) whose metadata lacks the transformer and VAE
    configs (as Stability's files do) loads to the same weights and image."""
    import diffusers

    from sfumato.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd3")
    torch.manual_seed(1)
    pipe.transformer = diffusers.SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=16,
        qk_norm="rms_norm", dual_attention_layers=(0,), pos_embed_max_size=24)
    folder = tmp_path / "sd35"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    file = convert(folder, tmp_path / "sd35.safetensors")
    with safe_open(str(file), "pt") as handle:
        metadata = handle.metadata()
    configs = json.loads(metadata[CONFIGS_METADATA_KEY])
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(file)), str(bare), metadata={
        **metadata, CONFIGS_METADATA_KEY: json.dumps({k: v for k, v in configs.items() if k not in ("transformer", "vae")})})
    loaded = load_model(bare, "cpu", "float32")
    config = loaded.pipe.transformer.config
    assert (config.num_attention_heads, config.attention_head_dim, config.patch_size, config.qk_norm,
            list(config.dual_attention_layers), config.pos_embed_max_size) == (4, 8, 2, "rms_norm", [0], 24)
    assert loaded.pipe.vae.config.latent_channels == 16 and loaded.pipe.vae.config.scaling_factor == 1.5305
    reference = load_model(folder, "cpu", "float32")
    for name in ("transformer", "vae"):
        ours, theirs = getattr(loaded.pipe, name).state_dict(), getattr(reference.pipe, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_partial_files_and_a_missing_t5_tokenizer_are_refused_with_a_way_out(flow_pair, tmp_path, monkeypatch):
    family, folder, file = flow_pair
    state = load_file(str(file))
    with safe_open(str(file), "pt") as handle:
        metadata = handle.metadata()
    transformer_only = tmp_path / "transformer-only.safetensors"
    save_file({k[len("model.diffusion_model."):]: v for k, v in state.items() if k.startswith("model.diffusion_model.")},
              str(transformer_only))
    assert describe(transformer_only).family.name == family
    with pytest.raises(UnsupportedModel, match="holds only part of the model"):
        load_model(transformer_only, "cpu", "float32")
    if family != "flux":
        return
    no_tokenizer = tmp_path / "no-tokenizer.safetensors"
    save_file(state, str(no_tokenizer), metadata={k: v for k, v in metadata.items() if k != "sfumato.t5_tokenizer"})
    monkeypatch.setenv("SFUMATO_HOME", str(tmp_path / "home"))
    with pytest.raises(UnsupportedModel, match="models/tokenizers/t5"):
        load_model(no_tokenizer, "cpu", "float32")
    load_model(folder, "cpu", "float32").pipe.tokenizer_2.save_pretrained(str(tmp_path / "home/models/tokenizers/t5"))
    loaded = load_model(no_tokenizer, "cpu", "float32")
    assert loaded.pipe.tokenizer_2("red apple").input_ids == load_model(file, "cpu", "float32").pipe.tokenizer_2(
        "red apple").input_ids


def test_split_component_files_assemble_into_one(flow_pair, tmp_path, monkeypatch):
    """ComfyUI's split layout — a transformer-only file (BFL/SAI names, no prefix), the VAE (`ae.safetensors`, LDM
    names; or a diffusers AutoencoderKL file), CLIP-L/CLIP-G and T5 in transformers' names — joins into one file
    (`sfumato convert T OUT --add ...`) that loads to the same weights."""
    from sfumato.cli import main

    family, folder, file = flow_pair
    state = load_file(str(file))
    parts = {"transformer.safetensors": "model.diffusion_model.", "ae.safetensors": "first_stage_model.",
             "clip_l.safetensors": "text_encoders.clip_l.transformer.",
             "clip_g.safetensors": "text_encoders.clip_g.transformer.",
             "t5xxl.safetensors": "text_encoders.t5xxl.transformer."}
    written = []
    for name, prefix in parts.items():
        tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if tensors:
            save_file(tensors, str(tmp_path / name))
            written.append(tmp_path / name)
    reference = load_model(folder, "cpu", "float32")
    if family == "sd3":  # the VAE as a diffusers AutoencoderKL file instead
        from safetensors.torch import save_file as save

        save(reference.pipe.vae.state_dict(), str(tmp_path / "ae.safetensors"))
    out = tmp_path / "joined.safetensors"
    assert main(["convert", str(written[0]), str(out), *sum((["--add", str(p)] for p in written[1:]), [])]) == 0
    # the tiny models' head sizes cannot be read off their shapes (tested above on an SD3.5-style file): give the
    # joined file the configs, as a real file's shapes would
    with safe_open(str(file), "pt") as handle:
        configs = handle.metadata()[CONFIGS_METADATA_KEY]
    joined_state = load_file(str(out))
    assert set(joined_state) == {k for k in state if not k.startswith("text_encoders.clip_g") or family == "sd3"}
    save_file(joined_state, str(out), metadata={CONFIGS_METADATA_KEY: configs})
    monkeypatch.setenv("SFUMATO_HOME", str(tmp_path / "home"))
    if family == "flux":  # the joined file carries no tokenizer: the T5 one comes from SFUMATO_HOME
        reference.pipe.tokenizer_2.save_pretrained(str(tmp_path / "home/models/tokenizers/t5"))
    joined = load_model(out, "cpu", "float32")
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(joined.pipe, name).state_dict(), getattr(reference.pipe, name).state_dict()
        assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert main(["convert", str(written[0]), str(tmp_path / "x.safetensors"), "--add", str(tmp_path / "nope")]) != 0
