"""Upscaling and recipes over HTTP: A1111's Extras API (also through the real `webuiapi` client against a live
server), `hr_upscaler` by name, and the native /api/v1/upscale and /api/v1/recipes routes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sfumato.server.app import create_app  # noqa: E402
from test_server import LOCAL, _b64, _free_port, _png, _serve, _settings, _wait  # noqa: E402
from test_upscale import drawing  # noqa: E402


@pytest.fixture
def client(tmp_path, sd1):
    with TestClient(create_app(_settings(tmp_path, sd1)), base_url=LOCAL) as c:
        yield c


def test_upscaler_lists(client):
    listed = client.get("/sdapi/v1/upscalers").json()
    names = [entry["name"] for entry in listed]
    assert names[:2] == ["None", "Lanczos"] and "R-ESRGAN 4x+" in names and "R-ESRGAN 4x+ Anime6B" in names
    assert set(listed[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert all(entry["model_path"] is None for entry in listed)  # no server paths leave the server
    assert client.get("/sdapi/v1/latent-upscale-modes").json()[0] == {"name": "Latent"}
    native = client.get("/api/v1/upscalers").json()
    assert {"name": "R-ESRGAN 4x+", "scale": 4, "kind": "builtin"} in native


def test_extra_single_and_batch_images(client):
    image = drawing(40, 30)
    body = {"image": _b64(image), "upscaler_1": "R-ESRGAN AnimeVideo", "upscaling_resize": 2}
    response = client.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 200, response.text
    out = _png(response.json()["image"])
    assert out.size == (80, 60)
    assert response.json()["html_info"] == "Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN AnimeVideo"
    to_box = client.post("/sdapi/v1/extra-single-image", json={**body, "resize_mode": 1, "upscaling_resize_w": 64,
                                                                "upscaling_resize_h": 64, "upscaling_crop": True})
    assert _png(to_box.json()["image"]).size == (64, 64)
    batch = {"imageList": [{"data": _b64(image), "name": "a.png"}, {"data": _b64(drawing(20, 20)), "name": "b"}],
             "upscaler_1": "Lanczos", "upscaling_resize": 3}
    sizes = [_png(b).size for b in client.post("/sdapi/v1/extra-batch-images", json=batch).json()["images"]]
    assert sizes == [(120, 90), (60, 60)]


def test_extras_bad_input_is_a_json_4xx(client):
    body = {"image": _b64(drawing(16, 16)), "upscaler_1": "Lanczos"}
    for bad in ({**body, "gfpgan_visibility": 1}, {**body, "upscaler_1": "/etc/passwd.safetensors"},
                {**body, "upscaler_1": "SwinIR_4x"}, {**body, "upscaling_resize": 100}, {**body, "image": "!!"},
                {**body, "resize_mode": 3}):
        response = client.post("/sdapi/v1/extra-single-image", json=bad)
        assert 400 <= response.status_code < 500 and "error" in response.json(), (bad.keys(), response.text)
    huge = client.post("/api/v1/upscale", json={"image": _b64(drawing(64, 64)), "upscaler": "Lanczos",
                                               "scale": 8.0, "tile": 0})
    assert huge.status_code == 200  # 512x512 is within the limit
    assert client.post("/sdapi/v1/extra-batch-images", json={"imageList": []}).status_code == 422


def test_hr_upscaler_native_upscale_and_recipes(client):
    txt = {"prompt": "red apple", "seed": 1, "steps": 2, "width": 32, "height": 32, "enable_hr": True,
           "hr_scale": 2, "hr_upscaler": "R-ESRGAN 4x+", "denoising_strength": 0.5}
    response = client.post("/sdapi/v1/txt2img", json=txt)
    assert response.status_code == 200, response.text
    assert "Hires upscaler: R-ESRGAN 4x+" in response.json()["info"]
    assert _png(response.json()["images"][0]).size == (64, 64)
    assert client.post("/sdapi/v1/txt2img", json={**txt, "hr_upscaler": "nope"}).status_code == 422
    up = client.post("/api/v1/upscale", json={"image": _b64(drawing(24, 16)), "upscaler": "R-ESRGAN AnimeVideo"})
    assert up.status_code == 200 and (up.json()["width"], up.json()["height"]) == (96, 64)
    assert client.get("/api/v1/recipes").json()["colorize"]["colorize"] is True
    gray = drawing(32, 32).convert("L").convert("RGB")
    job = client.post("/api/v1/recipes/colorize", json={"image": _b64(gray), "prompt": "a house", "steps": 2})
    assert job.status_code == 202, job.text
    done = _wait(client, job.json()["id"])
    assert done["status"] == "completed" and "Colorize: True" in done["result"]["infotexts"][0]
    assert client.post("/api/v1/recipes/sharpen", json={"image": _b64(gray)}).status_code == 422
    # over HTTP an upscaler is a listed name, never a path
    bad = {"prompt": "x", "steps": 2, "width": 32, "height": 32, "sd_upscale": 2.0,
           "sd_upscale_upscaler": "/tmp/evil.safetensors"}
    assert client.post("/api/v1/jobs", json=bad).status_code == 422


@pytest.mark.slow
def test_webuiapi_client_upscales(tmp_path, sd1):
    webuiapi = pytest.importorskip("webuiapi")
    port = _free_port()
    server = _serve(sd1, tmp_path / "data", port)
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
        image = drawing(32, 24)
        single = api.extra_single_image(image, upscaler_1="R-ESRGAN 4x+", upscaling_resize=2)
        assert single.image.size == (64, 48) and single.info.startswith("Postprocess upscale by: 2")
        batch = api.extra_batch_images([image, image.transpose(Image.Transpose.ROTATE_90)], upscaler_1="Nearest",
                                       upscaling_resize=2)
        assert [i.size for i in batch.images] == [(64, 48), (48, 64)]
        nearest = np.asarray(image.resize((64, 48), Image.Resampling.NEAREST))
        assert np.array_equal(np.asarray(batch.images[0].convert("RGB")), nearest)
    finally:
        server.terminate()
