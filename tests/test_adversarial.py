"""Small hostile inputs cost bounded time and memory: the repros of issue 36, kept found.

Text: every parser over user text is linear (time(2n) / time(n) <= 2.5 on adversarial inputs) and every text field
goes through one limit. Pixels: every path that makes or decodes pixels checks one budget first. Bodies: the API key
and the body size are checked before a byte of the body is read. Names, not paths, over the network.
"""

from __future__ import annotations

import base64
import gc
import io
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from sfumato.animation.keyframes import parse_numbers, parse_prompts
from sfumato.animation.video import read_frames
from sfumato.control import preprocessors
from sfumato.engine import Engine
from sfumato.errors import InvalidRequest, ModelNotFound, PromptBlocked, PromptSyntaxError, SfumatoError
from sfumato.limits import Limits, OverBudget, and_parts, nesting
from sfumato.output import parse_infotext
from sfumato.pipelines.images import load_image
from sfumato.prompts.attention import MAX_WEIGHT, parse_prompt_attention, split_break
from sfumato.prompts.dynamic import has_dynamic, random_prompt
from sfumato.prompts.flags import split_flags
from sfumato.prompts.lora_tags import extract_lora_tags
from sfumato.prompts.schedule import has_syntax, prompt_schedule, split_and
from sfumato.requests import GenerationRequest, UpscaleRequest
from sfumato.safety.policy import PromptPolicy

# ------------------------------------------------------------------ linear-time text handling

PARSERS = {
    "emphasis": parse_prompt_attention,
    "BREAK": split_break,
    "editing": lambda text: prompt_schedule(text, 20),
    "AND weights": split_and,
    "syntax": has_syntax,
    "dynamic": lambda text: random_prompt(text, random.Random(0)),
    "LoRA tags": extract_lora_tags,
    "flags": split_flags,
    "infotext": parse_infotext,
    "keyframes": parse_prompts,
    "schedules": lambda text: parse_numbers(text, "strength"),
    "limits": Limits(max_prompt_chars=10**9, max_nesting=10**9, max_and_parts=10**9).check_text,
    "policy": PromptPolicy.load().category_of,
}
ADVERSARIAL = {  # repeated separators, unbalanced brackets, long whitespace runs
    "words": lambda k: "a " * k,
    "whitespace run": lambda k: "a" + " " * (2 * k) + "b",
    "open rounds": lambda k: "(" * (2 * k),
    "nested rounds": lambda k: "(a" * k + ")" * k,
    "open squares": lambda k: "[a|" * k,
    "editing colons": lambda k: "[a:" * k,
    "braces": lambda k: "{" * (2 * k),
    "variant flood": lambda k: "{|}" * k,
    "AND": lambda k: "a AND " * k,
    "LoRA openers": lambda k: "<lora:" * k,
    "colons": lambda k: ": " * k,
    "digits": lambda k: "0:(" + "1" * (2 * k) + "x",
    "BREAK": lambda k: "BREAK " * k,
    "escapes": lambda k: "\\(" * k,
    "fields": lambda k: "Steps: 2, " * k,
}


def _seconds(parse, text: str) -> float:
    best = float("inf")
    gc.disable()
    try:
        for _ in range(3):
            start = time.perf_counter()
            try:
                parse(text)
            except SfumatoError:
                pass
            best = min(best, time.perf_counter() - start)
    finally:
        gc.enable()
    return best


@pytest.mark.slow
@pytest.mark.parametrize("parser", list(PARSERS))
def test_every_text_parser_is_linear_on_adversarial_inputs(parser):
    parse = PARSERS[parser]
    for name, make in ADVERSARIAL.items():
        k = 2000
        while _seconds(parse, make(k)) < 0.01 and k < 128000:  # big enough to time above the noise
            k *= 2
        for attempt in range(4):  # a shared CI machine may pause one run
            double = _seconds(parse, make(2 * k))
            ratio = double / max(_seconds(parse, make(k)), 1e-6)
            if ratio <= 2.5 or double < 0.005:  # under 5 ms at the largest size: bounded, too fast to time
                break
        if double < 0.005:
            continue
        assert ratio <= 2.5, f"{parser} on {name!r}: time(2n)/time(n) = {ratio:.2f} at n = {len(make(k))}"


