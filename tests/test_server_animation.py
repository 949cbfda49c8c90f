"""Animations over HTTP: a queued job with frames, videos and metrics; names not paths; bad input is a JSON 4xx."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sfumato.animation.video import read_frames, write_video  # noqa: E402
from sfumato.server.app import create_app  # noqa: E402
from sfumato.server.settings import ServerSettings  # noqa: E402
from test_server import _wait  # noqa: E402

LOCAL = "http://127.0.0.1:7860"
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def client(tmp_path_factory, sd1):
    folder = tmp_path_factory.mktemp("anim-server")
    settings = ServerSettings(model=str(sd1), data_dir=folder / "server", safety="off", queue_size=16)
    with TestClient(create_app(settings), base_url=LOCAL) as c:
        yield c


def test_prompt_travel_job_gives_frames_videos_and_metrics(client, tmp_path):
    r = client.post("/api/v1/animations", json={
        "generation": {**SMALL, "seed": 4, "sampler": "Euler"}, "frames": 3,
        "prompts": {"0": "a red apple", "2": "a green apple"}, "formats": ["gif", "mp4", "webp"]})
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["id"])
    assert job["status"] == "completed", job
    assert len(job["images"]) == 3 and set(job["result"]["videos"]) == {"gif", "mp4", "webp"}
    metrics = job["result"]["metrics"]
    assert metrics["frames"] == 3 and {"temporal_ssim", "temporal_ssim_worst", "flicker"} <= set(metrics)
    video = client.get(job["result"]["videos"]["mp4"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    (tmp_path / "clip.mp4").write_bytes(video.content)
    assert len(read_frames(tmp_path / "clip.mp4")) == 3
    frame = client.get(job["images"][1]["url"])
    assert frame.status_code == 200
    assert "Animation: travel frame 2/3" in Image.open(io.BytesIO(frame.content)).text["parameters"]
    # the keyframe frame is the plain generation of its prompt (the frames ran as one batch: up to float rounding)
    single = client.post("/api/v1/jobs", json={"prompt": "a green apple", "seed": 4, "sampler": "Euler", **SMALL})
    plain = client.get(_wait(client, single.json()["id"])["images"][0]["url"]).content
    last = client.get(job["images"][2]["url"]).content
    difference = np.asarray(Image.open(io.BytesIO(plain)), dtype=np.int16) - \
        np.asarray(Image.open(io.BytesIO(last)), dtype=np.int16)
    assert np.abs(difference).max() <= 1


@pytest.mark.slow
def test_video_to_video_job_takes_a_base64_video(client, tmp_path):
    write_video([Image.new("RGB", (64, 64), (12 * k, 80, 90)) for k in range(18)], tmp_path / "in.gif", fps=4)
    data = base64.b64encode((tmp_path / "in.gif").read_bytes()).decode()
    r = client.post("/api/v1/animations", json={"mode": "video", "video": data, "strength": 0.5, "formats": ["gif"],
                                                "generation": {"prompt": "a painting", "steps": 2, "seed": 1}})
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["id"])
    assert job["status"] == "completed", job
    assert len(job["images"]) == 18 and job["result"]["request"]["mode"] == "video"  # every frame (not 16)


@pytest.mark.parametrize("body, status, words", [
    ({"mode": "dance"}, 422, "mode must be"),
    ({"frames": 5000, "generation": {"prompt": "x"}}, 422, "frames"),
    ({"frames": 300, "generation": {"prompt": "x"}}, 422, "at most 240"),
    ({"mode": "motion", "motion_adapter": "/etc/passwd", "generation": {"prompt": "x"}}, 404, "motion module"),
    ({"mode": "video", "video": base64.b64encode(b"not a video at all").decode()}, 422, "MP4, WebM, GIF or WebP"),
    ({"generation": {"prompt": "x", "model": "/etc/passwd"}}, 404, "not found"),
    ({"generation": {"prompt": "x", "steps": "many"}}, 422, "generation.steps"),
    ({"prompts": '0: "unterminated'}, 422, "unterminated"),
    ({"speed": 3}, 422, ""),
])
def test_bad_animation_input_is_a_json_4xx(client, body, status, words):
    r = client.post("/api/v1/animations", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"] if words else "error" in r.json()


def test_motion_modules_and_videos_are_names_only(client):
    assert client.get("/api/v1/motion-modules").json() == {"motion_modules": []}
    assert client.get("/api/v1/videos/..%2Fjobs.sqlite3").status_code == 404
    assert client.get("/api/v1/videos/" + "0" * 32 + ".mp4").status_code == 404


def test_cancel_a_running_animation(client):
    import time

    r = client.post("/api/v1/animations", json={"generation": {"prompt": "a cat", "steps": 40, "width": 64,
                                                                "height": 64}, "frames": 30, "formats": ["gif"]})
    job_id = r.json()["id"]
    deadline = time.time() + 60
    while client.get(f"/api/v1/jobs/{job_id}").json().get("progress", {}).get("step", 0) < 2:
        assert time.time() < deadline
        time.sleep(0.02)
    progress = client.get(f"/api/v1/jobs/{job_id}").json()["progress"]
    assert progress["total"] >= 30 * 40 * 0.9  # the whole animation's steps, estimated from the first frame
    assert client.delete(f"/api/v1/jobs/{job_id}").json()["status"] == "cancelled"
    job = _wait(client, job_id)
    assert job["status"] == "cancelled" and "images" not in job
    after = client.post("/api/v1/animations", json={"generation": {"prompt": "a dog", **SMALL}, "frames": 2,
                                                    "formats": ["gif"]})
    assert _wait(client, after.json()["id"])["status"] == "completed"  # the worker goes on
