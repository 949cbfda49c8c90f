"""Replay issue 36's hostile requests against a live `sfumato serve` (embedded model, an API key, --max-side 64) and
print, per request, the answer, the seconds to it and the server's peak RSS growth (Linux /proc; VmHWM reset before
each request). The numbers of SECURITY.md's "Adversarial inputs" table come from this script.

    python scripts/adversarial_repros.py [--model PATH]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, PngImagePlugin

KEY = "adversarial-repro-key"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the served model (default: the embedded one)")
    args = parser.parse_args()
    port = _free_port()
    data = Path(tempfile.mkdtemp(prefix="sfumato-adversarial-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFUMATO_HOME": str(data / "home"), "SFUMATO_API_KEY": KEY}
    command = [sys.executable, "-m", "sfumato.cli", "serve", "--port", str(port), "--data-dir", str(data / "server"),
               "--max-side", "64", *(["--model", args.model] if args.model else [])]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_up(port, server)
        rows = [run(port, server.pid, name, send) for name, send in repros(port)]
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    print("| request | answer | seconds | server peak RSS growth |")
    print("|---|---|---|---|")
    for name, answer, seconds, growth in rows:
        print(f"| {name} | {answer} | {seconds:.3f} | {growth / 2**20:+.1f} MB |")
    if "Traceback" in err:
        print("the server logged a traceback:\n" + err[-3000:], file=sys.stderr)
        return 1
    return 0


def repros(port: int):
    auth = {"Authorization": f"Bearer {KEY}"}

    def png_info(text: str):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        return lambda: _post(port, "/sdapi/v1/png-info", {"image": _b64(Image.new("RGB", (8, 8)), info)}, auth)

    def job(body: dict):
        return lambda: _post(port, "/api/v1/jobs", body, auth)

    gif = io.BytesIO()
    frames = [Image.new("P", (2000, 2000), k) for k in range(40)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    video = base64.b64encode(gif.getvalue()).decode()
    tall = _b64(Image.new("RGB", (16, 1024), "white"))
    return [
        ("300 MB JSON to /sdapi/v1/img2img, no key", lambda: _stream(port, "/sdapi/v1/img2img", 300_000_000, {})),
        ("300 MB JSON to /sdapi/v1/img2img, with the key", lambda: _stream(port, "/sdapi/v1/img2img", 300_000_000,
                                                                            auth)),
        ('png-info, `parameters` = "a " * 20000 (40 KB)', png_info("a " * 20000)),
        ("png-info, a 1 MB `parameters` chunk", png_info("a " * 500_000)),
        ('tokens, "a" + " " * 40000 + "b"', lambda: _post(port, "/api/v1/tokens", {"prompt": "a" + " " * 40000 + "b"},
                                                          auth)),
        ('tokens, "a" + " " * 3998 + "b" (at the limit)', lambda: _post(
            port, "/api/v1/tokens", {"prompt": "a" + " " * 3998 + "b"}, auth)),
        ("job, a 40,002-character direction", job({"prompt": "a", "directions": [["x" * 40002, "y", 1]]})),
        ("job, a 1 MB p2p_source", job({"prompt": "a", "p2p_source": "x" * 2**20})),
        ('job, "{|}" * 1333', job({"prompt": "{|}" * 1333})),
        ("job, 1,999 nested parentheses", job({"prompt": "(" * 1999 + "a"})),
        ("job, 666 AND parts", job({"prompt": "a AND " * 666})),
        ("job, <lora:/etc/shadow:1>", job({"prompt": "a <lora:/etc/shadow:1>"})),
        ("job, <lora:/nonexistent:1>", job({"prompt": "a <lora:/nonexistent:1>"})),
        ("controlnet/detect, 16x1024 PNG at processor_res 1448", lambda: _post(port, "/controlnet/detect", {
            "controlnet_module": "canny", "controlnet_input_images": [tall], "controlnet_processor_res": 1448}, auth)),
        ("animation, video = 35 KB GIF of 40 frames of 2000x2000", lambda: _animation(port, {
            "mode": "video", "video": video}, auth)),
        ("animation, video = GIF89a + garbage", lambda: _animation(port, {
            "mode": "video", "video": base64.b64encode(b"GIF89a" + bytes(range(256)) * 8).decode()}, auth)),
        ("animation, loopback from a 128x128 image (--max-side 64)", lambda: _animation(port, {
            "mode": "loopback", "frames": 2, "init_image": _b64(Image.new("RGB", (128, 128)))}, auth)),
        ("/healthz with a key set", lambda: _get(port, "/healthz", {})),
    ]


def run(port: int, pid: int, name: str, send) -> tuple[str, str, float, int]:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart the peak-RSS counter
    before = _memory(pid)["VmRSS"]
    start = time.perf_counter()
    answer = send()
    seconds = time.perf_counter() - start
    return name, answer, seconds, _memory(pid)["VmHWM"] - before


def _stream(port: int, path: str, length: int, headers: dict) -> str:
    """Declare `length` bytes and send them in 1 MB pieces until the server answers (or closes)."""
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
            f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        piece, sent, answer = b" " * 2**20, 0, b""
        sock.setblocking(False)
        while sent < length and not answer:
            try:
                answer = sock.recv(65536)
                break
            except BlockingIOError:
                pass
            try:
                sent += sock.send(piece)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = answer.split(b" ", 2)[1].decode() if answer else "closed"
    body = answer.partition(b"\r\n\r\n")[2]
    message = json.loads(body)["error"]["message"] if body.startswith(b"{") else ""
    return f"{status} ({sent // 2**20} MB sent): {message}"


def _post(port: int, path: str, body: dict, headers: dict) -> str:
    import httpx

    r = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, headers=headers, timeout=600)
    return _answer(r)


def _get(port: int, path: str, headers: dict) -> str:
    import httpx

    r = httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=60)
    return f"{r.status_code} {r.text}"


def _animation(port: int, body: dict, headers: dict) -> str:
    import httpx

    base = f"http://127.0.0.1:{port}"
    r = httpx.post(f"{base}/api/v1/animations", json={"generation": {"prompt": "a", "steps": 2}, **body},
                   headers=headers, timeout=60)
    if r.status_code != 202:
        return _answer(r)
    while True:
        job = httpx.get(f"{base}/api/v1/jobs/{r.json()['id']}", headers=headers, timeout=60).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return f"job {job['status']}: {job.get('error') or ''}"
        time.sleep(0.05)


def _answer(r) -> str:
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = ""
    return f"{r.status_code}: {message[:120]}"


def _b64(image: Image.Image, info=None) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def _memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(port: int, server) -> None:
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server stopped: " + server.stderr.read()[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("the server did not start")


if __name__ == "__main__":
    sys.exit(main())
