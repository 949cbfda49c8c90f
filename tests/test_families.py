"""The 2025-26 transformer families (Qwen-Image, Z-Image, Lumina 2, SANA, AuraFlow, CogView4, HiDream, HunyuanDiT;
FLUX.1 Kontext): each from a
diffusers folder of tiny random weights in its real architecture, through sfumato, equals the plain diffusers pipeline
given the same per-image generators; its samplers, edits, LoRA, replay and refusals."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.cli import main
from sfumato.engine import Engine
from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.models.detect import describe
from sfumato.models.tiny import build_tiny
from sfumato.pipelines.flow import FLOW_FAMILIES, takes_loras
from sfumato.requests import GenerationRequest
from sfumato.sampling.samplers import FLOW_SAMPLERS, SAMPLERS, make_scheduler

NEW = ("qwen-image", "z-image", "lumina2", "sana", "auraflow", "cogview4", "hidream", "hunyuandit")
PROMPT, NEGATIVE = "a red apple", "blurry"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: build_tiny(family, root / family) for family in (*NEW, "sd3", "flux", "chroma")}


@pytest.fixture(scope="module")
def engines(folders):
    return {family: Engine(folder) for family, folder in folders.items()}  # each loads on its first request


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _diffusers(folder, family: str, sampler: str, size: int = 32):
    """The plain diffusers pipeline of the folder, on the scheduler sfumato builds for `sampler`."""
    import diffusers

    absent = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {}  # the tiny SD3 has no T5
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True, **absent)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(sampler, dict(pipe.scheduler.config), 0, flow=FLOW_FAMILIES[family].flow)
    if FLOW_FAMILIES[family].area_sized:  # HiDream sizes images to this area; sfumato sets it from the request's
        pipe.default_sample_size = size / pipe.vae_scale_factor * (1 + 1e-9)
    return pipe


def _their_images(pipe, family: str, seeds, cfg: float, steps: int = 3, size: int = 32, **extra):
    spec = FLOW_FAMILIES[family]
    negative = {"negative_prompt": [NEGATIVE] * len(seeds)} if spec.negative else {}
    return pipe([PROMPT] * len(seeds), **negative, height=size, width=size,
                num_inference_steps=steps, generator=[torch.Generator().manual_seed(s) for s in seeds],
                output_type="pil", **{spec.cfg: cfg}, **dict(spec.call), **extra).images


@pytest.mark.parametrize("family", NEW)
def test_each_family_equals_its_diffusers_pipeline(family, folders, engines):
    engine = engines[family]
    assert describe(folders[family]).family.name == family == engine.describe().family.name
    request = GenerationRequest(PROMPT, negative_prompt=NEGATIVE, seed=5, steps=3, width=32, height=32,
                                cfg_scale=4.0, batch_size=2)
    result = engine.generate(request)
    ours = [_pixels(image.image) for image in result.images]
    sampler = engine.describe().family.default_sampler
    theirs = [_pixels(image) for image in _their_images(_diffusers(folders[family], family, sampler), family,
                                                        [5, 6], 4.0)]
    for a, b in zip(ours, theirs):
        assert a.shape == (32, 32, 3) and np.abs(a - b).max() <= 1
    assert ours[0].std() > 2 and np.abs(ours[0] - ours[1]).mean() > 1  # a picture, and the seed changes it
    assert "Seed: 5" in result.images[0].infotext and f"Sampler: {sampler}" in result.images[0].infotext


@pytest.mark.parametrize("family", [*NEW, "sd3", "flux", "chroma"])
def test_each_family_takes_exactly_its_samplers(family, folders, engines):
    """The samplers a family declares (SD3, FLUX and Chroma too) run; the other flow samplers are refused in one line before any work, and
    they do fail in the plain pipeline (its timesteps need what their schedulers lack): the list is exact."""
    engine = engines[family]
    allowed = FLOW_FAMILIES[family].samplers or tuple(SAMPLERS)
    base = GenerationRequest(PROMPT, seed=1, steps=4, width=32, height=32, cfg_scale=2.0)
    images = {}
    for sampler in FLOW_SAMPLERS if FLOW_FAMILIES[family].flow else SAMPLERS:
        request = dataclasses.replace(base, sampler=sampler)
        if sampler in allowed:
            images[sampler] = _pixels(engine.generate(request).images[0].image)
        else:
            with pytest.raises(UnsupportedModel, match=re.escape(f"sampler '{sampler}' does not fit {family}")):
                engine.generate(request)
            with pytest.raises((ValueError, TypeError, AssertionError)):
                _their_images(_diffusers(folders[family], family, sampler), family, [1], 2.0, steps=2)
    assert all(image.std() > 1 for image in images.values())
    if len(images) > 1:  # different solvers, different pictures
        first, *rest = images.values()
        assert any(np.abs(first - other).max() > 2 for other in rest)


@pytest.mark.parametrize("family", ["qwen-image", "z-image"])
def test_img2img_and_inpaint_equal_the_diffusers_edit_pipelines(family, folders, engines, tmp_path):
    import diffusers

    picture = Image.new("RGB", (32, 32), (200, 40, 40))
    picture.paste((30, 90, 200), (0, 16, 32, 32))
    picture.save(tmp_path / "init.png")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(tmp_path / "mask.png")
    engine = engines[family]
    request = GenerationRequest(PROMPT, negative_prompt=NEGATIVE, seed=3, steps=4, width=32, height=32, cfg_scale=3.0,
                                init_image=str(tmp_path / "init.png"), strength=0.7, sampler="Euler")
    ours = _pixels(engine.generate(request).images[0].image)
    base = _diffusers(folders[family], family, "Euler")
    edit = getattr(diffusers, FLOW_FAMILIES[family].edits[False]).from_pipe(base)
    theirs = _their_images(edit, family, [3], 3.0, steps=4, image=[picture], strength=0.7)[0]
    assert np.abs(ours - _pixels(theirs)).max() <= 1
    assert np.abs(ours - _pixels(picture)).mean() < 90  # an edit of the picture, not a new one
    inpainted = _pixels(engine.generate(dataclasses.replace(request, mask=str(tmp_path / "mask.png"),
                                                            mask_blur=0)).images[0].image)
    outside = np.ones((32, 32), bool)
    outside[6:26, 6:26] = False
    assert np.abs(inpainted - _pixels(picture))[outside].max() <= 2  # kept outside the mask
    assert np.abs(inpainted - _pixels(picture))[10:22, 10:22].mean() > 3  # redrawn inside it


@pytest.mark.parametrize("family", [f for f in NEW if takes_loras(f)])
def test_lora_equals_the_diffusers_loader(family, folders, engines, tmp_path):
    """A diffusers-format LoRA on the transformer: the image equals the plain pipeline after its own
    `load_lora_weights`, differs from the image without it, and is gone when the next request names none."""
    from lora_files import random_lora

    sampler = engines[family].describe().family.default_sampler
    lora = random_lora(_diffusers(folders[family], family, sampler), tmp_path / "lora")
    request = GenerationRequest(PROMPT, negative_prompt=NEGATIVE, seed=5, steps=3, width=32, height=32, cfg_scale=4.0)
    plain = _pixels(engines[family].generate(request).images[0].image)
    with_lora = _pixels(engines[family].generate(dataclasses.replace(request, loras=[(str(lora), 1.0)]))
                        .images[0].image)
    reference = _diffusers(folders[family], family, sampler)
    reference.load_lora_weights(str(lora))
    theirs = _pixels(_their_images(reference, family, [5], 4.0)[0])
    assert np.abs(with_lora - theirs).max() <= 1 and np.abs(with_lora - plain).max() > 2  # applied, as diffusers does
    again = _pixels(engines[family].generate(request).images[0].image)
    assert np.array_equal(again, plain)  # the LoRA is gone when the next request names none


def test_refusals_are_one_line_before_work(folders, engines, tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    base = GenerationRequest(PROMPT, seed=1, steps=2, width=32, height=32)
    cases = [("lumina2", {"init_image": str(tmp_path / "red.png")}, "no img2img or inpainting pipeline"),
             ("qwen-image", {"subseed": 3, "subseed_strength": 0.3}, "variation seeds"),
             ("lumina2", {"width": 40}, "multiples of 16 px"),
             ("sana", {"prompt": "a (red:1.3) apple"}, "plain prompts"),
             ("cogview4", {"controls": [{"image": str(tmp_path / "red.png"), "module": "none",
                                         "model": str(folders["cogview4"])}]}, "ControlNet"),
             ("auraflow", {"consistent": 1.0}, "consistent batches")]
    for family, change, message in cases:
        with pytest.raises((UnsupportedModel, InvalidRequest), match=message):
            engines[family].generate(dataclasses.replace(base, **change))


def test_cli_generates_lists_and_replays_bit_exact(folders, capsys, tmp_path):
    folder = folders["z-image"]
    code = main(["generate", PROMPT, "--model", str(folder), "--steps", "2", "--width", "32", "--height", "32",
                 "--seed", "4", "--cfg-scale", "2", "-o", str(tmp_path / "z.png")])
    assert code == 0
    assert main(["replay", str(tmp_path / "z.png"), "-o", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(_pixels(Image.open(tmp_path / "z.png")), _pixels(Image.open(tmp_path / "again.png")))
    capsys.readouterr()
    assert main(["generate", PROMPT, "--model", str(folder), "--sampler", "Heun", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit z-image" in err and "Traceback" not in err


def test_family_table_detects_every_pipeline_class_in_the_folders(folders):
    for family, folder in folders.items():
        index = json.loads((folder / "model_index.json").read_text())
        assert describe(folder).family.name == family, index["_class_name"]


def test_flux_kontext_edits_a_reference_image_like_diffusers(tmp_path, capsys):
    """FLUX.1 Kontext: the prompt edits the reference image (fitted to the output size); equal to the plain
    FluxKontextPipeline given our packed noise; an init image without a mask means the reference (A1111 img2img)."""

    from sfumato.sampling.noise import batch_noise, generators_for

    folder = build_tiny("flux-kontext", tmp_path / "kontext")
    assert describe(folder).family.name == "flux-kontext"
    picture = Image.new("RGB", (48, 48), (200, 40, 40))
    picture.paste((30, 90, 200), (0, 24, 48, 48))
    picture.save(tmp_path / "ref.png")
    engine = Engine(folder)
    request = GenerationRequest("make it blue", seed=5, steps=3, width=32, height=32, cfg_scale=2.5,
                                reference_image=str(tmp_path / "ref.png"))
    ours = _pixels(engine.generate(request).images[0].image)
    pipe = _diffusers(folder, "flux-kontext", "Euler")
    channels, side = pipe.vae.config.latent_channels, 32 // pipe.vae_scale_factor
    noise = pipe._pack_latents(batch_noise((channels, side, side), generators_for([5])), 1, channels, side, side)
    fitted = picture.resize((32, 32), Image.Resampling.LANCZOS)
    theirs = pipe(image=fitted, prompt="make it blue", height=32, width=32, num_inference_steps=3,
                  guidance_scale=2.5, latents=noise, _auto_resize=False, max_area=32 * 32, output_type="pil").images[0]
    assert np.abs(ours - _pixels(theirs)).max() <= 1
    without = _pixels(engine.generate(dataclasses.replace(request, reference_image=None)).images[0].image)
    assert np.abs(ours - without).max() > 0  # the reference is read (weakly by random weights; parity shows how)
    as_init = engine.generate(dataclasses.replace(request, reference_image=None, init_image=str(tmp_path / "ref.png")))
    assert np.array_equal(_pixels(as_init.images[0].image), ours) and as_init.images[0].request.reference_image
    with pytest.raises(UnsupportedModel, match="reference image is for FLUX.1 Kontext"):
        Engine(build_tiny("flux", tmp_path / "flux")).generate(request)
    assert main(["generate", "make it blue", "--model", str(folder), "--reference-image", str(tmp_path / "ref.png"),
                 "--steps", "3", "--width", "32", "--height", "32", "--seed", "5", "--cfg-scale", "2.5",
                 "-o", str(tmp_path / "k.png")]) == 0
    assert np.array_equal(_pixels(Image.open(tmp_path / "k.png")), ours)
    assert main(["replay", str(tmp_path / "k.png"), "-o", str(tmp_path / "k2.png")]) == 0
    assert np.array_equal(_pixels(Image.open(tmp_path / "k2.png")), ours)


def test_a_qwen_image_edit_folder_is_refused_in_one_line_naming_what_works(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPlusPipeline"}))
    with pytest.raises(UnsupportedModel, match="Qwen-Image-Edit is not supported: .*torch's vision library.*FLUX.1 Kontext"):
        describe(tmp_path)


@pytest.mark.parametrize("family", ["qwen-image", "sana", "z-image"])
def test_memory_presets_apply_to_the_new_vaes(family, folders):
    """VAE tiling/slicing and int8 weights on Qwen's 3D VAE, SANA's DC-AE and an AutoencoderKL: they switch on
    and the image stays the plain one (tiles larger than these images; int8 within a few levels)."""
    from sfumato.memory import MemorySettings

    request = GenerationRequest(PROMPT, seed=2, steps=2, width=32, height=32, cfg_scale=2.0)
    plain = _pixels(Engine(folders[family]).generate(request).images[0].image)
    engine = Engine(folders[family], memory=MemorySettings(vae_tiling=True, vae_slicing=True, quantize="int8"))
    low = _pixels(engine.generate(request).images[0].image)
    assert {"VAE tiling", "VAE slicing", "int8 weights"} <= set(engine.load().memory)
    assert np.abs(low - plain).mean() < 12


SPLIT = {"z-image": ("z_image_turbo.safetensors", "qwen_3.safetensors", ".attention.qkv.weight",
                     ("dim", "n_heads", "n_kv_heads", "cap_feat_dim", "in_channels", "n_layers", "n_refiner_layers")),
         "chroma": ("chroma.safetensors", "t5xxl.safetensors", "double_blocks.0.img_attn.qkv.weight",
                    ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                     "joint_attention_dim", "approximator_num_channels", "approximator_hidden_dim",
                     "approximator_layers")),
         "qwen-image": ("qwen_image.safetensors", "qwen_2.5_vl.safetensors", "transformer_blocks.0.img_mod.1.weight",
                        ("in_channels", "out_channels", "num_layers", "attention_head_dim", "num_attention_heads",
                         "joint_attention_dim", "guidance_embeds"))}


@pytest.mark.parametrize("family", list(SPLIT))
def test_a_split_folder_loads_like_its_diffusers_folder(family, folders, engines, tmp_path):
    """The community's split layout: the transformer in its original layout (fused q/k/v, `model.diffusion_model.`),
    the text encoder in transformers' layout (Qwen3 causal LM, T5), FLUX's ae.safetensors (LDM layout) and a tokenizer
    folder: detected by keys, loaded offline, the same image as the diffusers folder; without the configs sfumato
    writes they are read off the shapes; a missing part is named in one line."""
    import diffusers
    from safetensors.torch import load_file, save_file

    from sfumato.models import splitfile
    from sfumato.models.flowfile import to_original

    transformer_file, text_file, fused_key, shaped = SPLIT[family]
    vae_file = "qwen_image_vae.safetensors" if family == "qwen-image" else "ae.safetensors"
    if family == "qwen-image":  # diffusers' converter of Qwen's (Wan's) original VAE layout wants its real blocks
        from sfumato.models.tiny_flow import build, tiny_qwen_image

        build(family, {family: lambda: tiny_qwen_image(released_vae=True)}).save_pretrained(str(tmp_path / "folder"))
        folder, engine = tmp_path / "folder", Engine(tmp_path / "folder")
    else:
        folder, engine = folders[family], engines[family]
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    split = splitfile.write_split(pipe, tmp_path / "split")
    assert {p.name for p in split.iterdir()} == {transformer_file, text_file, vae_file, "tokenizer"}
    original = load_file(str(split / transformer_file))
    assert any(fused_key in k for k in original)
    info = describe(split)
    assert (info.format, info.family.name) == ("split", family)
    request = GenerationRequest(PROMPT, negative_prompt=NEGATIVE, seed=5, steps=3, width=32, height=32, cfg_scale=4.0,
                                sampler="Euler")
    plain = _pixels(engine.generate(request).images[0].image)
    assert np.array_equal(_pixels(Engine(split).generate(request).images[0].image), plain)
    import shutil

    from sfumato.models.catalog import list_models
    from sfumato.models.home import checkpoints_dir

    shutil.copytree(split, checkpoints_dir() / "my-split")  # listed by `sfumato models` and the servers
    assert [(e.family, e.format) for e in list_models() if e.name == "my-split"] == [(family, "split")]
    bare_state = {k.removeprefix("model.diffusion_model."): v for k, v in original.items()}
    config = {"z-image": splitfile.z_image_config, "chroma": splitfile.chroma_config,
              "qwen-image": splitfile.qwen_image_config}[family](bare_state)
    assert {key: config[key] for key in shaped} == {key: pipe.transformer.config[key] for key in shaped}
    if family == "chroma":
        assert to_original(pipe.transformer.state_dict(), "chroma").keys() == bare_state.keys()
    if family == "qwen-image":  # the tiny's narrow heads and VAE are not the released ones: configs need metadata
        assert any(k.startswith("decoder.upsamples.") for k in load_file(str(split / vae_file)))
        return
    bare = tmp_path / "bare"  # the same files without sfumato's metadata (as downloaded)
    bare.mkdir()
    for name in ("ae.safetensors", text_file, transformer_file):
        save_file(load_file(str(split / name)), str(bare / name))
    (bare / "tokenizer").mkdir()
    with pytest.raises(UnsupportedModel, match="needs a tokenizer/ folder"):  # an empty tokenizer folder
        Engine(bare).generate(request)
    (bare / "tokenizer").rmdir()
    pipe.tokenizer.save_pretrained(str(bare / "tokenizer"))
    image = _pixels(Engine(bare).generate(request).images[0].image)  # configs read off the shapes
    assert image.shape == (32, 32, 3) and image.std() > 2
    (bare / "ae.safetensors").unlink()
    with pytest.raises(UnsupportedModel, match="needs the VAE file"):
        Engine(bare).generate(request)


def test_the_apis_list_and_run_the_new_families_by_name(folders, tmp_path):
    """In the models home, the families are listed with their family (A1111 sd-models, native models list) and run
    by name through the A1111, OpenAI and native APIs; a Kontext model edits an A1111 img2img init image."""
    import base64
    import io
    import shutil

    from fastapi.testclient import TestClient

    from sfumato.models.home import checkpoints_dir
    from sfumato.server.app import create_app
    from sfumato.server.settings import ServerSettings
    from test_server import _wait

    checkpoints_dir().mkdir(parents=True)
    for family in ("qwen-image", "hunyuandit"):
        shutil.copytree(folders[family], checkpoints_dir() / family)
    shutil.copytree(build_tiny("flux-kontext", tmp_path / "kontext"), checkpoints_dir() / "kontext")
    settings = ServerSettings(model=str(folders["z-image"]), data_dir=tmp_path / "server", safety="off")
    small = {"width": 32, "height": 32, "steps": 2, "seed": 3}
    with TestClient(create_app(settings), base_url="http://127.0.0.1:7860") as client:
        entries = client.get("/sdapi/v1/sd-models").json()
        listed = {m["model_name"]: m["family"] for m in entries}
        assert next(m["samplers"] for m in entries if m["model_name"] == "qwen-image") == ["Euler", "UniPC"]
        assert {"qwen-image": "qwen-image", "hunyuandit": "hunyuandit", "kontext": "flux-kontext"}.items() <= \
            listed.items()
        r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **small, "cfg_scale": 4.0,
                                                   "override_settings": {"sd_model_checkpoint": "qwen-image"}})
        assert r.status_code == 200, r.text
        a1111 = _pixels(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"))
        local = _pixels(Engine(folders["qwen-image"]).generate(GenerationRequest(PROMPT, cfg_scale=4.0, **small))
                        .images[0].image)
        assert np.abs(a1111 - local).max() <= 1
        r = client.post("/v1/images/generations", json={"prompt": PROMPT, "model": "hunyuandit", "size": "32x32",
                                                        "response_format": "b64_json", "steps": 2})
        assert r.status_code == 200, r.text
        job = client.post("/api/v1/jobs", json={"prompt": PROMPT, **small})  # the server's default: Z-Image
        assert _wait(client, job.json()["id"])["status"] == "completed"
        picture = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 40, 40)).save(picture, format="PNG")
        r = client.post("/sdapi/v1/img2img", json={
            "prompt": "make it blue", "init_images": [base64.b64encode(picture.getvalue()).decode()], **small,
            "override_settings": {"sd_model_checkpoint": "kontext"}})
        assert r.status_code == 200, r.text
        assert "make it blue" in json.loads(r.json()["info"])["infotexts"][0]
        r = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, **small, "sampler_name": "DPM++ 2M",
                                                   "override_settings": {"sd_model_checkpoint": "qwen-image"}})
        assert r.status_code in (400, 422) and "does not fit qwen-image" in r.text


@pytest.mark.parametrize("family", ["qwen-image", "z-image", "chroma", "hunyuandit"])
def test_gguf_transformers_of_the_new_families(family, folders, engines, tmp_path):
    """`sfumato convert FOLDER OUT --quant q8_0` makes the transformer a GGUF (diffusers keys); city96's files in
    the original layouts (Chroma's BFL blocks, Z-Image's fused q/k/v) dropped into transformer/ load the same; the
    images stay within Q8_0's error of the originals."""
    import shutil

    from diffusers.quantizers.gguf.utils import GGUFLinear

    from sfumato.models.convert import convert
    from sfumato.models.flowfile import to_original
    from sfumato.models.gguf import write_gguf
    from sfumato.models.splitfile import z_image_to_original

    target = convert(folders[family], tmp_path / "q8", quant="q8_0")
    assert describe(target).quantization == "q8_0"
    request = GenerationRequest(PROMPT, negative_prompt=NEGATIVE, seed=5, steps=3, width=32, height=32, cfg_scale=4.0)
    reference = _pixels(engines[family].generate(request).images[0].image)
    engine = Engine(target)
    quantized = _pixels(engine.generate(request).images[0].image)
    assert np.abs(quantized - reference).mean() < 3
    assert any(isinstance(m, GGUFLinear) for m in engine.load().pipe.transformer.modules())
    if family not in ("chroma", "z-image"):
        return
    city96 = tmp_path / "city96"
    shutil.copytree(target, city96)
    (city96 / "transformer" / "diffusion_pytorch_model.gguf").unlink()
    state = Engine(folders[family]).load().pipe.transformer.state_dict()
    original = to_original(state, "chroma") if family == "chroma" else z_image_to_original(state)
    write_gguf(original, city96 / "transformer" / f"{family}-Q8_0.gguf", "q8_0", {}, prefix="")
    assert np.array_equal(_pixels(Engine(city96).generate(request).images[0].image), quantized)


