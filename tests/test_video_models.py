"""Video families (Wan text- and image-to-video, LTX-Video, Stable Video Diffusion) from tiny random-weight diffusers
folders: `sfumato animate --mode video-model` equals the plain pipelines frame by frame given the same generator,
writes MP4/GIF, frames and metrics, and refuses what a video model does not do in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.animation.request import AnimationRequest
from sfumato.animation.run import animate
from sfumato.cli import main
from sfumato.engine import Engine
from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.models.detect import describe
from sfumato.models.tiny import build_tiny
from sfumato.requests import GenerationRequest

CASES = {  # tiny model -> (family, prompt, first frame?)
    "wan": ("wan", "a cat walks on grass", False),
    "wan-i2v": ("wan", "a cat walks on grass", True),
    "ltx-video": ("ltx-video", "a cat walks on grass", False),
    "ltx-video+image": ("ltx-video", "a cat walks on grass", True),
    "svd": ("svd", "", True),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    return {name: build_tiny(name, root / name) for name in ("wan", "wan-i2v", "ltx-video", "svd")}


@pytest.fixture(scope="module")
def first_frame(tmp_path_factory):
    path = tmp_path_factory.mktemp("frame") / "first.png"
    picture = Image.new("RGB", (32, 32), (200, 40, 40))
    picture.paste((30, 90, 200), (0, 16, 32, 32))
    picture.save(path)
    return path


def _theirs(folder, family: str, prompt: str, image, frames: int, seed: int, cfg: float) -> list[np.ndarray]:
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    inputs = dict(height=32, width=32, num_frames=frames, num_inference_steps=2, output_type="pil",
                  generator=torch.Generator().manual_seed(seed))
    if image is not None:
        if family == "ltx-video":
            pipe = diffusers.LTXImageToVideoPipeline.from_pipe(pipe)
            pipe.set_progress_bar_config(disable=True)
        inputs["image"] = image
    if family == "svd":
        inputs.update(min_guidance_scale=1.0, max_guidance_scale=cfg, fps=8, decode_chunk_size=8)
    else:
        inputs.update(prompt=prompt, negative_prompt="", guidance_scale=cfg)
    return [np.asarray(frame, dtype=np.int16) for frame in pipe(**inputs).frames[0]]


@pytest.mark.parametrize("case", list(CASES))
def test_video_model_clips_equal_the_diffusers_pipelines(case, folders, first_frame):
    family, prompt, with_image = CASES[case]
    folder = folders[case.split("+")[0]]
    assert describe(folder).family.name == family
    engine = Engine(folder)
    request = AnimationRequest(GenerationRequest(prompt, steps=2, width=32, height=32, seed=7, cfg_scale=3.0),
                               mode="video-model", frames=9, fps=8,
                               images=[str(first_frame)] if with_image else [])
    result = animate(engine, request)
    ours = [np.asarray(frame.image, dtype=np.int16) for frame in result.frames]
    image = Image.open(first_frame).convert("RGB") if with_image else None
    theirs = _theirs(folder, family, prompt, image, 9, 7, 3.0)
    assert len(ours) == len(theirs) == 9 and ours[0].shape == (32, 32, 3)
    assert max(np.abs(a - b).max() for a, b in zip(ours, theirs)) <= 1
    assert np.std(np.stack(ours)) > 2 and max(np.abs(ours[0] - f).mean() for f in ours[1:]) > 0.5  # frames move
    assert {"temporal_ssim", "flicker"} <= set(result.metrics)
    assert f"Video model: {family}, Frames: 9" in result.frames[0].infotext and "Seed: 7" in result.frames[0].infotext


def test_cli_writes_mp4_gif_frames_and_metrics_and_refuses_in_one_line(folders, first_frame, tmp_path, capsys):
    out = tmp_path / "clip.gif"
    code = main(["animate", "a cat walks", "--mode", "video-model", "-m", str(folders["wan"]), "--frames", "5",
                 "--width", "32", "--height", "32", "--steps", "2", "--seed", "1", "-o", str(out)])
    assert code == 0
    assert out.exists() and out.with_suffix(".mp4").exists()
    metrics = json.loads((tmp_path / "clip.frames" / "metrics.json").read_text())
    assert metrics["frames"] == 5 and "temporal_ssim" in metrics
    assert len(list((tmp_path / "clip.frames" / "frames").glob("*.png"))) == 5
    capsys.readouterr()
    for argv, message in (
            (["--frames", "8"], "wan makes 1 + a multiple of 4 frames: try 5 or 9"),
            (["--image", str(first_frame)], "text-to-video; animating an image needs its image-to-video"),
            (["--sampler", "Euler"], "runs its own scheduler"),
            (["--width", "40"], "multiples of 16 px")):
        assert main(["animate", "a cat", "--mode", "video-model", "-m", str(folders["wan"]), "--width", "32",
                     "--height", "32", "--frames", "5", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert main(["animate", "--mode", "video-model", "-m", str(folders["svd"]), "--frames", "5"]) == 2
    assert "animates an image (image-to-video): give its first frame (--image" in capsys.readouterr().err


def test_a_video_model_refuses_image_requests_and_image_models_refuse_video_mode(folders, sd1):
    with pytest.raises(UnsupportedModel, match="is a wan video model: make clips with `sfumato animate --mode "
                                               "video-model`"):
        Engine(folders["wan"]).generate(GenerationRequest("a cat", steps=2, width=32, height=32))
    request = AnimationRequest(GenerationRequest("a cat", steps=2, width=32, height=32), mode="video-model", frames=5)
    with pytest.raises(UnsupportedModel, match="video-model mode needs a video model"):
        animate(Engine(sd1), request)
    with pytest.raises(InvalidRequest, match="at most one image"):
        AnimationRequest(GenerationRequest("a"), mode="video-model", images=["a.png", "b.png"]).validate()


def test_animations_api_runs_an_image_to_video_clip(folders, first_frame, tmp_path):
    """POST /api/v1/animations with mode video-model and a base64 first frame: a queued clip with frames, videos
    and metrics, equal to the CLI's clip of the same seed."""
    import base64

    from fastapi.testclient import TestClient

    from sfumato.server.app import create_app
    from sfumato.server.settings import ServerSettings
    from test_server import _wait

    settings = ServerSettings(model=str(folders["svd"]), data_dir=tmp_path / "server", safety="off")
    image = "data:image/png;base64," + base64.b64encode(first_frame.read_bytes()).decode()
    with TestClient(create_app(settings), base_url="http://127.0.0.1:7860") as client:
        r = client.post("/api/v1/animations", json={
            "generation": {"width": 32, "height": 32, "steps": 2, "seed": 3, "cfg_scale": 3.0},
            "mode": "video-model", "frames": 5, "images": [image], "formats": ["gif", "mp4"]})
        assert r.status_code == 202, r.text
        job = _wait(client, r.json()["id"])
        assert job["status"] == "completed", job
        assert len(job["images"]) == 5 and job["result"]["metrics"]["frames"] == 5
        import io

        served = [np.asarray(Image.open(io.BytesIO(client.get(i["url"]).content)), dtype=np.int16)
                  for i in job["images"]]
        bad = client.post("/api/v1/animations", json={"generation": {"width": 32, "height": 32}, "mode": "video-model",
                                                      "frames": 5})
        assert 400 <= bad.status_code < 500 and "give its first frame" in bad.json()["detail"]
    request = AnimationRequest(GenerationRequest("", steps=2, width=32, height=32, seed=3, cfg_scale=3.0),
                               mode="video-model", frames=5, images=[str(first_frame)])
    local = [np.asarray(f.image, dtype=np.int16) for f in animate(Engine(folders["svd"]), request).frames]
    assert all(np.array_equal(a, b) for a, b in zip(served, local))


