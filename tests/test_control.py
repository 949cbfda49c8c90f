"""ControlNet and T2I-Adapter units on tiny random models: parity with plain diffusers, weights, guidance windows,
control modes, tasks, and single-file round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sfumato.control.models import load_control_model, save_single_file
from sfumato.engine import Engine
from sfumato.errors import InvalidRequest, ModelNotFound
from sfumato.requests import GenerationRequest
from test_engine import capture_latents as latents_of

SIZE = 32


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """ControlNets start with zero convolutions; give every weight a value so the residuals matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return module


def _controlnet(base, out, seed=0):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    net = _randomize(ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16)), seed)
    net.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def sd1_controlnet(sd1, tmp_path_factory):
    return _controlnet(sd1, tmp_path_factory.mktemp("cn") / "sd1-cn")


@pytest.fixture(scope="module")
def sd1_controlnet_b(sd1, tmp_path_factory):
    return _controlnet(sd1, tmp_path_factory.mktemp("cn") / "sd1-cn-b", seed=1)


@pytest.fixture(scope="module")
def sdxl_controlnet(sdxl, tmp_path_factory):
    return _controlnet(sdxl, tmp_path_factory.mktemp("cn") / "sdxl-cn")


@pytest.fixture(scope="module")
def sd1_adapter(tmp_path_factory):
    from diffusers import T2IAdapter

    adapter = _randomize(T2IAdapter(in_channels=3, channels=[32, 64], num_res_blocks=1, downscale_factor=2,
                                    adapter_type="full_adapter"), 2)
    out = tmp_path_factory.mktemp("t2i") / "sd1-adapter"
    adapter.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def control_image(tmp_path_factory):
    image = Image.new("RGB", (SIZE, SIZE), "black")
    draw = ImageDraw.Draw(image)
    draw.ellipse((6, 6, 26, 26), outline="white", width=2)
    draw.line((0, 31, 31, 0), fill=(200, 120, 40), width=1)
    path = tmp_path_factory.mktemp("img") / "control.png"
    image.save(path)
    return path


def req(**kw):
    base = dict(prompt="a red apple", negative_prompt="blurry", seed=1234, steps=4, width=SIZE, height=SIZE,
                sampler="Euler", cfg_scale=7.0)
    base.update(kw)
    return GenerationRequest(**base)


def unit(image, model, **kw):
    return {"image": str(image), "model": str(model), "module": "none", **kw}


def _plain(pipe):
    from sfumato.sampling.samplers import make_scheduler

    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("Euler", dict(pipe.scheduler.config))
    return pipe


