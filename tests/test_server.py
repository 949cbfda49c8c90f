"""`sfumato serve`: the three APIs, persistence across kill -9, batching, SSE, cancellation, auth and limits."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sfumato.server.app import create_app  # noqa: E402
from sfumato.server.settings import Limits, ServerSettings  # noqa: E402

SMALL = {"width": 64, "height": 64, "steps": 2}
LOCAL = "http://127.0.0.1:7860"  # a loopback Host: the server answers no other name by default


def _settings(tmp_path, model, **changes) -> ServerSettings:
    base = dict(model=str(model), data_dir=tmp_path / "server", safety="off", max_batch_size=8, queue_size=64)
    return ServerSettings(**{**base, **changes})


@pytest.fixture
def client(tmp_path, sd1):
    with TestClient(create_app(_settings(tmp_path, sd1)), base_url=LOCAL) as c:
        yield c


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _wait(client, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


# ---------------------------------------------------------------- A1111 and native shapes


def test_a1111_txt2img_and_img2img_shapes(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "red apple", "seed": 11, "batch_size": 2,
                                               "sampler_name": "DPM++ 2M", "scheduler": "Karras", **SMALL})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"images", "parameters", "info"} and len(body["images"]) == 2
    info = json.loads(body["info"])
    assert info["all_seeds"] == [11, 12] and info["sampler_name"] == "DPM++ 2M Karras" and info["width"] == 64
    assert info["infotexts"][0].startswith("red apple\nSteps: 2, Sampler: DPM++ 2M Karras")
    assert _png(body["images"][0]).size == (64, 64)
    init = _png(body["images"][0]).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    r = client.post("/sdapi/v1/img2img", json={"prompt": "blue car", "init_images": [_b64(init)], "mask": _b64(mask),
                                               "denoising_strength": 0.8, "seed": 3, "steps": 4})
    assert r.status_code == 200
    out = np.asarray(_png(r.json()["images"][0]).convert("RGB"), dtype=int)
    # the unmasked right half keeps the init image (overlay), the masked left half is repainted
    assert np.abs(out[:, 40:] - np.asarray(init, dtype=int)[:, 40:]).mean() < 3
    assert np.abs(out[:, :24] - np.asarray(init, dtype=int)[:, :24]).mean() > 3


def test_a1111_models_options_samplers_progress_pnginfo(client, sd1):
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0]["model_name"] == "sd1" and models[0]["title"].startswith("sd1 [")
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == models[0]["title"]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": models[0]["title"]}).status_code == 200
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}).status_code == 404
    # options are honoured or refused, never accepted and ignored; a round trip of GET's answer is accepted
    options = client.get("/sdapi/v1/options").json()
    assert {"CLIP_stop_at_last_layers", "samples_format", "eta_noise_seed_delta", "sd_vae"} <= set(options)
    assert client.post("/sdapi/v1/options", json=options).status_code == 200
    for bad in ({"samples_format": "jpg"}, {"eta_noise_seed_delta": 31337}, {"outdir_samples": "/tmp/x"},
                {"no_such_option": 1}, {"CLIP_stop_at_last_layers": 13}):
        r = client.post("/sdapi/v1/options", json=bad)
        assert r.status_code == 422 and r.json()["error"]["message"], bad
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    skipped = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "seed": 5, **SMALL}).json()
    assert json.loads(skipped["info"])["clip_skip"] == 2
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}).status_code == 200
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert {"Euler a", "DPM++ 2M Karras", "DDIM", "UniPC"} <= set(names)
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and progress["state"]["sampling_steps"] == 0 and "current_image" in progress
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    image = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "seed": 5, **SMALL}).json()["images"][0]
    info = client.post("/sdapi/v1/png-info", json={"image": image}).json()
    assert info["info"].startswith("a cat\nSteps: 2") and info["parameters"]["Seed"] == "5"
    assert "sfumato" in info["items"]
    assert client.post("/sdapi/v1/interrupt").status_code == 200 and client.post("/sdapi/v1/skip").status_code == 200


def test_native_jobs_sse_and_image(client):
    job = client.post("/api/v1/jobs", json={"prompt": "red apple", "seed": 2, **SMALL})
    assert job.status_code == 202
    job_id = job.json()["id"]
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as stream:
        text = "".join(stream.iter_text())
    events = [block.split("\n")[0].removeprefix("event: ") for block in text.strip().split("\n\n")]
    assert events[-1] == "completed" and set(events) <= {"queued", "progress", "completed"}
    done = _wait(client, job_id)
    assert done["result"]["seeds"] == [2] and done["request"]["steps"] == 2
    png = client.get(done["images"][0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert client.get(f"/api/v1/jobs/{'0' * 32}").status_code == 404


def test_token_counts_use_the_model_tokenizer(client):
    r = client.post("/api/v1/tokens", json={"prompt": "red apple, (shiny:1.2) <lora:x:1> --no leaves"})
    assert r.json() == {"chunks": [4], "chunk_length": 75, "scheduled": [
        {"chunks": [4], "text": "red apple, (shiny:1.2)", "until_step": 20, "weight": 1.0}]}
    assert client.post("/api/v1/tokens", json={"prompt": "a cat BREAK a dog"}).json()["chunks"] == [2, 2]
    assert client.post("/api/v1/tokens", json={"prompt": ", ".join(["red apple"] * 40)}).json()["chunks"] == [75, 44]
    assert client.post("/api/v1/tokens", json={"prompt": "x --bogus 1"}).status_code == 422


def test_validation_errors_are_json_422(client):
    for body in ({"prompt": "x", "steps": 1000}, {"prompt": "x", "width": 100000, "height": 64},
                 {"prompt": "x", "batch_size": 17}, {"prompt": 5}, {"prompt": "x", "unknown_field": 1},
                 {"prompt": "x", "sampler": "Nope"}, {"prompt": "x" * 5000}):
        r = client.post("/api/v1/jobs", json=body)
        assert r.status_code == 422, body
        assert r.json()["error"]["message"], body
    r = client.post("/api/v1/jobs", json={"prompt": "x", "model": "../../etc/passwd"})
    assert r.status_code == 404 and "not found" in r.json()["error"]["message"]
    r = client.post("/api/v1/jobs", json={"prompt": "a N U D E figure"})
    assert r.status_code == 400 and "category: sexual_explicit" in r.json()["error"]["message"]


def test_no_path_traversal(client):
    for url in ("/api/v1/images/..%2F..%2Fjobs.sqlite3.png", "/api/v1/images/%2Fetc%2Fpasswd.png",
                "/api/v1/images/....png", "/api/v1/images/jobs.sqlite3.png"):
        assert client.get(url).status_code == 404, url
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": {"sd_model_checkpoint": "/etc"}})
    assert r.status_code == 404


def test_upload_limits_and_bombs(tmp_path, sd1):
    limits = Limits(max_upload_bytes=200_000, max_upload_pixels=1024 * 1024)
    with TestClient(create_app(_settings(tmp_path, sd1, limits=limits)), base_url=LOCAL) as client:
        noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8))
        r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [_b64(noise)]})
        assert r.status_code == 413 and "MiB" in r.json()["error"]["message"]
        bomb = Image.new("1", (12000, 12000))  # compresses to a few kB, decodes to 144 megapixels
        r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [_b64(bomb)]})
        assert r.status_code == 413 and "pixels" in r.json()["error"]["message"]
        r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [base64.b64encode(b"%PDF-1.4").decode()]})
        assert r.status_code == 422 and "not a readable image" in r.json()["error"]["message"]
        r = client.post("/v1/images/edits", files={"image": ("a.txt", b"hello", "text/plain")}, data={"prompt": "x"})
        assert r.status_code == 422


# ---------------------------------------------------------------- queue: 429, batching, cancellation


def test_full_queue_answers_429_with_retry_after(tmp_path, sd1):
    client = TestClient(create_app(_settings(tmp_path, sd1, queue_size=2)), base_url=LOCAL)  # no `with`: the worker never starts
    for _ in range(2):
        assert client.post("/api/v1/jobs", json={"prompt": "x", **SMALL}).status_code == 202
    r = client.post("/api/v1/jobs", json={"prompt": "x", **SMALL})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and r.json()["error"]["code"] == 429


def test_batching_gives_the_same_pixels_as_running_alone(tmp_path, sd1):
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    app = create_app(_settings(tmp_path, sd1, max_batch_size=4))
    client = TestClient(app, base_url=LOCAL)  # queue first, then start the worker so the jobs batch
    bodies = [{"prompt": p, "seed": s, "cfg_scale": c, **SMALL}
              for p, s, c in (("red apple", 1, 7.0), ("blue car", 2, 4.0), ("green tree", 3, 9.0))]
    ids = [client.post("/api/v1/jobs", json=b).json()["id"] for b in bodies]
    with client:
        jobs = [_wait(client, i) for i in ids]
        assert [j["result"]["batch_jobs"] for j in jobs] == [3, 3, 3]
        engine = Engine(sd1)
        for body, job in zip(bodies, jobs):
            served = np.asarray(Image.open(io.BytesIO(client.get(job["images"][0]["url"]).content)), dtype=int)
            alone = engine.generate(GenerationRequest(**body)).images[0].image
            assert np.abs(served - np.asarray(alone, dtype=int)).max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("wait_ms, expected", [(800, [2, 2]), (0, [1, 1])])
def test_a_batch_that_is_not_full_waits_for_late_jobs(tmp_path, sd1, wait_ms, expected):
    with TestClient(create_app(_settings(tmp_path, sd1, max_batch_size=4, batch_wait_ms=wait_ms)), base_url=LOCAL) as client:
        first = client.post("/api/v1/jobs", json={"prompt": "red apple", "seed": 1, **SMALL}).json()["id"]
        time.sleep(0.2)  # the worker has seen the first job by now
        second = client.post("/api/v1/jobs", json={"prompt": "blue car", "seed": 2, **SMALL}).json()["id"]
        assert [_wait(client, i)["result"]["batch_jobs"] for i in (first, second)] == expected


def test_store_tells_listeners_once_when_a_job_finishes(tmp_path):
    from sfumato.server.store import SqliteJobStore

    store = SqliteJobStore(tmp_path, queue_size=8)
    heard = []
    store.on_final.append(heard.append)
    done, failed, cancelled = (store.add({"prompt": p}).id for p in "abc")
    store.start(done)
    store.complete(done, {"images": []})
    store.fail(failed, "bad")
    assert store.cancel(cancelled) and not store.cancel(cancelled) and not store.cancel(done)
    store.fail(done, "too late")  # already completed: no second notice
    assert heard == [done, failed, cancelled]


@pytest.mark.slow
def test_cancel_queued_and_running_jobs(tmp_path, sd1):
    client = TestClient(create_app(_settings(tmp_path, sd1, max_batch_size=1)), base_url=LOCAL)
    slow = client.post("/api/v1/jobs", json={"prompt": "slow", "width": 128, "height": 128, "steps": 150}).json()["id"]
    queued = client.post("/api/v1/jobs", json={"prompt": "queued", **SMALL}).json()["id"]
    with client:
        deadline = time.time() + 60
        while client.get(f"/api/v1/jobs/{slow}").json().get("progress", {}).get("step", 0) < 2:
            assert time.time() < deadline
            time.sleep(0.02)
        assert client.delete(f"/api/v1/jobs/{queued}").json()["status"] == "cancelled"
        assert client.delete(f"/api/v1/jobs/{slow}").json()["status"] == "cancelled"
        job = _wait(client, slow)
        assert job["status"] == "cancelled" and "images" not in job
        time.sleep(0.3)
        assert client.get(f"/api/v1/jobs/{queued}").json()["status"] == "cancelled"
        assert client.delete(f"/api/v1/jobs/{slow}").status_code == 409
        after = client.post("/api/v1/jobs", json={"prompt": "after", **SMALL}).json()["id"]
        assert _wait(client, after)["status"] == "completed"  # the worker goes on after a cancel


# ---------------------------------------------------------------- auth


def test_auth_required_when_a_key_is_set(tmp_path, sd1):
    with TestClient(create_app(_settings(tmp_path, sd1, api_key="s3cret")), base_url=LOCAL) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/sdapi/v1/sd-models")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert client.get("/sdapi/v1/sd-models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/sdapi/v1/sd-models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_refuses_open_network_bind_without_a_key(tmp_path, sd1, capsys):
    from sfumato.cli import main

    with pytest.raises(Exception, match="--api-key"):
        _settings(tmp_path, sd1, host="0.0.0.0").check()
    _settings(tmp_path, sd1, host="0.0.0.0", api_key="k").check()
    _settings(tmp_path, sd1, host="::1").check()
    assert main(["serve", "--host", "0.0.0.0", "--model", str(sd1), "--data-dir", str(tmp_path / "d")]) == 2
    assert "refusing to listen on 0.0.0.0 without --api-key" in capsys.readouterr().err


# ---------------------------------------------------------------- live server: openai client, kill -9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model: Path, data_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sfumato.cli", "serve", "--model", str(model), "--port",
                                str(port), "--data-dir", str(data_dir), "--safety", "off", *extra], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read().decode()
    raise AssertionError("server did not start")


@pytest.mark.slow
def test_openai_client_against_a_live_server(tmp_path, sd1):
    openai = pytest.importorskip("openai")
    port = _free_port()
    server = _serve(sd1, tmp_path / "data", port, "--api-key", "k1")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0)
        result = client.images.generate(prompt="red apple", n=2, size="64x64", response_format="b64_json",
                                        extra_body={"seed": 7, "steps": 2})
        assert len(result.data) == 2 and _png(result.data[0].b64_json).size == (64, 64)
        url = client.images.generate(prompt="red apple", size="64x64", response_format="url",
                                     extra_body={"seed": 7, "steps": 2}).data[0].url
        import httpx

        fetched = httpx.get(url, headers={"Authorization": "Bearer k1"})
        assert fetched.status_code == 200
        first = np.asarray(_png(result.data[0].b64_json), dtype=int)  # image 0 of a batch of 2 vs a batch of 1
        assert np.abs(np.asarray(Image.open(io.BytesIO(fetched.content)), dtype=int) - first).max() <= 1
        image = Image.new("RGBA", (64, 64), (200, 30, 30, 255))
        mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
        mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # transparent left half: edit there
        files = []
        for picture in (image, mask):
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            files.append(("image.png", buffer.getvalue(), "image/png"))
        edited = client.images.edit(image=files[0], mask=files[1], prompt="blue sky", response_format="b64_json",
                                    extra_body={"seed": 1, "steps": 3})
        pixels = np.asarray(_png(edited.data[0].b64_json).convert("RGB"), dtype=int)
        assert np.abs(pixels[:, 48:] - [200, 30, 30]).mean() < 3  # kept
        variation = client.images.create_variation(image=files[0], n=1, size="64x64", response_format="b64_json")
        assert _png(variation.data[0].b64_json).size == (64, 64)
        with pytest.raises(openai.APIStatusError) as info:
            client.images.generate(prompt="x", size="big")
        assert info.value.status_code == 422 and "size" in str(info.value)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bad", max_retries=0).images.generate(
                prompt="x")
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.slow
def test_jobs_survive_kill_minus_9(tmp_path, sd1):
    import httpx

    port = _free_port()
    data = tmp_path / "data"
    server = _serve(sd1, data, port, "--max-batch-size", "1")
    base = f"http://127.0.0.1:{port}"
    ids = [httpx.post(f"{base}/api/v1/jobs", json={"prompt": f"job {i}", "seed": i, "width": 64, "height": 64,
                                                     "steps": 40}).json()["id"] for i in range(4)]
    deadline = time.time() + 60
    while httpx.get(f"{base}/api/v1/jobs/{ids[0]}").json()["status"] != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    server = _serve(sd1, data, port, "--max-batch-size", "1")
    try:
        assert httpx.get(f"{base}/healthz").json()["recovered_jobs"] >= 1
        for job_id in ids:
            deadline = time.time() + 180
            while (job := httpx.get(f"{base}/api/v1/jobs/{job_id}").json())["status"] not in ("completed", "failed"):
                assert time.time() < deadline
                time.sleep(0.1)
            assert job["status"] == "completed" and len(job["images"]) == 1
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.slow
def test_sigterm_mid_job_stops_within_seconds_and_requeues_the_job(tmp_path, sd1):
    """SIGTERM while a long synchronous job runs: the caller gets 503 naming the job, the server exits 0 within
    seconds, and the job (no partial images kept) runs after the next start."""
    import re
    import threading

    import httpx

    port = _free_port()
    data = tmp_path / "data"
    server = _serve(sd1, data, port, "--max-batch-size", "1")
    base = f"http://127.0.0.1:{port}"
    answer = {}

    def call():
        answer["r"] = httpx.post(f"{base}/v1/images/generations", timeout=120, json={
            "prompt": "a long job", "size": "256x256", "response_format": "b64_json", "seed": 3, "steps": 150})
    # (150 steps at 256² take tens of seconds with the tiny model: the signal comes mid-job)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.time() + 60
    while not httpx.get(f"{base}/sdapi/v1/progress").json().get("state", {}).get("job_count"):
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    signalled = time.time()
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0, server.stderr.read().decode()[-800:]
    assert time.time() - signalled < 15
    caller.join(30)
    assert answer["r"].status_code == 503, answer["r"].text
    job_id = re.search(r"job (\S+) stays queued", answer["r"].text).group(1)
    assert not list((data / "images").glob(f"{job_id}*"))  # no partial images
    server = _serve(sd1, data, port, "--max-batch-size", "1")
    try:  # nothing was lost: the job waits (or already runs again) in the restarted server
        assert httpx.get(f"{base}/api/v1/jobs/{job_id}").json()["status"] in ("queued", "running")
    finally:
        server.terminate()
        server.wait(30)


def test_a1111_describing_routes_answer_for_real_clients(client):
    """What A1111 clients read at start-up: every route answers in A1111's shape (or 501 with a reason)."""
    home = Path(os.environ["SFUMATO_HOME"])
    (home / "embeddings").mkdir(parents=True)
    from safetensors.torch import save_file
    import torch

    save_file({"emb_params": torch.zeros(3, 32)}, str(home / "embeddings" / "shiny.safetensors"))
    assert client.get("/sdapi/v1/embeddings").json()["loaded"]["shiny"]["vectors"] == 3
    names = [s["name"] for s in client.get("/sdapi/v1/schedulers").json()]
    assert names == ["automatic", "karras"]
    for name in names:  # every listed scheduler is taken by txt2img
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "sampler_name": "DPM++ 2M", "scheduler": name,
                                                   "steps": 2, "width": 32, "height": 32})
        assert r.status_code == 200, r.text
    assert client.get("/sdapi/v1/face-restorers").json() == []
    assert all({"name", "scale"} <= set(m) for m in client.get("/sdapi/v1/realesrgan-models").json())
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and flags["listen"] is False and "/" not in flags["data_dir"]
    ram = client.get("/sdapi/v1/memory").json()["ram"]
    assert ram["total"] > ram["free"] > 0
    r = client.post("/sdapi/v1/interrogate", json={"image": "", "model": "clip"})
    assert r.status_code == 501 and "captioning model" in r.json()["error"]["message"]


