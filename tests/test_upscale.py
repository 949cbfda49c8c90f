"""Upscalers: the shipped Real-ESRGAN models through ncnn (pinned output) and converted to our torch networks,
user ESRGAN/SRVGG weights in their real layouts, tiling, alpha, A1111 Extras sizing, and the engine's uses of
upscalers (hires fix, SD upscale, restore) and colourising (lightness kept)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from sfumato.cli import main
from sfumato.engine import Engine
from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.models.embedded import embedded_model
from sfumato.pipelines.upscaling import colorize_like, grayscale, rgb_to_lab
from sfumato.requests import GenerationRequest, UpscaleRequest
from sfumato.upscale import extras_sizes, find, list_upscalers, load, upscale, upscalers_dir
from sfumato.upscale.arch import RRDBNet, SRVGGNetCompact, from_state_dict
from sfumato.upscale.ncnn_models import shipped_files, to_torch
from sfumato.upscale.tiling import run_tiled, tile_starts
from sfumato.upscale.upscalers import to_tensor

needs_embedded = pytest.mark.skipif(embedded_model() is None, reason="the embedded model is not in this checkout")


def smooth(width: int = 32, height: int = 24) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([0.5 + 0.5 * np.sin(x / 5.0), 0.5 + 0.5 * np.cos(y / 4.0), (x + y) / (width + height)], -1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def drawing(width: int = 160, height: int = 120) -> Image.Image:
    """A small natural-looking picture: a soft gradient sky, a sun, a hill, a house."""
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array([90, 140, 220]) * (1 - y) + np.array([230, 200, 170]) * y).repeat(width, 1)
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.65, height * 0.1, width * 0.85, height * 0.35), fill=(250, 220, 90))
    draw.ellipse((-width * 0.2, height * 0.6, width * 0.9, height * 1.6), fill=(70, 140, 60))
    draw.rectangle((width * 0.2, height * 0.45, width * 0.4, height * 0.7), fill=(180, 80, 60))
    draw.polygon([(width * 0.17, height * 0.46), (width * 0.3, height * 0.3), (width * 0.43, height * 0.46)],
                 fill=(110, 50, 40))
    return image


# ----------------------------------------------------------------------------- shipped Real-ESRGAN via ncnn

PINNED = {  # out[0, :, 40, 60:63] of smooth() (24x32) through each model with ncnn on CPU, rounded to 4 places
    "R-ESRGAN 4x+": [0.6631, 0.5699, 0.4948, 0.0380, 0.0463, 0.0661, 0.4128, 0.4242, 0.4507],
    "R-ESRGAN 4x+ Anime6B": [0.6848, 0.6192, 0.5372, 0.0062, 0.0089, 0.0215, 0.5265, 0.5416, 0.5650],
    "R-ESRGAN AnimeVideo": [0.6417, 0.6241, 0.5802, 0.0216, 0.0291, 0.0277, 0.4810, 0.5006, 0.5180],
}


@pytest.mark.parametrize("name", list(PINNED))
def test_shipped_real_esrgan_output_is_pinned_and_torch_conversion_matches_ncnn(name):
    info = find(name)
    ncnn = load(info, backend="ncnn")
    x = to_tensor(smooth())
    out = ncnn.run(x, tile=0)
    assert tuple(out.shape) == (1, 3, 96, 128)
    np.testing.assert_allclose(out[0, :, 40, 60:63].numpy().ravel(), PINNED[name], atol=2e-4)
    converted = load(info, backend="torch")  # the ncnn weights read into our RRDBNet / SRVGGNetCompact
    assert converted.backend == "torch"
    assert (converted.run(x, tile=0) - out).abs().max() < 1e-4


def test_ncnn_conversion_builds_the_real_architectures():
    rrdb = to_torch(*shipped_files("realesrgan-x4plus"))
    assert isinstance(rrdb, RRDBNet) and len(rrdb.body) == 23 and rrdb.scale == 4
    assert sum(p.numel() for p in rrdb.parameters()) == 16_697_987  # Real-ESRGAN x4plus's parameter count
    anime = to_torch(*shipped_files("realesrgan-x4plus-anime"))
    assert isinstance(anime, RRDBNet) and len(anime.body) == 6
    compact = to_torch(*shipped_files("realesr-animevideov3-x4"))
    assert isinstance(compact, SRVGGNetCompact) and compact.scale == 4 and len(compact.body) == 2 * 16 + 3


def test_aliases_listing_and_unknown_names():
    assert find("realesr-animevideov3").name == "R-ESRGAN AnimeVideo"
    assert find("r-esrgan 4x+").name == "R-ESRGAN 4x+"
    names = [info.name for info in list_upscalers()]
    assert names[:5] == ["None", "Lanczos", "Nearest", "Bicubic", "Bilinear"] and "R-ESRGAN 4x+" in names
    with pytest.raises(InvalidRequest, match="unknown upscaler 'SwinIR'"):
        find("SwinIR")
    with pytest.raises(InvalidRequest, match="unknown upscaler"):
        find("/etc/x.safetensors", paths=False)  # names from the network are never paths


# ----------------------------------------------------------------------------- tiling

def test_tile_starts_cover_with_overlap():
    assert tile_starts(100, 40, 8) == [0, 32, 60]
    assert tile_starts(40, 40, 8) == [0]


@pytest.mark.slow
def test_tiled_equals_untiled_on_a_smooth_image():
    image = to_tensor(smooth(96, 72))
    compact = load(find("R-ESRGAN AnimeVideo"))
    whole = compact.run(image, tile=0)
    tiled = compact.run(image, tile=40, overlap=8, pad=24)  # context beyond the network's receptive field
    assert (tiled - whole).abs().max() < 1e-4
    deep = load(find("R-ESRGAN 4x+"))  # a receptive field far larger than any tile: close, not exact
    picture = to_tensor(drawing(96, 72))
    whole, tiled = deep.run(picture, tile=0), deep.run(picture, tile=56, overlap=16, pad=32)
    assert (tiled - whole).abs().mean() < 2e-3 and (tiled - whole).abs().max() < 0.06


def test_run_tiled_with_rectangular_tiles_is_exact_for_a_pointwise_network():
    x = torch.rand(1, 3, 50, 70)
    double = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest") * 0.5  # noqa: E731
    assert torch.allclose(run_tiled(double, x, 2, (16, 24), 4), double(x), atol=1e-6)


# ----------------------------------------------------------------------------- user weights in real layouts

def _tiny_rrdb(scale: int = 4) -> RRDBNet:
    torch.manual_seed(0)
    return RRDBNet(3, 3, scale, num_feat=8, num_block=2, num_grow_ch=4).eval()


def _old_esrgan_keys(state: dict) -> dict:
    """basicsr names -> the original ESRGAN layout (model.0, model.1.sub.N.RDBk.convj.0, model.3 ...)."""
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    tail = {"conv_first": "model.0", "conv_body": f"model.1.sub.{blocks}", "conv_up1": "model.3",
            "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "body":
            out[f"model.1.sub.{parts[1]}.RDB{parts[2][-1]}.conv{parts[3][-1]}.0.{parts[4]}"] = value
        else:
            out[f"{tail[parts[0]]}.{parts[1]}"] = value
    return out


def test_user_weights_rrdbnet_srvgg_and_old_esrgan_layouts(tmp_path):
    x = torch.rand(1, 3, 12, 10)
    net = _tiny_rrdb()
    with torch.no_grad():
        expected = net(x)
    folder = upscalers_dir()
    folder.mkdir(parents=True)
    save_file(net.state_dict(), str(folder / "4x-tiny.safetensors"))
    save_file(_old_esrgan_keys(net.state_dict()), str(folder / "4x-tiny-old.safetensors"))
    torch.manual_seed(1)
    compact = SRVGGNetCompact(num_feat=8, num_conv=3, upscale=2).eval()
    save_file(compact.state_dict(), str(folder / "tiny-compact-x2.safetensors"))
    names = {info.name: info for info in list_upscalers()}
    assert names["4x-tiny"].kind == "file" and names["tiny-compact-x2"].scale == 2
    for name in ("4x-tiny", "4x-tiny-old"):
        upscaler = load(find(name))
        assert torch.allclose(upscaler.run(x, tile=0), expected.clamp(0, 1), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(load(find("tiny-compact-x2")).run(x, tile=0), compact(x).clamp(0, 1), atol=1e-6)
    x2 = _tiny_rrdb(scale=2)  # Real-ESRGAN x2: pixel-unshuffle first
    assert from_state_dict(x2.state_dict()).conv_first.in_channels == 12
    with pytest.raises(UnsupportedModel, match="not an ESRGAN"):
        from_state_dict({"weight": torch.zeros(3)})


def test_pth_upscaler_converts_only_with_allow_pickle(tmp_path, capsys):
    net = _tiny_rrdb()
    torch.save({"params_ema": net.state_dict()}, tmp_path / "RealESRGAN_tiny.pth")  # Real-ESRGAN's .pth shape
    assert main(["upscale", str(tmp_path / "in.png"), "--upscaler", str(tmp_path / "RealESRGAN_tiny.pth")]) == 2
    smooth(16, 12).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "--upscaler", str(tmp_path / "RealESRGAN_tiny.pth")]) == 2
    assert "sfumato convert" in capsys.readouterr().err
    target = upscalers_dir() / "RealESRGAN_tiny.safetensors"
    assert main(["convert", str(tmp_path / "RealESRGAN_tiny.pth"), str(target), "--allow-pickle"]) == 0
    assert main(["upscale", str(tmp_path / "in.png"), "--upscaler", "RealESRGAN_tiny", "-o",
                 str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (64, 48)


# ----------------------------------------------------------------------------- sizes, alpha, passes

def test_upscale_to_exact_size_alpha_kept_and_restoration_pass():
    compact = load(find("R-ESRGAN AnimeVideo"))
    rgba = smooth(20, 16).convert("RGBA")
    alpha = Image.new("L", (20, 16), 0)
    ImageDraw.Draw(alpha).ellipse((2, 2, 17, 13), fill=255)
    rgba.putalpha(alpha)
    out = upscale(rgba, compact, 50, 40)  # one 4x pass, then Lanczos down to the size asked
    assert out.mode == "RGBA" and out.size == (50, 40)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha.resize((50, 40), Image.Resampling.LANCZOS)))
    same = upscale(smooth(20, 16), compact, 20, 16)
    assert np.array_equal(np.asarray(same), np.asarray(smooth(20, 16)))  # no pass needed, none run
    restored = upscale(smooth(20, 16), compact, 20, 16, min_passes=1)
    assert not np.array_equal(np.asarray(restored), np.asarray(smooth(20, 16)))


def test_extras_sizes_follow_a1111():
    assert extras_sizes((100, 50), 2.5) == ((250, 125), (250, 125))
    assert extras_sizes((100, 50), 1, 64, 64, crop=True) == ((128, 64), (64, 64))  # cover, then crop the centre
    assert extras_sizes((100, 50), 1, 64, 64, crop=False) == ((64, 64), (64, 64))
    assert extras_sizes((100, 50), 1, 200, None) == ((200, 100), (200, 100))
    with pytest.raises(InvalidRequest, match="exceeds"):
        extras_sizes((4000, 4000), 4)


def test_engine_upscale_blends_a_second_upscaler_and_crops():
    engine = Engine()
    image = drawing(40, 30)
    out = engine.upscale(image, UpscaleRequest("Lanczos", width=64, height=64))
    assert out.size == (64, 64)
    lanczos = engine.upscale(image, UpscaleRequest("Lanczos", 2.0))
    nearest = engine.upscale(image, UpscaleRequest("Nearest", 2.0))
    half = engine.upscale(image, UpscaleRequest("Lanczos", 2.0, upscaler_2="Nearest", upscaler_2_visibility=0.5))
    assert np.array_equal(np.asarray(half), np.asarray(Image.blend(lanczos, nearest, 0.5)))
    with pytest.raises(InvalidRequest, match="tile_overlap"):
        engine.upscale(image, UpscaleRequest(tile=16, tile_overlap=16))


# ----------------------------------------------------------------------------- colourising

def test_colorize_keeps_lightness_within_rounding():
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    paint = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))  # many out-of-gamut pairs
    out = colorize_like(source, paint)
    lightness = lambda im: rgb_to_lab(np.asarray(im, dtype=np.float64) / 255)[..., 0] / 100  # noqa: E731
    assert np.abs(lightness(out) - lightness(source)).max() <= 1 / 255
    gray = np.asarray(grayscale(source), dtype=np.int16)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 1  # gray: no chroma left
    ab = rgb_to_lab(np.asarray(out, dtype=np.float64) / 255)[..., 1:]
    assert np.abs(ab).mean() > 10  # and the colours did arrive


# ----------------------------------------------------------------------------- the engine: hires, SD upscale, recipes

@needs_embedded
def test_hires_fix_with_real_esrgan(tmp_path):
    engine = Engine()
    base = dict(prompt="red apple", seed=4, steps=4, hires_scale=2.0, width=32, height=32)
    esrgan = engine.generate(GenerationRequest(**base, hires_upscaler="R-ESRGAN 4x+")).images[0]
    latent = engine.generate(GenerationRequest(**base)).images[0]
    assert esrgan.image.size == (64, 64)
    assert "Hires upscaler: R-ESRGAN 4x+" in esrgan.infotext
    assert not np.array_equal(np.asarray(esrgan.image), np.asarray(latent.image))
    legacy = engine.resolve(GenerationRequest(**base, hires_upscaler="lanczos"))
    assert legacy.hires_upscaler == "Lanczos"  # old requests keep working, with the registry's spelling
    with pytest.raises(InvalidRequest, match="unknown upscaler"):
        engine.resolve(GenerationRequest(**base, hires_upscaler="SwinIR_4x"))


@needs_embedded
def test_sd_upscale_generated_and_init_image(tmp_path):
    engine = Engine()
    result = engine.generate(GenerationRequest("red apple", seed=2, steps=4, sd_upscale=2.0, width=32, height=32,
                                               sd_upscale_upscaler="R-ESRGAN AnimeVideo", sd_upscale_overlap=8))
    image = result.images[0]
    assert image.image.size == (64, 64)
    assert "SD upscale overlap: 8, SD upscale upscaler: R-ESRGAN AnimeVideo, SD upscale: 2" in image.infotext
    drawing(32, 32).save(tmp_path / "init.png")
    plain = engine.upscale(drawing(32, 32), UpscaleRequest("R-ESRGAN AnimeVideo", 2.0))
    edited = engine.generate(GenerationRequest("red apple", seed=2, steps=4, init_image=str(tmp_path / "init.png"),
                                               sd_upscale=2.0, sd_upscale_upscaler="R-ESRGAN AnimeVideo",
                                               sd_upscale_strength=0.3)).images[0].image
    difference = np.abs(np.asarray(edited, np.int16) - np.asarray(plain, np.int16)).mean()
    assert edited.size == (64, 64) and 0 < difference < 40  # refined, not replaced
    with pytest.raises(InvalidRequest, match="SD upscale does not combine"):
        GenerationRequest("x", sd_upscale=2.0, hires_scale=2.0).validate()


@needs_embedded
def test_recipes_colorize_restore_style(tmp_path):
    engine = Engine()
    photo = engine.generate(GenerationRequest("a large red apple", seed=7, steps=4, width=32, height=32)).images[0].image
    gray = grayscale(photo)
    gray.save(tmp_path / "gray.png")
    photo.save(tmp_path / "photo.png")
    colored = engine.generate(engine.recipe("colorize", str(tmp_path / "gray.png"), prompt="red apple", seed=1,
                                            steps=4)).images[0]
    lightness = lambda im: rgb_to_lab(np.asarray(im, dtype=np.float64) / 255)[..., 0] / 100  # noqa: E731
    assert np.abs(lightness(colored.image) - lightness(gray)).max() <= 1 / 255
    assert "Colorize: True" in colored.infotext and "Denoising strength: 0.6" in colored.infotext
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).line((0, 16, 32, 16), fill=255, width=3)  # a scratch
    mask.save(tmp_path / "scratch.png")
    restored = engine.generate(engine.recipe("restore", str(tmp_path / "photo.png"), prompt="red apple",
                                             mask=str(tmp_path / "scratch.png"), seed=1, steps=4)).images[0]
    assert "Init upscaler: R-ESRGAN 4x+" in restored.infotext
    # outside the (blurred) scratch mask: the photo as Real-ESRGAN restored it; inside: repainted
    cleaned = upscale(photo, engine.upscaler("R-ESRGAN 4x+"), 32, 32, min_passes=1)
    out, kept = np.asarray(restored.image, np.int16), np.asarray(cleaned, np.int16)
    assert np.array_equal(out[:3], kept[:3]) and np.abs(out[14:18] - kept[14:18]).max() > 8
    styled = engine.generate(engine.recipe("style", str(tmp_path / "photo.png"), prompt="green apple", seed=1,
                                           steps=4)).images[0]
    assert 'ControlNet 0: "Module: canny, Model: sfumato-scenes-canny, Weight: 0.8' in styled.infotext


@pytest.mark.slow
@needs_embedded
def test_cli_upscale_recipes_and_sd_upscale_replay(tmp_path, capsys):
    drawing(24, 16).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "up.png"), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)[0]
    assert entry["size"] == [96, 64]
    with Image.open(tmp_path / "up.png") as image:
        assert image.text["parameters"] == "Postprocess upscale by: 4, Postprocess upscaler: R-ESRGAN 4x+"
    assert main(["info", str(tmp_path / "up.png")]) == 0
    assert "Postprocess upscaler: R-ESRGAN 4x+" in capsys.readouterr().out
    assert main(["replay", str(tmp_path / "up.png"), "-o", str(tmp_path / "r.png")]) == 2  # nothing to replay
    assert main(["generate", "red apple", "--steps", "2", "--seed", "5", "-o", str(tmp_path / "g.png")]) == 0
    assert main(["upscale", str(tmp_path / "g.png"), "--upscaler", "Lanczos", "-o", str(tmp_path / "g4.png")]) == 0
    with Image.open(tmp_path / "g4.png") as image:  # A1111 Extras: the generation's text, then the postprocessing
        assert image.text["parameters"].startswith("red apple\nSteps: 2, ")
        assert image.text["parameters"].endswith(", Postprocess upscale by: 4, Postprocess upscaler: Lanczos")
    assert main(["upscale", str(tmp_path / "in.png"), "--upscaler", "nope"]) == 2
    assert main(["upscale", str(tmp_path / "missing.png")]) == 2
    assert main(["upscalers"]) == 0 and "R-ESRGAN 4x+ Anime6B" in capsys.readouterr().out
    out = tmp_path / "sd.png"
    assert main(["generate", "red apple", "--seed", "3", "--steps", "3", "--sd-upscale", "2", "--sd-upscale-upscaler",
                 "R-ESRGAN AnimeVideo", "-o", str(out)]) == 0
    assert main(["replay", str(out), "-o", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "again.png")))
    for recipe in ("colorize", "restore", "style"):
        assert main([recipe, str(tmp_path / "in.png"), "-p", "red apple", "--steps", "3", "-W", "32", "-H", "32",
                     "-o", str(tmp_path / f"{recipe}.png")]) == 0
        assert Image.open(tmp_path / f"{recipe}.png").size == (32, 32)


def test_inpaint_fill_paints_the_hole_from_its_surroundings():
    from sfumato.pipelines.images import fill_masked

    image = Image.new("RGB", (32, 32), (200, 40, 40))
    ImageDraw.Draw(image).line((0, 16, 32, 16), fill=(255, 255, 255), width=2)  # a white scratch
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).line((0, 16, 32, 16), fill=255, width=4)
    filled = np.asarray(fill_masked(image, mask), np.int16)
    assert np.abs(filled[16] - [200, 40, 40]).max() <= 2  # the scratch is gone
    assert np.array_equal(filled[:10], np.asarray(image, np.int16)[:10])  # nothing else changed
    with pytest.raises(InvalidRequest, match="inpaint_fill"):
        GenerationRequest("x", inpaint_fill="latent noise").validate()