def test_a_wan_lora_equals_the_diffusers_loader(folders, tmp_path):
    """A diffusers-format LoRA on Wan's transformer: the clip equals the plain pipeline after its own
    `load_lora_weights`, and differs from the clip without it."""
    import diffusers
    from lora_files import random_lora

    lora = random_lora(diffusers.WanPipeline.from_pretrained(str(folders["wan"]), local_files_only=True),
                       tmp_path / "lora")
    generation = GenerationRequest("a cat walks on grass", steps=2, width=32, height=32, seed=7, cfg_scale=3.0)
    engine = Engine(folders["wan"])
    plain = [np.asarray(f.image, dtype=np.int16)
             for f in animate(engine, AnimationRequest(generation, mode="video-model", frames=5)).frames]
    import dataclasses

    with_lora = [np.asarray(f.image, dtype=np.int16) for f in animate(engine, AnimationRequest(
        dataclasses.replace(generation, loras=[(str(lora), 1.0)]), mode="video-model", frames=5)).frames]
    reference = diffusers.WanPipeline.from_pretrained(str(folders["wan"]), local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(lora))
    theirs = [np.asarray(f, dtype=np.int16) for f in reference(
        prompt="a cat walks on grass", negative_prompt="", height=32, width=32, num_frames=5, num_inference_steps=2,
        guidance_scale=3.0, generator=torch.Generator().manual_seed(7), output_type="pil").frames[0]]
    assert max(np.abs(a - b).max() for a, b in zip(with_lora, theirs)) <= 1
    assert max(np.abs(a - b).max() for a, b in zip(with_lora, plain)) > 2
