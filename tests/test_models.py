"""Model formats: detection, single-file round trips, pickle refusal and conversion, LoRA, the catalog."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sfumato.engine import Engine
from sfumato.errors import InvalidRequest, PickleRefused, UnsupportedModel
from sfumato.models.convert import convert
from sfumato.models.detect import describe
from sfumato.models.families import FAMILIES
from sfumato.models.loader import load_model
from sfumato.requests import GenerationRequest

REQUEST = dict(prompt="a red apple", seed=7, steps=3, width=32, height=32, sampler="Euler")


@pytest.mark.slow
@pytest.mark.parametrize("family,prediction", [("sd1", "epsilon"), ("sd2", "v_prediction"), ("sdxl", "epsilon")])
def test_single_file_round_trip_is_lossless(family, prediction, request, tmp_path):
    folder = request.getfixturevalue(family)
    single = convert(folder, tmp_path / f"{family}.safetensors")
    info = describe(single)
    assert (info.format, info.family.name, info.prediction_type) == ("safetensors", family, prediction)
    a, b = load_model(folder), load_model(single)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(a.pipe, part, None) is None:
            continue
        sa, sb = getattr(a.pipe, part).state_dict(), getattr(b.pipe, part).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    back = convert(single, tmp_path / f"{family}-again")
    assert describe(back).family.name == family


def test_single_file_uses_ldm_key_layout(sd1_single, sdxl, tmp_path):
    from safetensors import safe_open

    with safe_open(str(sd1_single), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    xl = convert(sdxl, tmp_path / "xl.safetensors")
    with safe_open(str(xl), "pt") as f:
        keys = set(f.keys())
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys


def test_single_file_without_embedded_configs_uses_family_skeleton(sd1_single, tmp_path):
    """A real-world file carries no sfumato metadata: the shipped SD1 skeleton is used (tiny weights then fail)."""
    from safetensors.torch import load_file

    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(sd1_single)), str(bare))
    info = describe(bare)
    assert info.family.name == "sd1" and info.configs == {}
    with pytest.raises(UnsupportedModel, match="do not match the sd1 config"):
        load_model(bare)


@pytest.mark.parametrize("family,params", [("sd1", 859_520_964), ("sd2", 865_910_724), ("sdxl", 2_567_463_684)])
def test_shipped_skeletons_are_the_real_architectures(family, params):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(FAMILIES[family].skeleton["unet"])
    assert sum(p.numel() for p in unet.parameters()) == params


def test_pickle_is_refused_until_converted(sd1_single, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(sd1_single))}, ckpt)
    with pytest.raises(PickleRefused, match="sfumato convert"):
        Engine(ckpt).generate(GenerationRequest(**REQUEST))
    with pytest.raises(InvalidRequest, match="--allow-pickle"):
        convert(ckpt, tmp_path / "model.safetensors")
    converted = convert(ckpt, tmp_path / "model.safetensors", allow_pickle=True)
    original, again = load_file(str(sd1_single)), load_file(str(converted))
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    assert describe(converted).family.name == "sd1"  # a real-size file now loads with the shipped skeleton


def test_malicious_pickle_is_not_executed(tmp_path):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (exec, ("open('" + str(tmp_path / "pwned") + "', 'w').write('x')",))

    bad = tmp_path / "bad.ckpt"
    with open(bad, "wb") as handle:
        pickle.dump({"state_dict": Exploit()}, handle)
    with pytest.raises(UnsupportedModel, match="weights-only"):
        convert(bad, tmp_path / "out.safetensors", allow_pickle=True)
    assert not (tmp_path / "pwned").exists()


def test_folder_with_only_pickle_weights_is_refused(sd1, tmp_path):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(sd1, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(PickleRefused):
        load_model(folder)


def test_not_a_model_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UnsupportedModel, match="not a readable safetensors"):
        describe(junk)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "l.safetensors"))
    with pytest.raises(UnsupportedModel, match="LoRA"):
        describe(tmp_path / "l.safetensors")


@pytest.fixture(scope="module")
def lora_files(sd1, tmp_path_factory):
    """A random LoRA on the tiny SD1 UNet, saved in diffusers format and in kohya/A1111 format."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    out = tmp_path_factory.mktemp("loras")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(sd1), local_files_only=True)
    torch.manual_seed(1)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, param in pipe.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_state = get_peft_model_state_dict(pipe.unet)
    diffusers.StableDiffusionPipeline.save_lora_weights(
        str(out / "diffusers"), unet_lora_layers=convert_state_dict_to_diffusers(peft_state), safe_serialization=True)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()})
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(out / "kohya.safetensors"))
    return out / "diffusers" / "pytorch_lora_weights.safetensors", out / "kohya.safetensors"