@pytest.mark.slow
def test_abandoned_synchronous_requests_are_cancelled(tmp_path, sd1):
    """A caller that hangs up leaves nothing running: an A1111 txt2img whose client times out mid-job has that job
    cancelled (stopped inside its step); the real openai client with a 1 s timeout and a retry against a busy
    server leaves two cancelled jobs, none of which ran."""
    openai = pytest.importorskip("openai")
    import httpx

    port = _free_port()
    server = _serve(sd1, tmp_path / "data", port, "--max-batch-size", "1")
    base = f"http://127.0.0.1:{port}"

    def jobs(prompt: str) -> list[dict]:
        return [j for j in httpx.get(f"{base}/api/v1/jobs?limit=20").json()["jobs"]
                if j["request"]["prompt"] == prompt]

    def settled(prompt: str, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = jobs(prompt)
            if len(found) == count and all(j["status"] in ("completed", "failed", "cancelled") for j in found):
                return found
            time.sleep(0.1)
        raise AssertionError(f"{prompt!r}: {jobs(prompt)}")

    try:
        with pytest.raises(httpx.ReadTimeout):  # 150 steps at 256²: tens of seconds
            httpx.post(f"{base}/sdapi/v1/txt2img", timeout=3, json={
                "prompt": "an abandoned job", "steps": 150, "width": 256, "height": 256, "seed": 1})
        (abandoned,) = settled("an abandoned job", 1, timeout=10)
        assert abandoned["status"] == "cancelled"
        busy = httpx.post(f"{base}/api/v1/jobs", json={"prompt": "busy", "steps": 150, "width": 256,
                                                       "height": 256}).json()["id"]
        deadline = time.time() + 30  # the job list carries the running job's progress (the UI's Queue view)
        while not (jobs("busy") and jobs("busy")[0].get("progress", {}).get("step")):
            assert time.time() < deadline, jobs("busy")
            time.sleep(0.1)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=1.0, max_retries=1)
        with pytest.raises(openai.APITimeoutError):
            client.images.generate(prompt="a retried job", size="64x64", response_format="b64_json")
        httpx.delete(f"{base}/api/v1/jobs/{busy}")
        retried = settled("a retried job", 2)
        assert [j["status"] for j in retried] == ["cancelled"] * 2 and not any(j.get("started") for j in retried)
    finally:
        server.terminate()
        server.wait(30)
