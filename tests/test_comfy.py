"""ComfyUI's dialect: API-format graphs validated with ComfyUI's error shapes, the executor over the engine (parity
with the engine's own requests, node caching), the HTTP/WebSocket API on a server, `sfumato comfy run`, ComfyUI PNGs,
and the real `comfy-api-simplified` client against a live server."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sfumato.comfy.executor import Executor, sampler_for
from sfumato.comfy.graph import GraphError, validate
from sfumato.comfy.names import Names
from sfumato.errors import UnsupportedModel
from sfumato.requests import GenerationRequest
from test_models import lora_files  # noqa: F401  (fixture)

SIZE = 32


def txt2img(ckpt: str = "tiny.safetensors", seed: int = 7, **sampler) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 3, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0], **sampler}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("comfy-input")
    picture = Image.new("RGBA", (SIZE, SIZE), (200, 40, 40, 255))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((8, 8, 24, 24), fill=(40, 40, 200, 0))  # transparent = to repaint (ComfyUI's mask = 1 - alpha)
    picture.save(folder / "apple.png")
    return folder


@pytest.fixture(scope="module")
def executor(sd1, inputs):
    from sfumato.engine import Engine

    return Executor(Engine(sd1), Names(checkpoints={"tiny.safetensors": str(sd1)}, input_dir=inputs))


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, np.int16) for image in images])


# --- validation -------------------------------------------------------------------------------------------------

def test_bad_graphs_get_comfyui_errors_naming_node_and_input():
    lists = {"checkpoints": ["tiny.safetensors"]}
    assert validate(txt2img(), lists) == ["9"]
    cases = {
        "unknown class": lambda g: g["3"].update(class_type="KSamplerTurbo"),
        "missing input": lambda g: g["6"]["inputs"].pop("text"),
        "bad choice": lambda g: g["3"]["inputs"].update(sampler_name="euler_magic"),
        "out of range": lambda g: g["3"]["inputs"].update(steps=0),
        "wrong link": lambda g: g["3"]["inputs"].update(positive=["4", 0]),
        "unknown model": lambda g: g["4"]["inputs"].update(ckpt_name="sd_xl_base_1.0.safetensors"),
        "missing node": lambda g: g["8"]["inputs"].update(samples=["42", 0]),
        "cycle": lambda g: g["6"]["inputs"].update(text=["8", 0]) or g["8"]["inputs"].update(samples=["3", 0]),
        "no outputs": lambda g: g.pop("9"),
    }
    seen = {}
    for name, change in cases.items():
        graph = copy.deepcopy(txt2img())
        change(graph)
        with pytest.raises(GraphError) as caught:
            validate(graph, lists)
        seen[name] = caught.value.body
    assert seen["unknown class"]["error"]["message"] == "Cannot execute because node KSamplerTurbo does not exist."
    node_error = seen["missing input"]["node_errors"]["6"]
    assert node_error["class_type"] == "CLIPTextEncode" and node_error["dependent_outputs"] == ["9"]
    assert node_error["errors"][0] == {"type": "required_input_missing", "message": "Required input is missing",
                                       "details": "text", "extra_info": {"input_name": "text"}}
    assert seen["bad choice"]["node_errors"]["3"]["errors"][0]["type"] == "value_not_in_list"
    assert seen["out of range"]["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min"
    assert seen["wrong link"]["node_errors"]["3"]["errors"][0]["type"] == "return_type_mismatch"
    assert seen["unknown model"]["node_errors"]["4"]["errors"][0]["extra_info"]["input_name"] == "ckpt_name"
    assert "missing node 42" in seen["missing node"]["node_errors"]["8"]["errors"][0]["details"]
    assert seen["cycle"]["error"]["type"] == "dependency_cycle_detected"
    assert seen["no outputs"]["error"]["type"] == "prompt_no_outputs"


def test_sampler_and_scheduler_names():
    assert sampler_for("euler", "normal") == ("Euler", None)
    assert sampler_for("dpmpp_2m", "karras") == ("DPM++ 2M Karras", None)
    assert sampler_for("euler_ancestral", "sgm_uniform") == ("Euler a", "trailing")
    with pytest.raises(UnsupportedModel):
        sampler_for("dpmpp_2m", "exponential")


def test_comfyui_noise_is_the_engine_noise_for_one_image(sd1):
    """ComfyUI's `prepare_noise`: torch.manual_seed(seed), then randn of the latent's shape on the CPU."""
    from sfumato.engine import Engine
    from sfumato.pipelines.steps import initial_noise

    model = Engine(sd1).load(str(sd1))
    ours, _ = initial_noise(model, SIZE, SIZE, [1234], [0], 0.0)
    theirs = torch.randn(ours.shape, generator=torch.manual_seed(1234), dtype=torch.float32)
    assert torch.equal(ours, theirs)


# --- the executor ---------------------------------------------------------------------------------------------

def test_txt2img_graph_is_the_engine_request_and_caches_unchanged_nodes(executor, sd1):
    calls = []
    outputs, cached = executor.run(txt2img(seed=11), on_node=lambda node, kind: calls.append(node))
    assert [o.node_id for o in outputs] == ["9"] and outputs[0].kind == "output"
    direct = executor.engine.generate(GenerationRequest(
        prompt="a red apple", negative_prompt="blurry", model=str(sd1), seed=11, steps=3, cfg_scale=7.0,
        sampler="Euler", width=SIZE, height=SIZE))
    assert np.array_equal(_pixels(outputs[0].images.images), _pixels([direct.images[0].image]))
    assert "Seed: 11" in outputs[0].images.infotexts[0]
    calls.clear()
    _, cached = executor.run(txt2img(seed=12), on_node=lambda node, kind: calls.append(node))
    assert set(cached) == {"4", "5", "6", "7"} and calls == ["3", "8", "9"]  # only the sampler and after
    _, cached = executor.run(txt2img(seed=12))
    assert set(cached) == {"3", "4", "5", "6", "7", "8"}  # nothing new: no generation at all


def test_img2img_inpaint_lora_controlnet_and_scaling_graphs(executor, sd1, inputs, lora_files, tmp_path,  # noqa: F811
                                                              monkeypatch):
    from test_control import _controlnet

    net = _controlnet(sd1, tmp_path / "cn")
    executor.names.loras = {"tiny-lora.safetensors": str(lora_files[0])}
    executor.names.controlnet = {"tiny-cn": str(net)}
    graph = txt2img(seed=5, denoise=0.6)
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "apple.png"}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    img2img = executor.run(graph)[0][0].images
    record = img2img.records[0]["request"]
    assert record["strength"] == 0.6 and record["init_image"] and record["mask"] is None
    graph["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    graph["3"]["inputs"]["latent_image"] = ["12", 0]
    inpainted = executor.run(graph)[0][0].images
    mask = np.asarray(Image.open(inpainted.records[0]["request"]["mask"]))
    assert mask[16, 16] == 255 and mask[1, 1] == 0  # the transparent circle is repainted
    outside = np.abs(_pixels(inpainted.images)[0, :3, :3] - np.asarray(Image.open(inputs / "apple.png").convert(
        "RGB"), np.int16)[:3, :3]).max()
    assert outside <= 2  # the unmasked corner keeps the input
    graph = txt2img(seed=5)
    graph["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name":
                                                           "tiny-lora", "strength_model": 0.8, "strength_clip": 1.0}}
    graph["3"]["inputs"]["model"] = ["20", 0]
    graph["6"]["inputs"]["clip"] = ["20", 1]
    graph["21"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny-cn"}}
    graph["22"] = {"class_type": "LoadImage", "inputs": {"image": "apple.png"}}
    graph["23"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["21", 0], "image": ["22", 0], "strength": 0.7,
        "start_percent": 0.0, "end_percent": 0.5}}
    graph["3"]["inputs"]["positive"], graph["3"]["inputs"]["negative"] = ["23", 0], ["23", 1]
    graph["24"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["8", 0], "upscale_method": "bilinear",
                                                            "scale_by": 2.0}}
    graph["25"] = {"class_type": "PreviewImage", "inputs": {"images": ["24", 0]}}
    outputs, _ = executor.run(graph)
    saved, preview = outputs
    request = saved.images.records[0]["request"]
    assert request["loras"] == [[str(lora_files[0]), 0.8]] or request["loras"] == [(str(lora_files[0]), 0.8)]
    unit = request["controls"][0]
    assert (unit["weight"], unit["guidance_end"], unit["model"]) == (0.7, 0.5, str(net))
    assert preview.kind == "temp" and preview.images.images[0].size == (2 * SIZE, 2 * SIZE)
    plain = executor.run(txt2img(seed=5))[0][0].images.images[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(saved.images.images[0]))


# --- the server ------------------------------------------------------------------------------------------------

@pytest.fixture
def client(tmp_path, sd1):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sfumato.server.app import create_app
    from test_server import LOCAL, _settings

    with TestClient(create_app(_settings(tmp_path, sd1)), base_url=LOCAL) as c:
        yield c


def _history(client, prompt_id, timeout=60.0):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = client.get(f"/history/{prompt_id}").json()
        if entry:
            return entry[prompt_id]
        time.sleep(0.05)
    raise AssertionError("the prompt did not finish")


def test_prompt_history_view_upload_and_websocket(client, sd1):
    from test_server import LOCAL

    names = client.get("/object_info/CheckpointLoaderSimple").json()["CheckpointLoaderSimple"]["input"]
    ckpt = names["required"]["ckpt_name"][0][0]
    assert ckpt == "sd1" and "KSampler" in client.get("/api/object_info").json()
    upload = Image.new("RGB", (SIZE, SIZE), (30, 160, 30))
    buffer = io.BytesIO()
    upload.save(buffer, format="PNG")
    stored = client.post("/upload/image", files={"image": ("green.png", buffer.getvalue(), "image/png")}).json()
    assert stored == {"name": "green.png", "subfolder": "", "type": "input"}
    graph = txt2img(ckpt, seed=3, denoise=0.5)
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "green.png"}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    with client.websocket_connect(LOCAL.replace("http", "ws") + "/ws?clientId=viewer") as socket:  # previews asked
        assert json.loads(socket.receive_text())["type"] == "status"
        slow = txt2img(ckpt, seed=4, steps=12)
        queued = client.post("/prompt", json={"prompt": slow, "client_id": "viewer",
                                              "extra_data": {"preview_method": "auto"}}).json()
        frames = []
        while True:
            message = socket.receive()
            if message.get("bytes"):
                frames.append(message["bytes"])
            elif message.get("text") and json.loads(message["text"]) == {
                    "type": "executing", "data": {"node": None, "prompt_id": queued["prompt_id"]}}:
                break
        assert frames and frames[0][:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02" and frames[0][8:12] == b"\x89PNG"
    with client.websocket_connect(LOCAL.replace("http", "ws") + "/ws?clientId=tester") as socket:
        first = json.loads(socket.receive_text())
        assert first["type"] == "status" and first["data"]["sid"] == "tester"
        queued = client.post("/prompt", json={"prompt": graph, "client_id": "tester",
                                              "extra_data": {"extra_pnginfo": {"workflow": {"nodes": []}}}})
        assert queued.status_code == 200, queued.text
        prompt_id = queued.json()["prompt_id"]
        events = []
        while True:
            message = json.loads(socket.receive_text())
            events.append(message["type"])
            if message["type"] == "executing" and message["data"]["node"] is None:
                assert message["data"]["prompt_id"] == prompt_id
                break
    assert events[0] in ("status", "execution_start") and "execution_start" in events
    assert "executed" in events and "execution_success" in events
    entry = _history(client, prompt_id)
    assert entry["status"]["status_str"] == "success" and entry["prompt"][1] == prompt_id
    image = entry["outputs"]["9"]["images"][0]
    png = client.get("/view", params={"filename": image["filename"], "type": image["type"]})
    assert png.status_code == 200
    picture = Image.open(io.BytesIO(png.content))
    assert json.loads(picture.text["prompt"])["3"]["inputs"]["seed"] == 3
    assert json.loads(picture.text["workflow"]) == {"nodes": []} and "Denoising strength: 0.5" in \
        picture.text["parameters"]
    assert client.get("/view", params={"filename": "../../etc/passwd"}).status_code == 404
    assert client.get("/view", params={"filename": "green.png", "type": "input"}).status_code == 200
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    bad = client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_prompt"
    missing = client.post("/api/prompt", json={"prompt": txt2img("not-a-model")})
    assert missing.status_code == 400 and "4" in missing.json()["node_errors"]
    assert client.post("/upload/image", files={"image": ("../x.png", b"junk", "image/png")}).status_code == 422
    for path in ("/system_stats", "/embeddings", "/models/checkpoints", "/prompt"):
        assert client.get(path).status_code == 200, path


def test_keyed_server_takes_basic_auth_and_guards_the_websocket(tmp_path, sd1):
    pytest.importorskip("fastapi")
    import base64

    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from sfumato.server.app import create_app
    from test_server import LOCAL, _settings

    with TestClient(create_app(_settings(tmp_path, sd1, api_key="s3cret")), base_url=LOCAL) as client:
        assert client.get("/queue").status_code == 401
        basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
        assert client.get("/queue", headers={"Authorization": basic}).status_code == 200
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect(LOCAL.replace("http", "ws") + "/ws") as socket:
                socket.receive_text()
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect(LOCAL.replace("http", "ws") + "/ws", headers={"Authorization": basic,
                                                          "Origin": "http://evil.example"}) as socket:
                socket.receive_text()
        with client.websocket_connect(LOCAL.replace("http", "ws") + "/ws", headers={"Authorization": basic}) as socket:
            assert json.loads(socket.receive_text())["type"] == "status"


# --- the CLI and PNGs ------------------------------------------------------------------------------------------

def test_comfy_run_sets_inputs_and_a_comfyui_png_replays(sd1, tmp_path, capsys):
    from test_cli import run

    workflow = tmp_path / "workflow_api.json"
    workflow.write_text(json.dumps(txt2img(str(sd1))))
    code, out, _ = run(capsys, "comfy", "run", workflow, "--set", "3.seed=21", "--set", "6.text=a green pear",
                       "-o", tmp_path / "out", "--json")
    assert code == 0
    made = Image.open(json.loads(out)["images"][0])
    assert "a green pear" in made.text["parameters"] and "Seed: 21" in made.text["parameters"]
    comfy_only = tmp_path / "from-comfyui.png"  # what ComfyUI itself writes: the graph, no A1111 text
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", made.text["prompt"])
    made.save(comfy_only, pnginfo=info)
    code, out, _ = run(capsys, "info", comfy_only)
    assert code == 0 and "ComfyUI workflow" in out and "KSampler" in out
    code, _, _ = run(capsys, "replay", comfy_only, "-o", tmp_path / "again.png")
    assert code == 0 and np.array_equal(np.asarray(made), np.asarray(Image.open(tmp_path / "again.png")))
    ui_format = tmp_path / "ui.json"
    ui_format.write_text(json.dumps({"nodes": [{"id": 1, "type": "IPAdapterAdvanced"}], "links": []}))
    code, _, err = run(capsys, "comfy", "run", ui_format)
    assert code == 2 and "IPAdapterAdvanced" in err and err.count("\n") == 1


@pytest.mark.slow
def test_comfy_api_simplified_client_against_a_live_server(tmp_path, sd1, lora_files, inputs):  # noqa: F811
    """An unmodified ComfyUI client: queue a workflow, watch /ws, fetch the image from /history and /view; then an
    uploaded image through img2img + inpaint with a LoRA, a ControlNet and Real-ESRGAN in one workflow."""
    pytest.importorskip("comfy_api_simplified")
    import os
    import shutil

    from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper

    from sfumato.upscale.upscalers import list_upscalers
    from test_control import _controlnet
    from test_server import _free_port, _serve

    home = tmp_path / "home"  # the server's models home (the test's SFUMATO_HOME)
    os.environ["SFUMATO_HOME"] = str(home)  # restored by the autouse fixture's monkeypatch
    _controlnet(sd1, home / "models" / "controlnet" / "tiny-cn")
    (home / "models" / "loras").mkdir(parents=True)
    shutil.copy(lora_files[1], home / "models" / "loras" / "tiny-lora.safetensors")
    port = _free_port()
    server = _serve(sd1, tmp_path / "data", port)
    try:
        graph = txt2img("sd1")
        for node_id, node in graph.items():  # as ComfyUI's "Save (API Format)" writes them
            node["_meta"] = {"title": {"3": "KSampler", "9": "Save Image", "6": "Positive"}.get(node_id,
                                                                                           node["class_type"])}
        path = tmp_path / "workflow_api.json"
        path.write_text(json.dumps(graph))
        api = ComfyApiWrapper(f"http://127.0.0.1:{port}")
        workflow = ComfyWorkflowWrapper(str(path))
        workflow.set_node_param("KSampler", "seed", 42)
        workflow.set_node_param("Positive", "text", "a blue boat")
        images = api.queue_and_wait_images(workflow, "Save Image")
        assert len(images) == 1
        picture = Image.open(io.BytesIO(next(iter(images.values()))))
        assert picture.size == (SIZE, SIZE) and "a blue boat" in picture.text["parameters"]
        assert json.loads(picture.text["prompt"])["3"]["inputs"]["seed"] == 42
        stored = api.upload_image(inputs / "apple.png")  # the client's default subfolder
        graph = txt2img("sd1", seed=6, denoise=0.7)
        graph["10"] = {"class_type": "LoadImage", "inputs": {"image": f"{stored['subfolder']}/{stored['name']}"}}
        graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
        graph["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
        graph["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name":
                                                               "tiny-lora.safetensors", "strength_model": 0.8,
                                                               "strength_clip": 0.8}}
        graph["21"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny-cn"}}
        graph["22"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["21", 0],
                                                                   "image": ["10", 0], "strength": 0.8}}
        graph["3"]["inputs"].update(model=["20", 0], positive=["22", 0], latent_image=["12", 0])
        upscalers = [u.name for u in list_upscalers() if u.kind != "resample"]
        if upscalers:
            graph["30"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": upscalers[0]}}
            graph["31"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["30", 0],
                                                                             "image": ["8", 0]}}
            graph["9"]["inputs"]["images"] = ["31", 0]
        graph["40"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "raw"}}
        for node_id, node in graph.items():
            node["_meta"] = {"title": "Save Image" if node_id == "9" else f"n{node_id}"}
        path.write_text(json.dumps(graph))
        images = api.queue_and_wait_images(ComfyWorkflowWrapper(str(path)), "Save Image")
        picture = Image.open(io.BytesIO(next(iter(images.values()))))
        assert picture.size == ((4 * SIZE, 4 * SIZE) if upscalers else (SIZE, SIZE))
        import httpx

        history = httpx.get(f"http://127.0.0.1:{port}/history").json()
        raw = list(history.values())[-1]["outputs"]["40"]["images"][0]
        raw_png = Image.open(io.BytesIO(api.get_image(raw["filename"], raw["subfolder"], raw["type"])))
        request = json.loads(raw_png.text["sfumato"])["request"]
        assert request["mask"] and request["strength"] == 0.7 and request["loras"][0][1] == 0.8
        assert request["controls"][0]["weight"] == 0.8 and raw_png.size == (SIZE, SIZE)
    finally:
        server.terminate()
        server.wait(timeout=30)


TEMPLATES = {  # the official templates that use only core nodes -> the tiny model of each checkpoint they name
    "image_sdxl_simple": {"sd_xl_base_1.0.safetensors": "sdxl"},
    "sdxl_simple_example": {"sd_xl_base_1.0.safetensors": "sdxl", "sd_xl_refiner_1.0.safetensors": "sdxl-refiner"},
    "sdxl_refiner_prompt_example": {"sd_xl_base_1.0.safetensors": "sdxl",
                                    "sd_xl_refiner_1.0.safetensors": "sdxl-refiner"},
    "flux_schnell": {"flux1-schnell-fp8.safetensors": "flux"},
    "sd3.5_simple_example": {"sd3.5_large_fp8_scaled.safetensors": "sd3"},
}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_official_core_templates_run_on_tiny_models(template, models_dir):
    """`comfyui-workflow-templates-json`: the UI-format template converted to API format, its checkpoint names
    pointed at tiny models of the same families, sizes and steps made small; every output node gets its image."""
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    from pathlib import Path

    from sfumato.comfy.ui_format import to_api
    from sfumato.engine import Engine
    from sfumato.models.tiny import build_tiny

    path = Path(templates.__file__).parent / "templates" / f"{template}.json"
    prompt = to_api(json.loads(path.read_text()))
    checkpoints = {}
    for name, family in TEMPLATES[template].items():
        folder = models_dir / f"template-{family}"
        if not folder.exists():
            build_tiny(family, folder)
        checkpoints[name] = str(folder)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs.update(width=SIZE, height=SIZE)
        if node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            steps = inputs["steps"]
            inputs["steps"] = steps if isinstance(steps, list) else min(int(steps), 4)
            for key in ("start_at_step", "end_at_step"):  # keep the split where the template puts it
                if isinstance(inputs.get(key), int) and inputs[key] < 10000:
                    inputs[key] = round(inputs[key] * 4 / max(int(steps), 1))
    outputs, _ = Executor(Engine(), Names(checkpoints=checkpoints)).run(prompt)
    assert outputs and all(o.images.images[0].size == (SIZE, SIZE) for o in outputs)


def test_ui_format_conversion_refuses_what_it_cannot_run():
    from sfumato.comfy.ui_format import to_api
    from sfumato.errors import InvalidRequest

    workflow = {"nodes": [{"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["a.safetensors"]},
                          {"id": 2, "type": "Reroute", "inputs": [{"name": "", "link": 1}]},
                          {"id": 3, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "link": 2}],
                           "widgets_values": ["a red apple"]},
                          {"id": 4, "type": "Note", "widgets_values": ["a note"]}],
                "links": [[1, 1, 1, 2, 0, "CLIP"], [2, 2, 0, 3, 0, "CLIP"]]}
    api = to_api(workflow)
    assert api["3"]["inputs"] == {"text": "a red apple", "clip": ["1", 1]} and "4" not in api and "2" not in api
    for change, message in ((lambda w: w["nodes"][2].update(mode=4), "bypassed"),
                            (lambda w: w["nodes"][2].update(type="IPAdapterPlus"), "IPAdapterPlus")):
        broken = copy.deepcopy(workflow)
        change(broken)
        with pytest.raises(InvalidRequest, match=message):
            to_api(broken)


def test_split_flux_files_through_unet_and_dual_clip_loaders(tmp_path):
    """ComfyUI's FLUX layout — UNETLoader (transformer only), DualCLIPLoader (CLIP-L, T5), VAELoader (ae) — joined
    once into one file (`models.flowfile.assemble`) that gives the image the all-in-one file gives."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from sfumato.engine import Engine
    from sfumato.models.convert import convert
    from sfumato.models.tiny import build_tiny

    single = convert(build_tiny("flux", tmp_path / "flux"), tmp_path / "flux.safetensors")
    state = load_file(str(single))
    with safe_open(str(single), "pt") as handle:
        metadata = handle.metadata()
    parts = {"flux-transformer.safetensors": "model.diffusion_model.", "ae.safetensors": "first_stage_model.",
             "clip_l.safetensors": "text_encoders.clip_l.transformer.",
             "t5xxl.safetensors": "text_encoders.t5xxl.transformer."}
    for name, prefix in parts.items():
        save_file({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, str(tmp_path / name),
                  metadata=metadata if name == "flux-transformer.safetensors" else None)  # our file's configs
    names = Names(checkpoints={"flux.safetensors": str(single)}, vae={"ae.safetensors": str(tmp_path / "ae.safetensors")},
                  diffusion_models={"flux-transformer.safetensors": str(tmp_path / "flux-transformer.safetensors")},
                  text_encoders={n: str(tmp_path / n) for n in ("clip_l.safetensors", "t5xxl.safetensors")})
    executor = Executor(Engine(), names, tmp_path / "work")
    whole = executor.run(txt2img("flux.safetensors", seed=4, scheduler="simple", cfg=1.0))[0][0].images.images[0]
    split = txt2img("flux.safetensors", seed=4, scheduler="simple", cfg=1.0)
    split["4"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "flux-transformer.safetensors",
                                                         "weight_dtype": "default"}}
    split["30"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                             "clip_name2": "t5xxl.safetensors", "type": "flux"}}
    split["31"] = {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}
    split["6"]["inputs"]["clip"] = split["7"]["inputs"]["clip"] = ["30", 0]
    split["8"]["inputs"]["vae"] = ["31", 0]
    joined = executor.run(split)[0][0].images.images[0]
    assert np.array_equal(np.asarray(whole), np.asarray(joined))
    assert len(list((tmp_path / "work").glob("joined-*.safetensors"))) == 1