@pytest.mark.parametrize("which", [0, 1], ids=["diffusers", "kohya"])
def test_lora_changes_output_and_weight_zero_does_not(sd1, lora_files, which):
    engine = Engine(sd1)
    lora = str(lora_files[which])

    def image(**kw):
        return np.asarray(engine.generate(GenerationRequest(**REQUEST, **kw)).images[0].image).astype(int)

    plain = image()
    with_lora = image(loras=[(lora, 1.0)])
    zero = image(loras=[(lora, 0.0)])
    after = image()
    assert np.abs(with_lora - plain).max() > 5
    assert (zero == plain).all() and (after == plain).all()


def test_lora_prompt_tag_resolves_in_models_home(sd1, lora_files, tmp_path, monkeypatch):
    import shutil

    from sfumato.models.home import loras_dir

    loras_dir().mkdir(parents=True)
    shutil.copy(lora_files[1], loras_dir() / "mystyle.safetensors")
    engine = Engine(sd1)
    tagged = engine.generate(GenerationRequest(**{**REQUEST, "prompt": "a red apple <lora:mystyle:0.7>"}))
    flagged = engine.generate(GenerationRequest(**REQUEST, loras=[(str(lora_files[1]), 0.7)]))
    assert tagged.request.loras == [("mystyle", 0.7)]
    assert (np.asarray(tagged.images[0].image) == np.asarray(flagged.images[0].image)).all()
    assert "<lora:mystyle:0.7>" in tagged.images[0].infotext and "Lora hashes" in tagged.images[0].infotext


def test_catalog_lists_models_with_family_and_hash(sd1_single, tmp_path):
    import shutil

    from sfumato.models.catalog import list_models
    from sfumato.models.home import checkpoints_dir

    checkpoints_dir().mkdir(parents=True)
    shutil.copy(sd1_single, checkpoints_dir() / "tiny.safetensors")
    (checkpoints_dir() / "old.ckpt").write_bytes(b"x")
    entries = {e.name: e for e in list_models()}
    assert entries["tiny"].family == "sd1" and entries["tiny"].format == "safetensors"
    assert len(entries["tiny"].sha256) == 64 and entries["tiny"].size_bytes > 0
    assert "pickle" in entries["old"].format
    assert json.dumps([e.to_dict() for e in entries.values()])


def test_sd3_generates_with_sfumato_seeds(tmp_path):
    """SD3 (MMDiT, no T5) through its diffusers pipeline: our CPU noise, so batches and replays agree."""
    from sfumato.models.tiny import build_tiny

    folder = build_tiny("sd3", tmp_path / "sd3")
    engine = Engine(folder)
    assert engine.describe().family.name == "sd3"
    request = GenerationRequest("red apple", seed=7, steps=4, width=32, height=32)
    batch = engine.generate(dataclasses.replace(request, batch_size=2))
    single = np.asarray(engine.generate(request).images[0].image)
    np.testing.assert_array_equal(np.asarray(batch.images[0].image), single)
    assert batch.request.sampler == "Euler" and batch.images[1].seed == 8
    # the tiny SD3 has 16 latent channels since SD3 inpainting needs them (the pin changed with it)
    assert single[14:17, 14:17, 0].flatten().tolist() == pytest.approx([70, 89, 105, 165, 76, 104, 171, 162, 117], abs=3)
    with pytest.raises(UnsupportedModel, match="does not support tiling"):
        engine.generate(dataclasses.replace(request, tile=True))


def test_flux_generates_with_packed_sfumato_noise(tmp_path):
    """FLUX.1 (double/single-stream transformer, CLIP-L + T5, packed latents, distilled guidance)."""
    from sfumato.models.tiny import build_tiny

    folder = build_tiny("flux", tmp_path / "flux")
    engine = Engine(folder)
    request = GenerationRequest("red apple", seed=7, steps=4, width=32, height=32)
    batch = engine.generate(dataclasses.replace(request, batch_size=2))
    single = np.asarray(engine.generate(request).images[0].image)
    np.testing.assert_array_equal(np.asarray(batch.images[0].image), single)
    assert batch.request.cfg_scale == 3.5 and engine.describe().family.name == "flux"
    assert single[14:17, 14:17, 0].flatten().tolist() == pytest.approx([108, 136, 173, 135, 220, 166, 208, 243, 170], abs=3)
    with pytest.raises(UnsupportedModel, match="negative prompt"):
        engine.generate(dataclasses.replace(request, negative_prompt="blurry"))


def test_sdxl_refiner_refines_an_image(tmp_path):
    """The refiner family: second text encoder only, aesthetic-score time ids (5 values), img2img."""
    from PIL import Image

    from sfumato.models.tiny import build_tiny

    folder = build_tiny("sdxl-refiner", tmp_path / "refiner")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    engine = Engine(folder)
    assert engine.describe().family.name == "sdxl-refiner"
    request = GenerationRequest("red apple", seed=7, steps=4, width=32, height=32, init_image=str(tmp_path / "red.png"),
                                strength=0.3)
    first = np.asarray(engine.generate(request).images[0].image)
    np.testing.assert_array_equal(first, np.asarray(engine.generate(request).images[0].image))
    assert first[14:17, 14:17, 0].flatten().tolist() == pytest.approx([169, 148, 140, 121, 145, 139, 110, 186, 205], abs=3)