ATOMS = ["a", " ", "(", ")", "[", "]", "{", "}", "|", ":", "1.5", "\\", "AND", "BREAK", "<lora:", ">", "__", ",",
         "--no ", "\n", '"']


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=8), st.integers(1, 600))
def test_long_repetitive_prompts_are_refused_or_parsed_quickly(pattern, repeat):
    text = ("".join(pattern) * repeat)[:4000]
    start = time.perf_counter()
    for parse in PARSERS.values():
        try:
            parse(text)
        except SfumatoError:
            pass
    try:
        Limits().check_text(text)
    except InvalidRequest:
        pass
    assert time.perf_counter() - start < 2.0


def test_the_text_limit_counts_length_nesting_and_and_parts():
    limits = Limits()
    assert nesting("((a) [b {c}]) \\(\\(") == 3 and nesting(")))(") == 1
    assert and_parts("a AND b AND c") == 3 and and_parts("BAND ANDY AND_x") == 1
    for text, message in (("x" * 4001, "longer than 4000"), ("(" * 1999 + "a", "1999 deep"),
                          ("a AND " * 666, "667 AND parts")):
        with pytest.raises(InvalidRequest, match=message):
            limits.check_text(text)
    limits.check_text("(" * 32 + "a AND b" * 10)


def test_a_variant_flood_is_one_clear_error_not_a_recursion():
    with pytest.raises(PromptSyntaxError, match="more than 256 variants"):
        has_dynamic("{|}" * 1333)
    assert random_prompt("{a|b} " * 200, random.Random(0)).count(" ") == 200  # many choices, no recursion
    with pytest.raises(PromptSyntaxError, match="deeper than 12"):
        random_prompt("{a|" * 13 + "b" + "}" * 13, random.Random(0))


def test_emphasis_weights_stay_finite():
    weights = [w for _, w in parse_prompt_attention("(" * 300 + "a" + ")" * 300)]
    assert max(weights) == MAX_WEIGHT
    assert parse_prompt_attention("(a:99999) b")[0] == ("a", MAX_WEIGHT)
    assert parse_prompt_attention("((a:1.5) b) c") == [("a", pytest.approx(1.65)), (" b", 1.1), (" c", 1.0)]


# ------------------------------------------------------------------ the engine: one text limit, the policy, names


@pytest.fixture(scope="module")
def engine(sd1):
    return Engine(sd1)


@pytest.mark.parametrize("fields, message", [
    ({"prompt": "{|}" * 1333}, "more than 256 variants"),
    ({"prompt": "(" * 1999 + "a"}, "nests brackets 1999 deep"),
    ({"prompt": "a AND " * 666}, "667 AND parts"),
    ({"prompt": "a", "directions": [["x" * 40002, "y", 1.0]]}, "directions\\[0\\] is longer than 4000"),
    ({"prompt": "a", "p2p_source": "x" * 2**20}, "p2p_source is longer than 4000"),
    ({"prompt": "a", "styles": ["s"] * 33}, "at most 32 styles"),
])
def test_every_text_field_meets_the_limit(engine, fields, message):
    start = time.perf_counter()
    with pytest.raises(InvalidRequest, match=message):
        engine.resolve(GenerationRequest.from_dict(fields))
    assert time.perf_counter() - start < 1.0