def _diffusers_latents(pipe_class, base, nets, image, **kw):
    pipe = _plain(pipe_class.from_pretrained(str(base), controlnet=nets, local_files_only=True))
    images = [Image.open(image).convert("RGB")] * (len(nets) if isinstance(nets, list) else 1)
    return pipe("a red apple", negative_prompt="blurry", image=images if isinstance(nets, list) else images[0],
                num_inference_steps=4, guidance_scale=7.0, height=SIZE, width=SIZE,
                generator=[torch.Generator().manual_seed(1234)], output_type="latent", **kw).images


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_controlnet_parity_with_diffusers(family, request, control_image, monkeypatch):
    """Same tiny model and ControlNet, weight and guidance window as diffusers' ControlNet pipeline -> same latents."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    base = request.getfixturevalue(family)
    net_path = request.getfixturevalue(f"{family}_controlnet")
    ours = latents_of(Engine(base), req(controls=[unit(control_image, net_path, weight=0.7, guidance_start=0.25,
                                                       guidance_end=0.75)]), monkeypatch)
    plain = latents_of(Engine(base), req(), monkeypatch)
    pipe_class = StableDiffusionControlNetPipeline if family == "sd1" else StableDiffusionXLControlNetPipeline
    theirs = _diffusers_latents(pipe_class, base, ControlNetModel.from_pretrained(str(net_path)), control_image,
                                controlnet_conditioning_scale=0.7, control_guidance_start=0.25,
                                control_guidance_end=0.75)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - plain).abs().max().item() > 1e-2  # the control changed the image


def test_two_units_match_diffusers_multi_controlnet(sd1, sd1_controlnet, sd1_controlnet_b, control_image, monkeypatch):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    ours = latents_of(Engine(sd1), req(controls=[unit(control_image, sd1_controlnet, weight=0.6),
                                                 unit(control_image, sd1_controlnet_b, weight=1.2)]), monkeypatch)
    nets = [ControlNetModel.from_pretrained(str(p)) for p in (sd1_controlnet, sd1_controlnet_b)]
    theirs = _diffusers_latents(StableDiffusionControlNetPipeline, sd1, nets, control_image,
                                controlnet_conditioning_scale=[0.6, 1.2])
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_t2i_adapter_parity_with_diffusers(sd1, sd1_adapter, control_image, monkeypatch):
    from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

    ours = latents_of(Engine(sd1), req(controls=[unit(control_image, sd1_adapter, weight=0.8)]), monkeypatch)
    pipe = _plain(StableDiffusionAdapterPipeline.from_pretrained(
        str(sd1), adapter=T2IAdapter.from_pretrained(str(sd1_adapter)), local_files_only=True))
    theirs = pipe("a red apple", negative_prompt="blurry", image=Image.open(control_image).convert("RGB"),
                  num_inference_steps=4, guidance_scale=7.0, height=SIZE, width=SIZE, adapter_conditioning_scale=0.8,
                  generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    plain = latents_of(Engine(sd1), req(), monkeypatch)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - plain).abs().max().item() > 1e-2


def test_weight_zero_and_empty_window_equal_no_control(sd1, sd1_controlnet, control_image, monkeypatch):
    engine = Engine(sd1)
    plain = latents_of(engine, req(), monkeypatch)
    zero = latents_of(engine, req(controls=[unit(control_image, sd1_controlnet, weight=0.0)]), monkeypatch)
    late = latents_of(engine, req(controls=[unit(control_image, sd1_controlnet, guidance_start=1.0)]), monkeypatch)
    assert torch.equal(plain, zero) and torch.equal(plain, late)
    half = latents_of(engine, req(controls=[unit(control_image, sd1_controlnet, guidance_end=0.5)]), monkeypatch)
    full = latents_of(engine, req(controls=[unit(control_image, sd1_controlnet)]), monkeypatch)
    assert (half - plain).abs().max() > 1e-3 and (half - full).abs().max() > 1e-3


def test_effective_region_mask_limits_where_control_applies(sd1, sd1_controlnet, sd1_adapter, control_image, tmp_path,
                                                            monkeypatch):
    """A1111's effective region mask: white everywhere = the unit unmasked, black = no unit at all (bit for bit);
    a half mask controls the latents of its half and leaves the other half nearly as without control."""
    engine = Engine(sd1)
    for name, value in (("white", 255), ("black", 0)):
        Image.new("L", (SIZE, SIZE), value).save(tmp_path / f"{name}.png")
    half = Image.new("L", (SIZE, SIZE), 0)
    half.paste(255, (0, 0, SIZE // 2, SIZE))
    half.save(tmp_path / "half.png")
    for model in (sd1_controlnet, sd1_adapter):  # measured: ControlNet 0.29 / 0.36, T2I-Adapter 0.51 / 0.48
        plain = latents_of(engine, req(), monkeypatch)
        full = latents_of(engine, req(controls=[unit(control_image, model)]), monkeypatch)
        white = latents_of(engine, req(controls=[unit(control_image, model, effective_region_mask=str(
            tmp_path / "white.png"))]), monkeypatch)
        black = latents_of(engine, req(controls=[unit(control_image, model, effective_region_mask=str(
            tmp_path / "black.png"))]), monkeypatch)
        assert torch.equal(white, full) and torch.equal(black, plain)
        left = latents_of(engine, req(controls=[unit(control_image, model, effective_region_mask=str(
            tmp_path / "half.png"))]), monkeypatch)
        w = left.shape[-1]
        inside = (left - full)[..., : w // 2 - 2].abs().mean() / (plain - full)[..., : w // 2 - 2].abs().mean()
        outside = (left - plain)[..., w // 2 + 2:].abs().mean() / (full - plain)[..., w // 2 + 2:].abs().mean()
        bound = 0.45 if model == sd1_controlnet else 0.6  # the adapter's coarse features blur the edge more
        assert inside < bound and outside < bound, (inside, outside)
    with pytest.raises(ModelNotFound, match="effective region mask .*none.png does not exist"):
        engine.generate(req(controls=[unit(control_image, sd1_controlnet,
                                           effective_region_mask=str(tmp_path / "none.png"))]))


def test_control_modes_follow_a1111(sd1, sd1_controlnet, control_image, monkeypatch):
    """"My prompt is more important" weights residual k of n by 0.825^(n-1-k); "ControlNet is more important"
    also leaves the negative rows uncontrolled. Both differ from balanced and from each other."""
    from sfumato.control import apply

    engine = Engine(sd1)
    results = {mode: latents_of(engine, req(controls=[unit(control_image, sd1_controlnet, control_mode=mode)]),
                                monkeypatch) for mode in ("balanced", "prompt", "control")}
    assert (results["balanced"] - results["prompt"]).abs().max() > 1e-3
    assert (results["prompt"] - results["control"]).abs().max() > 1e-3
    seen = []
    original = apply.ControlSet.unet_kwargs

    def spy(self, *args):
        out = original(self, *args)
        seen.append(out)
        return out

    monkeypatch.setattr(apply.ControlSet, "unet_kwargs", spy)
    engine.generate(req(controls=[unit(control_image, sd1_controlnet, control_mode="control")]))
    mid = seen[0]["mid_block_additional_residual"]
    assert mid[0].abs().max() == 0 and mid[1].abs().max() > 0  # row 0 is the negative prompt
    # A1111 names and numbers are accepted
    same = latents_of(engine, req(controls=[unit(control_image, sd1_controlnet, control_mode=2)]), monkeypatch)
    assert torch.equal(same, results["control"])
    named = latents_of(engine, req(controls=[unit(control_image, sd1_controlnet,
                                                  control_mode="My prompt is more important")]), monkeypatch)
    assert torch.equal(named, results["prompt"])


def test_control_with_img2img_inpaint_hires_and_batch(sd1, sd1_controlnet, control_image, tmp_path):
    engine = Engine(sd1)
    init = tmp_path / "init.png"
    Image.new("RGB", (SIZE, SIZE), (90, 140, 200)).save(init)
    mask = tmp_path / "mask.png"
    Image.new("L", (SIZE, SIZE), 255).save(mask)
    controls = [unit(control_image, sd1_controlnet)]
    for extra in ({"init_image": str(init), "strength": 0.6}, {"init_image": str(init), "mask": str(mask)},
                  {"hires_scale": 1.5, "hires_steps": 2}, {"batch_size": 2}):
        result = engine.generate(req(controls=controls, **extra))
        plain = engine.generate(req(**extra))
        assert result.images[0].image.size == plain.images[0].image.size
        diff = np.abs(np.asarray(result.images[0].image, np.int16) - np.asarray(plain.images[0].image, np.int16))
        assert diff.max() > 0, extra
    assert len(result.images) == 2 and "ControlNet 0: " in result.images[0].infotext


def test_resize_modes_and_preprocessor_in_the_unit(sd1, sd1_controlnet, tmp_path):
    from sfumato.control.apply import control_map
    from sfumato.control.units import ControlUnit

    wide = tmp_path / "wide.png"
    image = Image.new("RGB", (64, 32), "white")
    ImageDraw.Draw(image).rectangle((20, 4, 44, 28), outline="black", width=2)
    image.save(wide)
    maps = {mode: np.asarray(control_map(ControlUnit(str(wide), "scribble", resize_mode=mode), SIZE, SIZE))
            for mode in ("just_resize", "crop_and_resize", "resize_and_fill")}
    assert all(m.shape == (SIZE, SIZE, 3) for m in maps.values())
    # resize and fill: the 64x32 picture sits in the middle 32x16 band, black above and below
    assert maps["resize_and_fill"][:7].max() == 0 and maps["resize_and_fill"][8:24].max() == 255
    # crop and resize keeps the centre (the square's sides), just resize squeezes it
    assert not np.array_equal(maps["crop_and_resize"], maps["just_resize"])
    result = Engine(sd1).generate(req(controls=[{"image": str(wide), "module": "scribble",
                                                 "model": str(sd1_controlnet), "resize_mode": "Resize and Fill"}]))
    assert result.request.controls[0]["resize_mode"] == "resize_and_fill"


def test_bad_units_fail_before_work(sd1, sd1_controlnet, control_image):
    engine = Engine(sd1)
    bad = [({"image": str(control_image), "model": str(sd1_controlnet), "weight": 3}, "weight"),
           ({"image": str(control_image), "model": str(sd1_controlnet), "guidance_start": 0.8, "guidance_end": 0.2},
            "guidance_start"),
           ({"image": str(control_image), "model": str(sd1_controlnet), "module": "sparkles"}, "preprocessor"),
           ({"image": str(control_image), "model": str(sd1_controlnet), "module": "depth"}, "depth"),
           ({"image": str(control_image)}, "needs a model"),
           ({"image": str(control_image), "model": "nope"}, "not found"),
           ({"model": str(sd1_controlnet)}, "needs an image"),
           ({"image": str(control_image), "model": str(sd1_controlnet), "control_mode": "loud"}, "control_mode")]
    for spec, words in bad:
        with pytest.raises(Exception) as info:
            engine.generate(req(controls=[spec]))
        assert words in str(info.value), (spec, str(info.value))
    with pytest.raises(InvalidRequest, match="at most 8"):
        GenerationRequest(prompt="x", controls=[{"image": "a"}] * 9).validate()


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_single_file_round_trip(sd1, sdxl, sd1_controlnet, sdxl_controlnet, control_image, tmp_path, layout,
                                monkeypatch):
    """A ControlNet written as one file (diffusers or A1111's `control_model.*` layout) loads back weight for weight,
    and generates the same image as its folder."""
    for folder in (sd1_controlnet, sdxl_controlnet):
        net = load_control_model(folder).module
        path = save_single_file(net, tmp_path / f"{folder.name}-{layout}.safetensors", layout)
        back = load_control_model(path).module
        assert set(net.state_dict()) == set(back.state_dict())
        assert all(torch.equal(v, back.state_dict()[k]) for k, v in net.state_dict().items())
    single = tmp_path / f"{sd1_controlnet.name}-{layout}.safetensors"
    engine = Engine(sd1)
    a = latents_of(engine, req(controls=[unit(control_image, sd1_controlnet)]), monkeypatch)
    b = latents_of(engine, req(controls=[unit(control_image, single)]), monkeypatch)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_original_layout_without_metadata_uses_the_family_skeleton(tmp_path):
    """An A1111 file carries no config: its cross-attention width picks SD1's skeleton."""
    from diffusers import ControlNetModel
    from safetensors.torch import load_file, save_file

    from sfumato.control.models import read_single_file
    from sfumato.models.families import SD1

    config = {k: v for k, v in SD1.skeleton["unet"].items() if k not in ("up_block_types", "out_channels",
                                                                         "sample_size")}
    config.update(block_out_channels=[32, 32, 32, 32], norm_num_groups=8, attention_head_dim=2, layers_per_block=1)
    net = ControlNetModel(**config)
    path = save_single_file(net, tmp_path / "a1111.safetensors", "original")
    save_file(load_file(str(path)), str(tmp_path / "bare.safetensors"))  # drop the metadata
    with pytest.raises(Exception, match="weights do not fit|size mismatch"):  # real SD1 widths, not these
        load_control_model(tmp_path / "bare.safetensors")
    (tmp_path / "bare.json").write_text(__import__("json").dumps({"_class_name": "ControlNetModel", **config}))
    state, got = read_single_file(tmp_path / "bare.safetensors")
    assert got["cross_attention_dim"] == 768
    assert list(load_control_model(tmp_path / "bare.safetensors").module.config.block_out_channels) == [32, 32, 32, 32]


def test_pickled_control_models_are_refused(tmp_path):
    from sfumato.control.models import resolve
    from sfumato.errors import PickleRefused

    (tmp_path / "control_sd15_canny.pth").write_bytes(b"not really")
    with pytest.raises(PickleRefused, match="sfumato convert"):
        resolve(str(tmp_path / "control_sd15_canny.pth"))


@pytest.fixture(scope="module")
def ip2p(tmp_path_factory):
    """A tiny InstructPix2Pix model: SD1's tiny pipeline with an 8-channel UNet."""
    import diffusers
    from diffusers import UNet2DConditionModel

    from sfumato.models.tiny import build_tiny_pipeline

    base = build_tiny_pipeline("sd1")
    torch.manual_seed(3)
    unet = UNet2DConditionModel(**{**dict(base.unet.config), "in_channels": 8})
    pipe = diffusers.StableDiffusionInstructPix2PixPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet, scheduler=base.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = tmp_path_factory.mktemp("ip2p") / "tiny-ip2p"
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def test_instruct_pix2pix_parity_with_diffusers(ip2p, control_image, monkeypatch):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    engine = Engine(ip2p)
    request = req(prompt="make it snowy", init_image=str(control_image), image_cfg_scale=1.7)
    ours = latents_of(engine, request, monkeypatch)
    resolved = engine.resolve(request)
    assert resolved.instruction_edit and "Image CFG scale: 1.7" in engine.generate(request).images[0].infotext
    pipe = _plain(StableDiffusionInstructPix2PixPipeline.from_pretrained(str(ip2p), local_files_only=True))
    theirs = pipe("make it snowy", negative_prompt="blurry", image=Image.open(control_image).convert("RGB"),
                  num_inference_steps=4, guidance_scale=7.0, image_guidance_scale=1.7,
                  generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    assert (ours - theirs).abs().max().item() <= 1e-4
    weaker = latents_of(engine, req(prompt="make it snowy", init_image=str(control_image), image_cfg_scale=1.0),
                        monkeypatch)
    assert (weaker - ours).abs().max() > 1e-3
    with pytest.raises(InvalidRequest, match="edits an image"):
        engine.generate(req(prompt="make it snowy"))


def test_instruction_edit_needs_an_instruct_model(sd1, control_image):
    with pytest.raises(InvalidRequest, match="not an InstructPix2Pix model"):
        Engine(sd1).generate(req(init_image=str(control_image), instruction_edit=True))


@pytest.fixture(scope="module")
def ip_adapter(sd1, tmp_path_factory):
    return build_ip_adapter(sd1, tmp_path_factory.mktemp("ip"))


def build_ip_adapter(sd1, folder):
    """A tiny IP-Adapter for the tiny SD1 model in the release layout (image_proj.* + ip_adapter.N.to_k/v_ip),
    with a tiny CLIP vision encoder in image_encoder/ beside it."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(5)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                                            num_attention_heads=4, image_size=32, patch_size=8,
                                                            projection_dim=16))
    vision.save_pretrained(str(folder / "image_encoder"), safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        str(folder / "image_encoder"))
    unet = UNet2DConditionModel.from_pretrained(str(sd1), subfolder="unet")
    cross = unet.config.cross_attention_dim
    tensors = {"image_proj.proj.weight": torch.randn(cross * 4, 16) * 0.2, "image_proj.proj.bias": torch.zeros(cross * 4),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            hidden = unet.get_submodule(name.rsplit(".", 1)[0]).to_q.out_features
            tensors[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.3
            tensors[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.3
            key += 2  # the release numbers the cross-attention processors 1, 3, 5, ...
    path = folder / "ip-adapter_tiny.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def reference_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    image = Image.new("RGB", (48, 40), (30, 120, 200))
    ImageDraw.Draw(image).rectangle((10, 8, 30, 30), fill=(250, 200, 20))
    image.save(path)
    return path


def test_ip_adapter_parity_with_diffusers(sd1, ip_adapter, reference_image, monkeypatch):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from sfumato.control.ip_adapter import adapter_state

    engine = Engine(sd1)
    request = req(ip_adapter=str(ip_adapter), ip_images=[str(reference_image)], ip_scale=0.6)
    ours = latents_of(engine, request, monkeypatch)
    pipe = _plain(StableDiffusionPipeline.from_pretrained(str(sd1), local_files_only=True))
    encoder = ip_adapter.parent / "image_encoder"
    pipe.register_modules(image_encoder=CLIPVisionModelWithProjection.from_pretrained(str(encoder)),
                          feature_extractor=CLIPImageProcessor.from_pretrained(str(encoder)))
    pipe.load_ip_adapter(adapter_state(ip_adapter), subfolder=None, weight_name=None, image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.6)
    theirs = pipe("a red apple", negative_prompt="blurry", ip_adapter_image=Image.open(reference_image).convert("RGB"),
                  num_inference_steps=4, guidance_scale=7.0, height=SIZE, width=SIZE,
                  generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    assert (ours - theirs).abs().max().item() <= 1e-4
    plain = latents_of(engine, req(), monkeypatch)
    assert (ours - plain).abs().max() > 1e-2
    # the adapter is taken out after the request: the UNet is plain again, and stays equal to a fresh engine
    assert torch.equal(latents_of(engine, req(), monkeypatch), latents_of(Engine(sd1), req(), monkeypatch))
    # with a ControlNet unit at the same time, and in the infotext
    result = engine.generate(dataclasses_replace(request, batch_size=2))
    assert len(result.images) == 2 and 'IP-Adapter: "ip-adapter_tiny: 0.6, 1 image(s)"' in result.images[0].infotext


def dataclasses_replace(request, **changes):
    import dataclasses

    return dataclasses.replace(request, **changes)


def test_ip_adapter_with_controlnet_and_errors(sd1, ip_adapter, reference_image, sd1_controlnet, control_image,
                                               tmp_path):
    engine = Engine(sd1)
    both = engine.generate(req(ip_adapter=str(ip_adapter), ip_images=[str(reference_image)] * 2,
                               controls=[unit(control_image, sd1_controlnet)]))
    assert len(both.images) == 1
    weights = engine._ip_cache[1]  # the adapter and its vision encoder are loaded once, not per request
    engine.generate(req(ip_adapter=str(ip_adapter), ip_images=[str(reference_image)]))
    assert engine._ip_cache[1] is weights
    with pytest.raises(InvalidRequest, match="needs reference images"):
        engine.generate(req(ip_adapter=str(ip_adapter)))
    lonely = tmp_path / "ip.safetensors"
    lonely.write_bytes(ip_adapter.read_bytes())
    with pytest.raises(Exception, match="CLIP vision encoder"):
        engine.generate(req(ip_adapter=str(lonely), ip_images=[str(reference_image)]))


def test_prompt_to_prompt_keeps_the_layout(engine_sd1, monkeypatch):
    """Editing with no injected steps equals plain generation of the edited prompt; injecting the source's attention
    maps pulls the edit toward the source image; editing with the source prompt itself returns the source image."""
    source = latents_of(engine_sd1, req(prompt="a red apple on a table"), monkeypatch)
    edited_plain = latents_of(engine_sd1, req(prompt="a green pear on a table"), monkeypatch)
    none = latents_of(engine_sd1, req(prompt="a green pear on a table", p2p_source="a red apple on a table",
                                      p2p_cross=0.0, p2p_self=0.0), monkeypatch)
    assert none.shape == edited_plain.shape  # only the edit is decoded
    assert (none - edited_plain).abs().max().item() <= 1e-4
    kept = latents_of(engine_sd1, req(prompt="a green pear on a table", p2p_source="a red apple on a table",
                                      p2p_cross=1.0, p2p_self=1.0), monkeypatch)
    assert (kept - none).abs().max() > 1e-3
    # the mechanism: inside the window the edit rows attend exactly like their source rows, after it they do not
    from sfumato.pipelines import p2p

    seen = []
    original = p2p.AttentionEdit.edit

    def spy(self, probs, heads, cross):
        out = original(self, probs, heads, cross)
        if cross:
            rows = out.view(-1, heads, *out.shape[1:])
            seen.append((self.step, [bool(torch.equal(rows[e], rows[s])) for e, s in self.source_rows.items()]))
        return out

    monkeypatch.setattr(p2p.AttentionEdit, "edit", spy)
    engine_sd1.generate(req(prompt="a green pear on a table", p2p_source="a red apple on a table", p2p_cross=0.5))
    monkeypatch.undo()
    assert all(all(same) for step, same in seen if step < 2) and seen[0][0] == 0
    assert not any(all(same) for step, same in seen if step >= 2)
    same = latents_of(engine_sd1, req(prompt="a red apple on a table", p2p_source="a red apple on a table"),
                      monkeypatch)
    assert (same - source).abs().max().item() <= 1e-4
    result = engine_sd1.generate(req(prompt="a green pear on a table", p2p_source="a red apple on a table"))
    assert len(result.images) == 1 and "Prompt-to-prompt: " in result.images[0].infotext
    # the UNet's own processors are back
    assert not any(type(p).__name__ == "EditingProcessor" for p in engine_sd1._loaded.pipe.unet.attn_processors.values())


@pytest.mark.slow
def test_controlnet_union_parity_with_diffusers(sdxl, control_image, tmp_path, monkeypatch):
    """A ControlNet-Union (ProMax layout) model: the unit's preprocessor picks the control type."""
    from diffusers import ControlNetUnionModel, StableDiffusionXLControlNetUnionPipeline, UNet2DConditionModel

    import inspect

    unet = UNet2DConditionModel.from_pretrained(str(sdxl), subfolder="unet")
    allowed = set(inspect.signature(ControlNetUnionModel.__init__).parameters)
    config = {k: v for k, v in unet.config.items() if k in allowed}
    width = unet.config.block_out_channels[0]
    union = _randomize(ControlNetUnionModel(**config, conditioning_embedding_out_channels=(8, 16),
                                            num_trans_channel=width, num_proj_channel=width, num_trans_head=4), 7)
    union.save_pretrained(str(tmp_path / "union"), safe_serialization=True)
    ours = latents_of(Engine(sdxl), req(controls=[{**unit(control_image, tmp_path / "union"), "module": "canny",
                                                   "weight": 0.9}]), monkeypatch)
    pipe = _plain(StableDiffusionXLControlNetUnionPipeline.from_pretrained(
        str(sdxl), controlnet=ControlNetUnionModel.from_pretrained(str(tmp_path / "union")), local_files_only=True))
    from sfumato.control import preprocessors

    edges = preprocessors.run("canny", Image.open(control_image).convert("RGB"))
    theirs = pipe("a red apple", negative_prompt="blurry", control_image=[edges], control_mode=[3],
                  controlnet_conditioning_scale=0.9, num_inference_steps=4, guidance_scale=7.0, height=SIZE,
                  width=SIZE, generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    assert (ours - theirs).abs().max().item() <= 1e-4
    with pytest.raises(InvalidRequest, match="map type"):
        Engine(sdxl).generate(req(controls=[unit(control_image, tmp_path / "union")]))


def test_cli_control_unit_and_bit_exact_replay(sd1, sd1_controlnet, control_image, tmp_path, capsys):
    from sfumato.cli import main

    out, again = tmp_path / "a.png", tmp_path / "b.png"
    code = main(["generate", "a red apple", "--model", str(sd1), "-W", "32", "-H", "32", "--steps", "3", "--seed", "9",
                 "--control", f"none:{control_image}:{sd1_controlnet}:0.7", "--control-end", "0.5",
                 "--control-mode", "prompt", "-o", str(out), "--safety", "off"])
    assert code == 0
    assert main(["replay", str(out), "-o", str(again), "--safety", "off"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    main(["info", str(out)])
    text = capsys.readouterr().out
    assert ('ControlNet 0: "Module: none, Model: sd1-cn, Weight: 0.7, Resize Mode: Crop and Resize, Processor Res: -1, '
            'Threshold A: -1, Threshold B: -1, Guidance Start: 0, Guidance End: 0.5, Pixel Perfect: False, '
            'Control Mode: My prompt is more important"') in text
    with pytest.raises(SystemExit) as bad:
        main(["generate", "x", "--model", str(sd1), "--control", "canny"])
    assert bad.value.code == 2 and "TYPE:IMAGE" in capsys.readouterr().err