def test_pipeline_names_map_to_families_through_the_family_table(tmp_path):
    """Detection by pipeline class is one field per family (`Family.pipelines`, longest prefix wins); the UNet
    families are told apart by their configs; an unclaimed pipeline names what is claimed."""
    import json

    from sfumato.errors import UnsupportedModel
    from sfumato.models.detect import describe
    from sfumato.models.families import family_for_pipeline

    names = {name: family_for_pipeline(name) for name in (
        "StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "FluxFillPipeline", "PixArtSigmaPipeline",
        "DiTPipeline", "LDMTextToImagePipeline", "KandinskyV22CombinedPipeline", "StableDiffusionXLPipeline",
        "StableDiffusionPipeline", "QwenImagePipeline", "QwenImageEditPipeline", "ZImageImg2ImgPipeline")}
    assert {k: v.name if v else None for k, v in names.items()} == {
        "StableDiffusion3Pipeline": "sd3", "StableDiffusion3Img2ImgPipeline": "sd3", "FluxFillPipeline": "flux",
        "PixArtSigmaPipeline": "pixart", "DiTPipeline": "dit", "LDMTextToImagePipeline": "ldm-vq",
        "KandinskyV22CombinedPipeline": "kandinsky22", "StableDiffusionXLPipeline": None,
        "StableDiffusionPipeline": None, "QwenImagePipeline": "qwen-image", "QwenImageEditPipeline": None,
        "ZImageImg2ImgPipeline": "z-image"}
    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageLayeredPipeline"}))
    with pytest.raises(UnsupportedModel, match="QwenImageLayeredPipeline.*is not a supported family.*Flux"):
        describe(folder)


def test_chroma_equals_the_diffusers_pipeline_with_our_noise(tmp_path):
    """Chroma (a FLUX-like transformer, T5 only, real CFG with a negative prompt) from a diffusers folder: the same
    image as the plain `ChromaPipeline` given our packed noise and scheduler; img2img runs; what it lacks is refused."""
    import diffusers
    from PIL import Image

    from sfumato.models.tiny import build_tiny
    from sfumato.sampling.noise import batch_noise, generators_for
    from sfumato.sampling.samplers import make_scheduler

    folder = build_tiny("chroma", tmp_path / "chroma")
    engine = Engine(folder)
    request = GenerationRequest("a red apple", negative_prompt="blurry", seed=5, steps=3, width=32, height=32,
                                sampler="Euler")
    ours = np.asarray(engine.generate(request).images[0].image, dtype=np.int16)
    assert engine.describe().family.name == "chroma" and engine.describe().family.default_cfg_scale == 4.0
    pipe = diffusers.ChromaPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("Euler", dict(pipe.scheduler.config), 5, flow=True)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    channels, side = pipe.vae.config.latent_channels, 32 // scale
    noise = pipe._pack_latents(batch_noise((channels, side, side), generators_for([5])), 1, channels, side, side)
    theirs = pipe("a red apple", negative_prompt="blurry", height=32, width=32, num_inference_steps=3,
                  guidance_scale=4.0, latents=noise, output_type="pil").images[0]
    assert np.abs(ours - np.asarray(theirs, dtype=np.int16)).max() <= 1
    # a diffusers-format LoRA on the transformer: the same image as diffusers' own LoRA loader gives
    from lora_files import random_lora

    lora = random_lora(pipe, tmp_path / "lora", targets=["to_q", "to_k", "to_v"], std=0.5)
    with_lora = np.asarray(engine.generate(dataclasses.replace(request, loras=[(str(lora), 1.0)])).images[0].image,
                           dtype=np.int16)
    reference = diffusers.ChromaPipeline.from_pretrained(str(folder), local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = make_scheduler("Euler", dict(reference.scheduler.config), 5, flow=True)
    reference.load_lora_weights(str(lora))
    theirs = reference("a red apple", negative_prompt="blurry", height=32, width=32, num_inference_steps=3,
                       guidance_scale=4.0, latents=noise, output_type="pil").images[0]
    assert np.abs(with_lora - np.asarray(theirs, dtype=np.int16)).max() <= 1 and np.abs(with_lora - ours).max() > 8
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "red.png")
    edited = engine.generate(dataclasses.replace(request, init_image=str(tmp_path / "red.png"), strength=0.6))
    assert edited.images[0].image.size == (32, 32)
    for bad, message in (({"prompt": "a (red:1.4) apple"}, "plain prompts"),
                         ({"controls": [{"image": str(tmp_path / "red.png"), "module": "none", "model": str(folder)}]},
                          "ControlNet")):
        with pytest.raises((UnsupportedModel, InvalidRequest), match=message):
            engine.generate(dataclasses.replace(request, **bad))