def test_the_policy_reads_every_text_that_conditions_the_image(engine, tmp_path, monkeypatch):
    home = Path(os.environ["SFUMATO_HOME"])
    (home / "wildcards").mkdir(parents=True)
    (home / "wildcards" / "who.txt").write_text("naked person\n")
    (home / "styles.csv").write_text("name,prompt,negative_prompt\nbare,{prompt} naked person,\n")
    blocked = [{"prompt": "a cat", "directions": [["naked person", "a cat", 1.0]]},
               {"prompt": "a cat", "directions": [["a cat", "naked person", -1.0]]},
               {"prompt": "a cat", "p2p_source": "naked person"},
               {"prompt": "a cat", "negative_prompt": "naked person", "cfg_scale": 0.5},
               {"prompt": "a cat", "styles": ["bare"]},
               {"prompt": "a __who__"}]
    for fields in blocked:
        with pytest.raises(PromptBlocked):
            engine.resolve(GenerationRequest.from_dict(fields))
    # a negative prompt steers away from its text at any CFG scale >= 1: allowed
    engine.resolve(GenerationRequest("a cat", negative_prompt="naked person", cfg_scale=7.0))
    from sfumato.animation import AnimationRequest
    from sfumato.animation.run import preflight

    for fields in ({"mode": "story", "subject": "a cat", "scenes": ["in a garden", "naked person"]},
                   {"mode": "travel", "frames": 4, "prompts": {0: "a cat", 3: "naked person"}}):
        with pytest.raises(PromptBlocked):
            preflight(engine, AnimationRequest(GenerationRequest("", steps=2), **fields).validate())


def _lora_file(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(path))
    return path


def test_lora_tags_name_files_only_inside_the_models_home_for_a_server(sd1, tmp_path):
    outside = _lora_file(tmp_path / "elsewhere" / "secret.safetensors")
    inside = _lora_file(Path(os.environ["SFUMATO_HOME"]) / "models" / "loras" / "style.safetensors")
    served = Engine(sd1, paths=False)
    answers = []
    for tag in (str(outside), "/nonexistent/x.safetensors", "../../elsewhere/secret", "/etc/shadow"):
        with pytest.raises(ModelNotFound) as caught:
            served.resolve(GenerationRequest(f"a cat <lora:{tag}:1>"))
        answers.append(str(caught.value).replace(repr(tag), "NAME"))
    assert len(set(answers)) == 1  # "not allowed" and "not there" are one answer
    assert served.resolve(GenerationRequest("a cat <lora:style:0.5>")).loras == [(str(inside), 0.5)]
    assert Engine(sd1).resolve(GenerationRequest(f"a cat <lora:{outside}:1>")).loras == [(str(outside), 1.0)]  # CLI


# ------------------------------------------------------------------ one pixel budget, every path


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header: a few bytes, no pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))


def test_pixel_budget_generation_hires_sd_upscale_and_control_maps(sd1, tmp_path):
    small = Engine(sd1, limits=Limits(max_side=64, max_pixels=64 * 64))
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64)).save(init)
    for fields, message in (({"width": 128, "height": 64}, "width 128 is larger than the limit of 64"),
                            ({"width": 64, "height": 64, "hires_scale": 2.0}, "hires fix image of 128x128"),
                            ({"width": 64, "height": 64, "sd_upscale": 2.0, "init_image": str(init)},
                             "SD upscale image of 128x128")):
        with pytest.raises(InvalidRequest, match=message):
            small.resolve(GenerationRequest("a", steps=2, **fields))
    tall = tmp_path / "tall.png"
    Image.new("RGB", (16, 1024), "white").save(tall)
    unit = {"module": "canny", "image": str(tall), "processor_res": 1448, "model": None}
    with pytest.raises(InvalidRequest, match="1448x92672 is more than the limit of 4096 pixels"):
        small.resolver._resolve_units(GenerationRequest("a", controls=[unit]), small.describe())
    start = time.perf_counter()
    with pytest.raises(InvalidRequest, match="1448x92672"):
        preprocessors.run("canny", Image.open(tall), 1448, max_pixels=2048 * 2048)
    assert time.perf_counter() - start < 0.5