def _tiny_controlnet(family: str):
    import diffusers

    torch.manual_seed(5)
    if family == "qwen-image":
        return diffusers.QwenImageControlNetModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                                  attention_head_dim=16, num_attention_heads=3,
                                                  joint_attention_dim=16, axes_dims_rope=(8, 4, 4))
    return diffusers.ZImageControlNetModel(control_layers_places=[0], control_refiner_layers_places=[0],
                                           control_in_dim=16, dim=32, n_refiner_layers=1, n_heads=2, n_kv_heads=2)


@pytest.mark.parametrize("family", ["qwen-image", "z-image"])
def test_controlnets_equal_the_diffusers_controlnet_pipelines(family, folders, engines, tmp_path):
    """A Qwen-Image or Z-Image ControlNet unit (its diffusers folder) runs the family's ControlNet pipeline over the
    loaded components: the same image as that pipeline with the same generators; the map changes the picture; what
    the pipeline lacks (Z-Image: guidance windows, several units) is refused in one line."""
    import diffusers
    from PIL import ImageDraw

    net = _tiny_controlnet(family)
    for parameter in net.parameters():  # ControlNets start with zero outputs: give them some
        if parameter.dim() > 1 and parameter.abs().sum() == 0:
            torch.nn.init.normal_(parameter, std=0.2)
    net.save_pretrained(str(tmp_path / "controlnet"), safe_serialization=True)
    picture = Image.new("RGB", (32, 32), (0, 0, 0))
    ImageDraw.Draw(picture).rectangle((8, 8, 24, 24), outline=(255, 255, 255), width=2)
    picture.save(tmp_path / "map.png")
    windows = FLOW_FAMILIES[family].control_windows
    unit = {"image": str(tmp_path / "map.png"), "model": str(tmp_path / "controlnet"), "weight": 0.8,
            **({"guidance_end": 0.75} if windows else {})}
    request = GenerationRequest(PROMPT, negative_prompt=NEGATIVE, seed=11, steps=3, width=32, height=32,
                                cfg_scale=4.0, sampler="Euler", controls=[unit])
    ours = _pixels(engines[family].generate(request).images[0].image)
    plain = _pixels(engines[family].generate(dataclasses.replace(request, controls=[])).images[0].image)
    assert np.abs(ours - plain).mean() > 1.0
    pipeline, _ = FLOW_FAMILIES[family].control
    model_class = type(net)
    reference = getattr(diffusers, pipeline).from_pipe(
        _diffusers(folders[family], family, "Euler"),
        controlnet=model_class.from_pretrained(str(tmp_path / "controlnet")))
    reference.set_progress_bar_config(disable=True)
    extra = {"control_guidance_start": [0.0], "control_guidance_end": [0.75]} if windows else {}
    torch.manual_seed(11)  # as the engine seeds the global generator around a ControlNet pass
    theirs = _their_images(reference, family, [11], 4.0, control_image=picture, controlnet_conditioning_scale=0.8,
                           **extra)[0]
    assert np.abs(ours - _pixels(theirs)).max() <= 1
    if not windows:
        for bad, message in (([{**unit, "guidance_end": 0.5}], "no guidance start/end"), ([unit, unit], "one control")):
            with pytest.raises(UnsupportedModel, match=message):
                engines[family].generate(dataclasses.replace(request, controls=bad))


def test_the_released_qwen_vl_text_config_is_read_off_its_shapes():
    """Qwen2.5-VL-7B's language model as Qwen-Image ships it (old `model.layers.*` names), as meta tensors of the
    released shapes: the config read off them is the released one."""
    from sfumato.models.splitfile import qwen_vl_text_config

    meta = {"embed_tokens.weight": torch.empty(152064, 3584, device="meta"),
            "layers.0.mlp.gate_proj.weight": torch.empty(18944, 3584, device="meta")}
    meta.update({f"layers.{i}.self_attn.k_proj.weight": torch.empty(512, 3584, device="meta") for i in range(28)})
    config = qwen_vl_text_config(meta)
    assert {k: config[k] for k in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                   "intermediate_size", "num_hidden_layers")} == \
        {"vocab_size": 152064, "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
         "intermediate_size": 18944, "num_hidden_layers": 28}
