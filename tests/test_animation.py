"""Animation: keyframes, travel planning, frames equal to single generations, loopback, video files, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sfumato.animation import AnimationRequest
from sfumato.animation.keyframes import parse_numbers, parse_prompts, segment, value_at
from sfumato.animation.motion2d import match_colors, move
from sfumato.animation.run import animate, travel_requests
from sfumato.animation.video import read_frames, save_animation, write_video
from sfumato.errors import InvalidRequest
from sfumato.evaluation.metrics import flicker, temporal_report
from sfumato.requests import GenerationRequest


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------ keyframes and schedules

def test_prompt_keyframes_in_deforum_syntax():
    text = '0: "a red apple", 12: "a (green:1.2) apple, \\"shiny\\"",\n24: "a pear"'
    assert parse_prompts(text) == {0: "a red apple", 12: 'a (green:1.2) apple, "shiny"', 24: "a pear"}
    assert parse_prompts("0: a cat\n8: a dog") == {0: "a cat", 8: "a dog"}
    assert parse_prompts({"10": "b", "0": "a"}) == {0: "a", 10: "b"}
    for bad in ('0: "open', 'x: "a"', '0: "a" 5: "b"', {"-1": "a"}, {"1.5": "a"}, 3):
        with pytest.raises(InvalidRequest):
            parse_prompts(bad)


def test_number_schedules_interpolate_linearly_and_hold_at_the_ends():
    keys = parse_numbers("0:(0.6), 10:(0.4), 20: 1e-1", "strength")
    assert keys == {0: 0.6, 10: 0.4, 20: 0.1}
    assert value_at(keys, 5) == pytest.approx(0.5) and value_at(keys, 15) == pytest.approx(0.25)
    assert value_at(keys, 30) == pytest.approx(0.1) and value_at(parse_numbers(0.3, "s"), 99) == 0.3
    assert parse_numbers("1.02", "zoom") == {0: 1.02}
    assert segment([4, 8], 0) == (4, 4, 0.0) and segment([4, 8], 6) == (4, 8, 0.5) and segment([4, 8], 8) == (8, 8, 0)
    for bad in ("0:(0.5), 9:zz", True, "", [1]):
        with pytest.raises(InvalidRequest):
            parse_numbers(bad, "strength")
    with pytest.raises(InvalidRequest, match="longer than 64000"):
        parse_numbers("0:(0.5), " * 8000, "strength")


def test_animation_request_checks_each_mode():
    base = GenerationRequest("a cat")
    with pytest.raises(InvalidRequest, match="mode must be"):
        AnimationRequest(base, mode="dance").validate()
    with pytest.raises(InvalidRequest, match="two images"):
        AnimationRequest(base, mode="interpolate", images=["a.png"]).validate()
    with pytest.raises(InvalidRequest, match="scene prompts"):
        AnimationRequest(base, mode="story").validate()
    with pytest.raises(InvalidRequest, match="seed keyframes are for travel"):
        AnimationRequest(base, mode="loopback", seeds={0: 1}).validate()
    with pytest.raises(InvalidRequest, match="formats"):
        AnimationRequest(base, formats=["avi"]).validate()
    with pytest.raises(InvalidRequest, match="unknown animation field"):
        AnimationRequest.from_dict({"frames": 3, "speed": 2})
    story = AnimationRequest(base, mode="story", scenes=["a", "b", "c"]).validate()
    assert story.frames == 3
    data = AnimationRequest(base, prompts='0: "a", 4: "b"', seeds="0:(1), 4:(2)").validate().to_dict()
    again = AnimationRequest.from_dict(json.loads(json.dumps(data))).validate()
    assert again.prompts == {0: "a", 4: "b"} and again.seeds == {0: 1, 4: 2} and again.generation.prompt == "a cat"


def test_travel_plan_keyframes_directions_seeds_and_loop():
    base = GenerationRequest("unused", seed=5, directions=[("a smiling cat", "a cat", 0.5)])
    request = AnimationRequest(base, frames=8, prompts={0: "a", 4: "b"}, seeds={0: 10, 2: 20}, loop=True,
                               direction_strength="0:(0), 4:(1)").validate()
    frames = travel_requests(request, base)
    assert [f.prompt for f in frames] == ["a"] * 4 + ["b"] * 4
    assert frames[0].directions == [("a smiling cat", "a cat", 0.0)]  # scaled by the sweep
    assert frames[2].directions == [("a smiling cat", "a cat", 0.25), ("b", "a", 0.5)]
    assert frames[4].directions == [("a smiling cat", "a cat", 0.5)]  # a keyframe: its prompt alone
    assert frames[6].directions[-1] == ("a", "b", 0.5)  # the loop heads back to frame 0's prompt at frame 8
    assert (frames[0].seed, frames[0].subseed_strength) == (10, 0.0)
    assert (frames[1].seed, frames[1].subseed, frames[1].subseed_strength) == (10, 20, 0.5)
    assert (frames[2].seed, frames[2].subseed_strength) == (20, 0.0)
    assert (frames[5].seed, frames[5].subseed, frames[5].subseed_strength) == (20, 10, 0.5)


# ------------------------------------------------------------------ frames through the engine (tiny SD1)

def test_prompt_travel_keyframes_equal_single_generations(engine_sd1, monkeypatch):
    """Travel frames (own prompt, direction and noise each) run as one batch; every frame is the image its request
    gives alone, up to float rounding (1/255)."""
    settings = dict(seed=3, steps=3, sampler="Euler", width=64, height=64)
    request = AnimationRequest(GenerationRequest("", **settings), frames=5,
                               prompts={0: "a red apple", 4: "a green apple"}, formats=[])
    batches = []
    together = type(engine_sd1)._generate_together
    monkeypatch.setattr(type(engine_sd1), "_generate_together",
                        lambda self, jobs, *a: batches.append(len(jobs)) or together(self, jobs, *a))
    result = animate(engine_sd1, request)
    assert batches == [5]
    red = engine_sd1.generate(GenerationRequest("a red apple", **settings)).images[0].image
    green = engine_sd1.generate(GenerationRequest("a green apple", **settings)).images[0].image
    frames = [pixels(f.image) for f in result.frames]
    assert np.abs(frames[0] - pixels(red)).max() <= 1 and np.abs(frames[4] - pixels(green)).max() <= 1
    for frame, image in zip(result.frames, frames):
        alone = pixels(engine_sd1.generate(frame.request).images[0].image)
        assert np.abs(image - alone).max() <= 1
    middle = frames[2]
    assert not np.array_equal(middle, frames[0]) and not np.array_equal(middle, frames[4])
    assert result.frames[2].request.directions == [("a green apple", "a red apple", 0.5)]
    assert "Animation: travel frame 3/5" in result.frames[2].infotext
    assert set(result.metrics) >= {"temporal_ssim", "temporal_ssim_worst", "worst_pair", "flicker"}


def test_a_full_direction_reaches_the_other_prompt(engine_sd1):
    settings = dict(seed=4, steps=3, sampler="Euler", width=64, height=64, cfg_scale=5.0)
    moved = engine_sd1.generate(GenerationRequest("a red apple", directions=[("a green apple", "a red apple", 1.0)],
                                                  **settings)).images[0]
    green = engine_sd1.generate(GenerationRequest("a green apple", **settings)).images[0]
    assert np.abs(pixels(moved.image) - pixels(green.image)).max() <= 1  # equal up to float rounding
    assert 'Directions: "+1 (a green apple) - (a red apple)"' in moved.infotext
    with pytest.raises(InvalidRequest, match="plain text"):
        engine_sd1.resolve(GenerationRequest("a", directions=[("b AND c", "a", 1.0)]))


def test_seed_travel_ends_are_the_two_seeds_images(engine_sd1):
    settings = dict(prompt="a boat", steps=3, sampler="Euler", width=64, height=64)
    result = animate(engine_sd1, AnimationRequest(GenerationRequest(**settings), frames=4, seeds={0: 11, 3: 22},
                                                 formats=[]))
    first = engine_sd1.generate(GenerationRequest(seed=11, **settings)).images[0].image
    last = engine_sd1.generate(GenerationRequest(seed=22, **settings)).images[0].image
    # the frames ran as one batch: equal to the single images up to float rounding
    assert np.abs(pixels(result.frames[0].image) - pixels(first)).max() <= 1
    assert np.abs(pixels(result.frames[3].image) - pixels(last)).max() <= 1
    middle = engine_sd1.generate(result.frames[1].request).images[0].image  # its own subseed strength (1/3)
    assert result.frames[1].request.subseed_strength > 0
    assert np.abs(pixels(result.frames[1].image) - pixels(middle)).max() <= 1
    # between keyframes the noise is slerped: at strength 1 the variation seed's noise is the other seed's
    full = engine_sd1.generate(GenerationRequest(seed=11, subseed=22, subseed_strength=1.0, **settings)).images[0]
    assert np.abs(pixels(full.image) - pixels(last)).max() <= 1


def test_loopback_at_strength_zero_returns_the_input(engine_sd1, tmp_path):
    start = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    start.save(tmp_path / "start.png")
    request = AnimationRequest(GenerationRequest("a cat", steps=2), mode="loopback", frames=3, strength=0.0,
                               init_image=str(tmp_path / "start.png"), formats=[])
    result = animate(engine_sd1, request)
    assert len(result.frames) == 3 and all(np.array_equal(pixels(f.image), pixels(start)) for f in result.frames)
    assert result.metrics["flicker"] == 0.0 and result.metrics["temporal_ssim"] == pytest.approx(1.0)


def test_loopback_moves_and_regenerates(engine_sd1):
    request = AnimationRequest(GenerationRequest("a cat", steps=4, width=64, height=64, seed=1), mode="loopback",
                               frames=3, strength="1:(0.5), 2:(0.25)", zoom=1.1, formats=[])
    result = animate(engine_sd1, request)
    assert [f.seed for f in result.frames] == [1, 2, 3]  # seed behaviour "iter"
    assert result.frames[1].request.strength == 0.5 and result.frames[2].request.strength == 0.25
    assert result.frames[2].request.init_image is not None and result.frames[0].request.init_image is None


def test_video_to_video_keeps_frame_count_and_size(engine_sd1, tmp_path):
    inputs = [Image.new("RGB", (64, 48), (40 * k, 90, 200 - 40 * k)) for k in range(3)]
    write_video(inputs, tmp_path / "clip.mp4", fps=6)
    request = AnimationRequest(GenerationRequest("a painting", steps=2, seed=9), mode="video",
                               video=str(tmp_path / "clip.mp4"), strength=0.5, formats=["mp4"])
    result = animate(engine_sd1, request)
    assert len(result.frames) == 3 and {f.image.size for f in result.frames} == {(64, 48)}
    assert {f.seed for f in result.frames} == {9}
    saved = save_animation(result, tmp_path / "out")
    back = read_frames(saved["videos"]["mp4"])
    assert len(back) == 3 and back[0].size == (64, 48)


def test_story_frames_report_subject_consistency(engine_sd1):
    request = AnimationRequest(GenerationRequest("", steps=2, width=64, height=64, seed=2), mode="story",
                               subject="a robot", scenes=["in a forest", "at sea"], formats=[])
    result = animate(engine_sd1, request)
    assert [f.request.prompt for f in result.frames] == ["a robot, in a forest", "a robot, at sea"]
    assert {f.seed for f in result.frames} == {2}
    assert -1.0 <= result.metrics["subject_consistency"] <= 1.0
    assert result.metrics["subject_consistency_extractor"] == "open-nsfw-resnet50-pool1024"


# ------------------------------------------------------------------ 2D motion, colours, files, metrics

def test_motion_and_colour_coherence():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert move(image) is image
    assert np.array_equal(pixels(match_colors(image, image)), pixels(image))
    shifted = move(image, dx=4)
    assert np.array_equal(pixels(shifted)[:, 8:], pixels(image)[:, 4:-4])
    darker = image.point(lambda v: v // 2)
    matched = pixels(match_colors(darker, image))
    assert abs(matched.mean() - pixels(image).mean()) < 2.0 and abs(pixels(darker).mean() - pixels(image).mean()) > 50
    zoomed = move(Image.fromarray(np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 1, 3))), zoom=2.0)
    assert pixels(zoomed)[16, 0, 0] == pytest.approx(64, abs=6)  # the left edge now shows column 8


@pytest.mark.parametrize("kind", ["gif", "webp", "mp4"])
def test_video_files_round_trip_frame_count_and_size(tmp_path, kind):
    frames = [Image.new("RGB", (40, 24), (25 * k, 100, 255 - 25 * k)) for k in range(6)]
    path = write_video(frames, tmp_path / f"clip.{kind}", fps=12)
    back = read_frames(path)
    assert len(back) == 6 and back[0].size == (40, 24)
    tolerance = {"gif": 8, "webp": 0, "mp4": 6}[kind]
    assert np.abs(pixels(back[3]) - pixels(frames[3])).mean() <= tolerance
    assert len(read_frames(path, limit=2)) == 2


def test_temporal_metrics_on_synthetic_sequences():
    still = [Image.new("RGB", (32, 32), (120, 120, 120))] * 4
    report = temporal_report(still)
    assert report["temporal_ssim"] == pytest.approx(1.0) and report["flicker"] == 0.0
    ramp = [Image.new("L", (32, 32), 100 + 10 * k).convert("RGB") for k in range(5)]
    assert flicker(ramp) == pytest.approx(10 / 255)
    rng = np.random.default_rng(0)
    noisy = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    report = temporal_report([still[0], still[0], noisy[0], noisy[0]])
    assert report["worst_pair"] == 1 and report["temporal_ssim_worst"] < 0.1
    assert report["temporal_ssim"] == pytest.approx((2 + report["temporal_ssim_worst"]) / 3)


def test_cli_animate_writes_videos_frames_and_metrics(sd1, tmp_path, capsys):
    from sfumato.cli import main

    out = tmp_path / "anim"
    code = main(["animate", "--model", str(sd1), "--keyframes", '0: "a cat", 2: "a dog"', "--frames", "3",
                 "--steps", "2", "--seed", "5", "-W", "64", "-H", "64", "--format", "gif,webp,mp4", "-o", str(out),
                 "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(printed["videos"]) == ["gif", "mp4", "webp"] and len(printed["frames"]) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 3 and 0 <= metrics["flicker"] <= 1
    assert len(read_frames(out / "animation.gif")) == 3
    # a frame replays exactly from its PNG (the direction is part of its request)
    assert main(["replay", str(out / "frames" / "00001.png"), "-o", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(pixels(Image.open(tmp_path / "again.png")), pixels(Image.open(out / "frames" / "00001.png")))


def test_cli_animate_output_named_like_a_video_is_that_file(sd1, tmp_path, capsys):
    """`-o loop.gif` writes loop.gif (and the other formats beside it), frames and metrics in loop.frames/."""
    from sfumato.cli import main

    out = tmp_path / "loop.gif"
    assert main(["animate", "--model", str(sd1), "--keyframes", '0: "a cat", 1: "a dog"', "--frames", "2", "--steps",
                 "1", "--seed", "5", "-W", "64", "-H", "64", "--format", "mp4", "-o", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert out.is_file() and len(read_frames(out)) == 2
    assert (tmp_path / "loop.mp4").is_file() and str(out) in printed  # the named format is added to --format
    assert sorted(p.name for p in (tmp_path / "loop.frames" / "frames").iterdir()) == ["00000.png", "00001.png"]
    assert json.loads((tmp_path / "loop.frames" / "metrics.json").read_text())["frames"] == 2
    (tmp_path / "dir.webp").mkdir()
    assert main(["animate", "--model", str(sd1), "a cat", "--frames", "2", "-o", str(tmp_path / "dir.webp")]) == 2
    assert "is a folder" in capsys.readouterr().err


# ------------------------------------------------------------------ AnimateDiff and interpolation

@pytest.fixture(scope="module")
def motion_files(tmp_path_factory):
    from sfumato.models.tiny import build_tiny_motion_adapter

    folder = tmp_path_factory.mktemp("motion")
    return {"folder": build_tiny_motion_adapter(folder / "tiny-motion"),
            "file": build_tiny_motion_adapter(folder / "tiny-motion.safetensors", single_file=True)}


def _motion(engine, adapter, sampler="DDIM", frames=6, **extra):
    base = GenerationRequest("a boat", seed=5, steps=3, sampler=sampler, width=64, height=64, cfg_scale=5.0)
    return AnimationRequest(base, mode="motion", motion_adapter=str(adapter), frames=frames, formats=[],
                            **extra).validate(), base


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["DDIM", "Euler a"])
def test_animatediff_matches_diffusers_pipeline(engine_sd1, motion_files, sampler):
    import torch
    from diffusers import AnimateDiffPipeline, MotionAdapter

    from sfumato.animation.animatediff import motion_latents
    from sfumato.sampling.samplers import make_scheduler

    request, base = _motion(engine_sd1, motion_files["folder"], sampler)
    ours, _ = motion_latents(engine_sd1, request, base)
    model = engine_sd1.load()
    pipe = AnimateDiffPipeline(vae=model.pipe.vae, text_encoder=model.pipe.text_encoder, tokenizer=model.pipe.tokenizer,
                               unet=model.pipe.unet, motion_adapter=MotionAdapter.from_pretrained(
                                   str(motion_files["folder"])), feature_extractor=None,
                               scheduler=make_scheduler(sampler, model.scheduler_config, 5))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a boat", num_frames=6, height=64, width=64, num_inference_steps=3, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(5), output_type="latent").frames
    assert ours.shape == (1, 4, 6, 32, 32)
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_animatediff_single_file_windows_and_motion_lora(engine_sd1, motion_files, tmp_path):
    import torch
    from safetensors.torch import save_file

    from sfumato.animation.animatediff import load_motion_adapter, merge_motion_loras, motion_latents, windows

    folder, single = load_motion_adapter(motion_files["folder"]), load_motion_adapter(motion_files["file"])
    assert all(torch.equal(a, b) for a, b in zip(folder.state_dict().values(), single.state_dict().values()))
    assert windows(6, 16, 4) == [0] and windows(20, 8, 2) == [0, 6, 12] and windows(10, 4, 1) == [0, 3, 6]

    request, base = _motion(engine_sd1, motion_files["file"], frames=6)
    whole, _ = motion_latents(engine_sd1, request, base)
    windowed, _ = motion_latents(engine_sd1, _motion(engine_sd1, motion_files["file"], frames=6, context_length=4,
                                                     context_overlap=2)[0], base)
    assert whole.shape == windowed.shape and 1e-3 < (whole - windowed).abs().max() < 10

    prefix = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor."
    down, up = torch.randn(2, 32), torch.randn(32, 2)
    save_file({prefix + "to_q_lora.down.weight": down, prefix + "to_q_lora.up.weight": up},
              str(tmp_path / "zoom.safetensors"))
    before = folder.down_blocks[0].motion_modules[0].transformer_blocks[0].attn1.to_q.weight.clone()
    merge_motion_loras(folder, [(tmp_path / "zoom.safetensors", 0.5)])
    after = folder.down_blocks[0].motion_modules[0].transformer_blocks[0].attn1.to_q.weight
    assert torch.allclose(after, before + 0.5 * up @ down, atol=1e-6)
    with_lora, _ = motion_latents(engine_sd1, _motion(engine_sd1, motion_files["file"], frames=6, motion_loras=[
        (str(tmp_path / "zoom.safetensors"), 1.0)])[0], base)
    assert (with_lora - whole).abs().max() > 1e-4
    save_file({"text_model.weight": torch.zeros(2, 2)}, str(tmp_path / "image-lora.safetensors"))
    with pytest.raises(Exception, match="no motion LoRA"):
        merge_motion_loras(folder, [(tmp_path / "image-lora.safetensors", 1.0)])


def test_cli_animatediff_writes_a_clip(sd1, motion_files, tmp_path):
    from sfumato.cli import main

    out = tmp_path / "clip"
    assert main(["animate", "a boat", "--mode", "motion", "--motion-adapter", str(motion_files["folder"]),
                 "--model", str(sd1), "--frames", "5", "--steps", "2", "-W", "64", "-H", "64", "-o", str(out),
                 "--format", "gif"]) == 0
    assert len(read_frames(out / "animation.gif")) == 5
    assert "Motion module: tiny-motion" in Image.open(out / "frames" / "00000.png").text["parameters"]


@pytest.mark.skipif(__import__("sfumato.models.embedded", fromlist=["x"]).embedded_model("sfumato-emoji") is None,
                    reason="sfumato-emoji is not in this checkout")
@pytest.mark.slow
def test_interpolation_between_two_images_reconstructs_the_ends(tmp_path):
    from sfumato.engine import Engine
    from sfumato.evaluation.metrics import psnr

    engine = Engine(model="sfumato-emoji")  # where the dB were measured
    for name, prompt, seed in (("a", "a red apple", 1), ("b", "a cat face", 2)):
        engine.generate(GenerationRequest(prompt, seed=seed)).images[0].image.save(tmp_path / f"{name}.png")
    request = AnimationRequest(GenerationRequest("an emoji", seed=0), mode="interpolate", frames=3,
                               images=[str(tmp_path / "a.png"), str(tmp_path / "b.png")], formats=[])
    result = animate(engine, request)
    ends = [psnr(result.frames[0].image, Image.open(tmp_path / "a.png")),
            psnr(result.frames[-1].image, Image.open(tmp_path / "b.png"))]
    middle = max(psnr(result.frames[1].image, Image.open(tmp_path / f"{n}.png")) for n in "ab")
    assert min(ends) > 27 and middle < 20, (ends, middle)  # measured: 29.7 and 32.3 dB at 50 inversion steps
    assert "Interpolation: 0.5" in result.frames[1].infotext


@pytest.mark.slow
def test_animatediff_on_sdxl_shares_the_added_conditioning(sdxl, tmp_path):
    import torch
    from diffusers import AnimateDiffSDXLPipeline, MotionAdapter

    from sfumato.animation.animatediff import motion_latents
    from sfumato.engine import Engine
    from sfumato.models.tiny import build_tiny_motion_adapter
    from sfumato.sampling.samplers import make_scheduler

    adapter = build_tiny_motion_adapter(tmp_path / "xl-motion", sdxl=True)
    engine = Engine(sdxl)
    base = GenerationRequest("a boat", seed=5, steps=3, sampler="DDIM", width=64, height=64, cfg_scale=5.0)
    request = AnimationRequest(base, mode="motion", motion_adapter=str(adapter), frames=4, formats=[]).validate()
    ours, _ = motion_latents(engine, request, base)
    model = engine.load()
    pipe = AnimateDiffSDXLPipeline(**{k: getattr(model.pipe, k) for k in ("vae", "text_encoder", "text_encoder_2",
                                                                          "tokenizer", "tokenizer_2", "unet")},
                                   motion_adapter=MotionAdapter.from_pretrained(str(adapter)),
                                   scheduler=make_scheduler("DDIM", model.scheduler_config, 5))
    pipe.set_progress_bar_config(disable=True)
    generate = dict(prompt="a boat", num_frames=4, height=64, width=64, num_inference_steps=3, guidance_scale=5.0,
                    output_type="latent")
    unfixed = pipe(**generate, generator=torch.Generator().manual_seed(5)).frames
    pipe.unet.add_embedding.load_state_dict(model.pipe.unet.add_embedding.state_dict())  # what from_unet2d misses
    fixed = pipe(**generate, generator=torch.Generator().manual_seed(5)).frames
    assert ours.shape == (1, 4, 4, 32, 32)
    assert (ours - fixed).abs().max().item() <= 1e-4
    assert (ours - unfixed).abs().max().item() > 1e-3
    MotionAdapter(block_out_channels=(32, 64, 64), motion_layers_per_block=2, motion_num_attention_heads=2,
                  motion_norm_num_groups=32).save_pretrained(str(tmp_path / "three-levels"))
    with pytest.raises(Exception, match="3 levels, the model's UNet 2"):  # an SD 1.5 module on SDXL, in small
        motion_latents(engine, AnimationRequest(base, mode="motion", motion_adapter=str(tmp_path / "three-levels"),
                                                frames=2, formats=[]).validate(), base)


@pytest.mark.slow
def test_animatediff_prompt_travel_inside_one_clip(engine_sd1, motion_files):
    from sfumato.animation.animatediff import motion_latents

    request, base = _motion(engine_sd1, motion_files["folder"], frames=6)
    plain, _ = motion_latents(engine_sd1, request, base)
    one_key, _ = motion_latents(engine_sd1, _motion(engine_sd1, motion_files["folder"], frames=6,
                                                    prompts={0: "a boat"})[0], base)
    assert torch_equal(plain, one_key)  # a single keyframe is the plain clip
    travel, _ = motion_latents(engine_sd1, _motion(engine_sd1, motion_files["folder"], frames=6,
                                                   prompts={0: "a boat", 5: "a red car"})[0], base)
    assert (travel - plain).abs().max() > 1e-3
    with pytest.raises(InvalidRequest, match="plain prompts"):
        motion_latents(engine_sd1, _motion(engine_sd1, motion_files["folder"], frames=2,
                                           prompts={0: "a AND b"})[0], base)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)