def test_pixel_budget_upscaling_and_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(20000, 20000))
    start = time.perf_counter()
    with pytest.raises(OverBudget, match="pixels"):
        load_image(str(bomb), "image")
    assert time.perf_counter() - start < 0.5
    engine = Engine(limits=Limits(max_upload_pixels=64 * 64, max_upscaled_pixels=128 * 128))
    with pytest.raises(OverBudget, match="the image to upscale of 65x64"):
        engine.upscale(Image.new("RGB", (65, 64)), UpscaleRequest("Lanczos", 2.0))
    with pytest.raises(InvalidRequest, match="the upscaled image of 256x256"):
        engine.upscale(Image.new("RGB", (64, 64)), UpscaleRequest("Lanczos", 4.0))
    assert engine.upscale(Image.new("RGB", (32, 32)), UpscaleRequest("Lanczos", 2.0)).size == (64, 64)


def test_pixel_budget_video_frames(tmp_path):
    gif = tmp_path / "big.gif"
    frames = [Image.new("P", (2000, 2000), k) for k in range(40)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    limits = Limits()
    start = time.perf_counter()
    with pytest.raises(OverBudget, match="40 frames of 2000x2000 are more than the limit"):
        read_frames(gif, 240, limits.max_upload_pixels, limits.max_decoded_pixels)
    assert time.perf_counter() - start < 2.0  # refused from the header, before decoding
    with pytest.raises(OverBudget, match="a frame of 2000x2000"):
        read_frames(gif, 1, 1000 * 1000, limits.max_decoded_pixels)
    assert len(read_frames(gif, 3, limits.max_upload_pixels, limits.max_decoded_pixels)) == 3
    garbage = tmp_path / "garbage.gif"
    garbage.write_bytes(b"GIF89a" + bytes(range(256)) * 4)
    with pytest.raises(InvalidRequest, match="not a readable video"):
        read_frames(garbage, 10)


@pytest.mark.slow
def test_a_bomb_to_sfumato_upscale_is_one_line(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(20000, 20000))
    done = subprocess.run([sys.executable, "-m", "sfumato.cli", "upscale", str(bomb), "--upscaler", "Lanczos",
                           "-o", str(tmp_path / "out.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "pixels" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------ HTTP: in-process

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sfumato.server.app import create_app  # noqa: E402
from sfumato.server.settings import ServerSettings  # noqa: E402
from test_server import _free_port, _wait  # noqa: E402

LOCAL = "http://127.0.0.1:7860"


def _b64(image: Image.Image, info: PngImagePlugin.PngInfo | None = None) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory, sd1):
    data = tmp_path_factory.mktemp("adversarial-server")
    limits = Limits(max_side=64, max_pixels=64 * 64, max_steps=4, max_images=2)
    settings = ServerSettings(model=str(sd1), data_dir=data / "server", safety="off", limits=limits,
                              batch_wait_ms=0)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        yield client, data


def test_http_text_repros_answer_fast(server):
    client, _ = server
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a " * 20000)
    start = time.perf_counter()
    r = client.post("/sdapi/v1/png-info", json={"image": _b64(Image.new("RGB", (8, 8)), info)})
    assert r.status_code == 200 and time.perf_counter() - start < 1.0
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "x" * 200_000)
    assert client.post("/sdapi/v1/png-info", json={"image": _b64(Image.new("RGB", (8, 8)), info)}).status_code == 422
    for body in ({"prompt": "a" + " " * 40000 + "b"}, {"prompt": "(" * 1999 + "a"}):
        start = time.perf_counter()
        r = client.post("/api/v1/tokens", json=body)
        assert r.status_code == 422 and time.perf_counter() - start < 1.0, r.text
    for body in ({"prompt": "{|}" * 1333}, {"prompt": "a", "directions": [["x" * 40002, "y", 1]]},
                 {"prompt": "a", "p2p_source": "x" * 2**20}, {"prompt": "(" * 1999 + "a"}, {"prompt": "a AND " * 40}):
        r = client.post("/api/v1/jobs", json=body)
        assert r.status_code == 422 and "Traceback" not in r.text and r.json()["error"]["message"], r.text
    r = client.post("/api/v1/jobs", json={"prompt": "a cat", "directions": [["naked person", "a cat", 1]]})
    assert r.status_code == 400 and "safety policy" in r.json()["error"]["message"]


def test_http_bodies_are_capped_per_route(server):
    client, _ = server
    r = client.post("/api/v1/tokens", content=b'{"prompt": "' + b"a" * (2**20 + 10) + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit of 1 MiB" in r.json()["error"]["message"]
    r = client.post("/sdapi/v1/img2img", content=b"{" + b" " * (2**20 + 10) + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422  # image routes take up to max_body_bytes; this one reached the JSON parser


def test_http_control_maps_and_animations_meet_the_pixel_budget(server, tmp_path):
    client, _ = server
    tall = _b64(Image.new("RGB", (16, 1024), "white"))
    start = time.perf_counter()
    r = client.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [tall],
                                                "controlnet_processor_res": 1448})
    assert r.status_code == 422 and "1448x92672" in r.json()["error"]["message"]
    assert time.perf_counter() - start < 1.0
    big = _b64(Image.new("RGB", (128, 128), "red"))
    for body in ({"mode": "loopback", "frames": 2, "init_image": big},
                 {"mode": "interpolate", "frames": 3, "images": [big, big]}):
        r = client.post("/api/v1/animations", json={**body, "generation": {"prompt": "a", "steps": 2}})
        assert r.status_code == 422 and "larger than the limit of 64" in r.json()["error"]["message"], r.text
    gif = io.BytesIO()
    frames = [Image.new("P", (128, 128), k) for k in range(2)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    r = client.post("/api/v1/animations", json={"mode": "video", "frames": 2, "video": base64.b64encode(
        gif.getvalue()).decode(), "generation": {"prompt": "a", "steps": 2}})
    job = _wait(client, r.json()["id"])
    assert job["status"] == "failed" and "larger than the limit of 64" in job["error"]


def test_http_names_not_paths(server, sd1, tmp_path):
    client, data = server
    outside = _lora_file(tmp_path / "outside.safetensors")
    answers = []
    for tag in (str(outside), "/nonexistent.safetensors", "/etc/shadow"):
        r = client.post("/api/v1/jobs", json={"prompt": f"a <lora:{tag}:1>", "steps": 2})
        assert r.status_code == 404, r.text
        answers.append(re.sub(r"'[^']*'", "NAME", r.json()["error"]["message"]))
    assert len(set(answers)) == 1 and str(tmp_path) not in "".join(answers)
    r = client.post("/api/v1/jobs", json={"prompt": "a", "styles": ["nope"], "steps": 2})
    assert r.status_code == 422 and str(data) not in r.text and os.environ["SFUMATO_HOME"] not in r.text
    r = client.post("/api/v1/jobs", json={"prompt": "a", "steps": 2, "seed": 1,
                                          "init_image": _b64(Image.new("RGB", (64, 64)))})
    job = _wait(client, r.json()["id"])
    text = json.dumps(job) + json.dumps(client.get("/api/v1/jobs").json())
    assert job["status"] == "completed" and job["request"]["model"] == "sd1"
    for secret in (str(data), str(sd1), str(Path.home()), str(Path.cwd())):
        assert secret not in text


# ------------------------------------------------------------------ HTTP: a live keyed server, raw sockets

KEY = "k3y-for-tests"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, sd1):
    port = _free_port()
    data = tmp_path_factory.mktemp("keyed-server")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFUMATO_HOME": str(data / "home"), "SFUMATO_API_KEY": KEY}
    process = subprocess.Popen([sys.executable, "-m", "sfumato.cli", "serve", "--model", str(sd1), "--port", str(port),
                                "--data-dir", str(data / "server"), "--safety", "off", "--max-side", "64",
                                "--max-steps", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if _request(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("server did not start: " + process.stderr.read())
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _request(port: int, method: str, path: str, headers: dict | None = None, body: bytes = b"",
             declared: int | None = None) -> tuple[int, dict, float]:
    """One raw HTTP/1.1 request; `declared` sends that Content-Length with only `body` of it. Returns the status,
    the JSON body and the seconds to the answer."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if declared is not None or body:
        lines += ["Content-Type: application/json", f"Content-Length: {declared if declared is not None else len(body)}"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        start = time.perf_counter()
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        seconds = time.perf_counter() - start
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, (json.loads(payload) if payload.startswith(b"{") else {}), seconds


def _memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_300_mb_body_is_refused_before_it_is_read(keyed):
    port, pid = keyed
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart the peak-RSS counter (VmHWM)
    before = _memory(pid)["VmRSS"]
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {KEY}"}, 413)):
        code, body, seconds = _request(port, "POST", "/sdapi/v1/img2img", headers, b'{"prompt": "', 300_000_000)
        assert code == status and body["error"]["code"] == status and seconds < 0.5
    assert _memory(pid)["VmHWM"] - before < 20 * 2**20
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # chunked: counted while it streams
        sock.sendall((f"POST /api/v1/tokens HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
                      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        answer = b""
        for _ in range(64):  # up to 4 MiB in 64 KiB chunks; the budget of this route is 1 MiB
            try:
                sock.sendall(b"10000\r\n" + b" " * 65536 + b"\r\n")
            except OSError:
                break
            time.sleep(0.01)
            sock.setblocking(False)
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_keyed_healthz_says_only_ok_and_stays_responsive_under_hostile_text(keyed):
    port, _ = keyed
    code, body, _ = _request(port, "GET", "/healthz")
    assert code == 200 and body == {"status": "ok"}
    auth = {"Authorization": f"Bearer {KEY}"}
    worst = [json.dumps({"prompt": text}).encode() for text in
             ("a" + " " * 3998 + "b", "[a|" * 1333, "(a" * 32 + " a" * 1900, "a AND " * 31 + "BREAK " * 400)]
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            for body in worst:
                _request(port, "POST", "/api/v1/tokens", auth, body)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(0.2)
        latencies = [_request(port, "GET", "/healthz")[2] for _ in range(20)]
    finally:
        stop.set()
        thread.join(timeout=60)
    assert max(latencies) < 1.0, latencies


# ------------------------------------------------------------------ fuzzing the budgets: bodies and extreme aspects


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 700), min_size=0, max_size=12), st.booleans(), st.sampled_from(["/api/v1/tokens",
                                                                                             "/api/v1/jobs"]))
def test_the_gate_never_lets_a_route_read_past_its_budget(chunks, declared, path):
    import asyncio

    from sfumato.server.gate import RequestGate

    limits = Limits(max_body_bytes=2000, max_text_body_bytes=1000)
    budget = 2000 if path == "/api/v1/jobs" else 1000
    seen = {"bytes": 0}

    async def app(scope, receive, send):  # reads the whole body, then answers 200
        while True:
            message = await receive()
            seen["bytes"] += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    total = sum(chunks)
    headers = [(b"host", b"127.0.0.1")] + ([(b"content-length", str(total).encode())] if declared else [])
    messages = [{"type": "http.request", "body": b"x" * n, "more_body": i < len(chunks) - 1}
                for i, n in enumerate(chunks)] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(RequestGate(app, None, limits)(scope, receive, send))
    status = sent[0]["status"]
    assert status == (413 if total > budget else 200)
    assert seen["bytes"] <= budget + max(chunks, default=0)  # at most the chunk that crossed the budget
    if declared and total > budget:
        assert seen["bytes"] == 0  # refused from the header alone


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64), st.integers(16, 4096))
def test_control_maps_of_extreme_aspect_ratios_stay_within_the_budget(width, height, resolution):
    image = Image.new("RGB", (width * 4 if width > height else width, height * 4 if height >= width else height))
    try:
        mapped = preprocessors.run("canny", image, resolution, max_pixels=256 * 256)
    except InvalidRequest as exc:
        assert "more than the limit of 65536 pixels" in str(exc)
    else:
        assert mapped.width * mapped.height <= 256 * 256
