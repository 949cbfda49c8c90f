"""Control units over HTTP: the native API, the A1111 ControlNet extension API (with the real `webuiapi` client
against a live server and the shipped emoji ControlNet), and the preprocessor endpoints."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sfumato.server.app import create_app  # noqa: E402
from test_control import _controlnet, build_ip_adapter  # noqa: E402
from test_server import LOCAL, _b64, _free_port, _png, _serve, _settings, _wait  # noqa: E402


@pytest.fixture(scope="module")
def tiny_controlnet(sd1, tmp_path_factory):
    return _controlnet(sd1, tmp_path_factory.mktemp("cn") / "tiny-cn")


def _outline(size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((size // 6, size // 6, size * 5 // 6, size * 5 // 6), outline="black",
                                  width=max(2, size // 24))
    return image


@pytest.fixture(scope="module")
def tiny_ip_adapter(sd1, tmp_path_factory):
    return build_ip_adapter(sd1, tmp_path_factory.mktemp("ip"))


@pytest.fixture
def client(tmp_path, sd1, tiny_controlnet, tiny_ip_adapter, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(tiny_controlnet, home / "models" / "controlnet" / "tiny-cn")
    shutil.copytree(tiny_ip_adapter.parent, home / "models" / "ip-adapter")
    with TestClient(create_app(_settings(tmp_path, sd1)), base_url=LOCAL) as c:
        yield c


def test_native_job_with_a_control_unit(client):
    unit = {"image": _b64(_outline()), "module": "scribble", "model": "tiny-cn", "weight": 0.8}
    body = {"prompt": "red apple", "seed": 3, "width": 32, "height": 32, "steps": 2}
    with_control = _wait(client, client.post("/api/v1/jobs", json={**body, "controls": [unit]}).json()["id"])
    plain = _wait(client, client.post("/api/v1/jobs", json=body).json()["id"])
    assert with_control["status"] == "completed", with_control
    assert 'ControlNet 0: "Module: scribble, Model: tiny-cn, Weight: 0.8' in with_control["result"]["infotexts"][0]
    a = np.asarray(Image.open(io.BytesIO(client.get(with_control["images"][0]["url"]).content)), np.int16)
    b = np.asarray(Image.open(io.BytesIO(client.get(plain["images"][0]["url"]).content)), np.int16)
    assert np.abs(a - b).max() > 0
    # over HTTP a model is a listed name, never a path; images are base64, never paths
    for bad, status in (({**unit, "model": "/etc/passwd"}, 404), ({**unit, "model": "missing"}, 404),
                        ({**unit, "image": "/etc/hosts"}, 422), ({**unit, "weight": 9}, 422),
                        ({**unit, "module": "depth"}, 422)):
        response = client.post("/api/v1/jobs", json={**body, "controls": [bad]})
        if response.status_code == 202:  # validation that runs in the worker fails the job instead
            job = _wait(client, response.json()["id"])
            assert job["status"] == "failed" and status == 422, (bad, job)
        else:
            assert response.status_code == status, (bad, response.text)
            assert "detail" in response.json() or "error" in response.json()


def test_ip_adapter_over_http(client):
    assert client.get("/api/v1/ip-adapters").json() == {"ip_adapters": ["ip-adapter_tiny"]}
    body = {"prompt": "red apple", "seed": 3, "width": 32, "height": 32, "steps": 2}
    native = _wait(client, client.post("/api/v1/jobs", json={**body, "ip_adapter": "ip-adapter_tiny",
                                                             "ip_images": [_b64(_outline())], "ip_scale": 0.5})
                   .json()["id"])
    assert native["status"] == "completed", native
    assert 'IP-Adapter: "ip-adapter_tiny: 0.5, 1 image(s)"' in native["result"]["infotexts"][0]
    for bad in ({"ip_adapter": "/etc/passwd", "ip_images": [_b64(_outline())]},
                {"ip_adapter": "ip-adapter_tiny", "ip_images": [_b64(_outline())], "ip_image_encoder": "/tmp"}):
        assert client.post("/api/v1/jobs", json={**body, **bad}).status_code in (404, 422)
    a1111 = {**body, "alwayson_scripts": {"controlnet": {"args": [
        {"image": _b64(_outline()), "module": "ip-adapter_clip_sd15", "model": "ip-adapter_tiny [abcd]", "weight": 0.7},
        {"image": _b64(_outline()), "module": "scribble", "model": "tiny-cn"}]}}}
    response = client.post("/sdapi/v1/txt2img", json=a1111)
    assert response.status_code == 200, response.text
    info = response.json()["info"]
    assert 'IP-Adapter: \\"ip-adapter_tiny: 0.7' in info and "ControlNet 0" in info and "ControlNet 1" not in info


def test_a1111_controlnet_endpoints(client):
    assert client.get("/controlnet/version").json() == {"version": 2}
    assert "tiny-cn" in client.get("/controlnet/model_list").json()["model_list"]
    modules = client.get("/controlnet/module_list").json()
    assert {"canny", "scribble", "softedge", "lineart", "tile", "color", "invert", "none"} <= set(modules["module_list"])
    assert "depth" not in modules["module_list"]  # needs weights: not offered
    assert modules["module_detail"]["canny"]["sliders"][1]["value"] == 100
    detected = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_processor_res": 64,
                                                       "controlnet_input_images": [_b64(_outline())]}).json()
    edges = np.asarray(_png(detected["images"][0]))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    assert client.post("/controlnet/detect", json={"controlnet_module": "openpose",
                                                   "controlnet_input_images": [_b64(_outline())]}).status_code == 422


def test_a1111_alwayson_controlnet_unit(client):
    body = {"prompt": "red apple", "seed": 5, "steps": 2, "width": 32, "height": 32,
            "alwayson_scripts": {"controlnet": {"args": [
                {"enabled": True, "image": _b64(_outline()), "module": "scribble", "model": "tiny-cn [0123abcd]",
                 "weight": 1.0, "resize_mode": "Crop and Resize", "control_mode": "ControlNet is more important",
                 "guidance_start": 0.0, "guidance_end": 1.0, "pixel_perfect": True, "processor_res": 512,
                 "threshold_a": 64, "threshold_b": 64, "low_vram": False},
                {"enabled": False, "image": _b64(_outline()), "module": "canny", "model": "tiny-cn"}]}}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = response.json()["info"]
    assert "ControlNet 0: " in info and "ControlNet 1" not in info and "ControlNet is more important" in info
    bad = {**body, "alwayson_scripts": {"controlnet": {"args": [{"image": _b64(_outline()), "model": "nope"}]}}}
    assert client.post("/sdapi/v1/txt2img", json=bad).status_code == 404


@pytest.mark.slow
def test_webuiapi_client_draws_an_emoji_that_follows_an_outline(tmp_path):
    """The real A1111 client, a live server on the embedded model, a hand-drawn circle and no model named: the
    shipped sfumato-emoji-canny is used and the image follows the circle better than without it."""
    webuiapi = pytest.importorskip("webuiapi")
    from sfumato.control.models import embedded_controlnet
    from sfumato.models.embedded import embedded_model

    if embedded_model("sfumato-emoji") is None or embedded_controlnet("sfumato-emoji") is None:
        pytest.skip("sfumato-emoji or its ControlNet is not in this checkout")
    port = _free_port()
    server = _serve(embedded_model("sfumato-emoji"), tmp_path / "data", port)
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
        assert "sfumato-emoji-canny" in api.controlnet_model_list()
        outline = _outline(256)
        unit = webuiapi.ControlNetUnit(image=outline, module="scribble", model="None", processor_res=-1,
                                       resize_mode="Crop and Resize", threshold_a=-1, threshold_b=-1)
        controlled = api.txt2img(prompt="red apple", seed=11, width=32, height=32, steps=8, controlnet_units=[unit],
                                  alwayson_scripts={})  # webuiapi's default dict is shared and mutated: pass a new one
        plain = api.txt2img(prompt="red apple", seed=11, width=32, height=32, steps=8, alwayson_scripts={})
        assert controlled.image.size == (32, 32)
        assert "Model: sfumato-emoji-canny" in controlled.info["infotexts"][0]
        assert not np.array_equal(np.asarray(controlled.image), np.asarray(plain.image))
        # the client as users call it: its shared default `alwayson_scripts={}` keeps the first call's ControlNet
        # units; `/sdapi/v1/scripts` lists "controlnet m2m", so the client resets them ({"args": []}) for a plain call
        assert api.has_controlnet
        api.txt2img(prompt="red apple", seed=11, width=32, height=32, steps=8, controlnet_units=[unit])
        again = api.txt2img(prompt="red apple", seed=11, width=32, height=32, steps=8)
        assert "ControlNet" not in again.info["infotexts"][0]
        assert np.array_equal(np.asarray(again.image), np.asarray(plain.image))
        detected = api.controlnet_detect([outline], module="canny", processor_res=64)  # sends `controlnet_images`
        assert len(detected.images) == 1 and detected.image.size == (64, 64)
    finally:
        server.terminate()
        server.wait(timeout=30)
