"""`sfumato serve` as a subprocess on a free loopback port, for the benchmark scripts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*flags: str, timeout_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Start `sfumato serve FLAGS` and wait for /healthz; returns the process (stderr piped) and its base URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "sfumato.cli", "serve", "--port", str(port), *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            if process.poll() is not None:
                raise SystemExit("server exited: " + process.stderr.read()[-2000:])
            time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start")
