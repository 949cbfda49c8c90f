"""Schema-driven HTTP fuzzing (Schemathesis) of the whole OpenAPI of a live `sfumato serve` on a tiny model:
every generated request, valid or not, must get an answer below 500 (or 501, a feature refused by design:
`/sdapi/v1/interrogate`).

CI runs a small number of examples per operation; `python scripts/fuzz_http.py` runs the full ≥ 2,000-request
campaign with the same test (SFUMATO_FUZZ_EXAMPLES sets the examples per operation).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

EXAMPLES = int(os.environ.get("SFUMATO_FUZZ_EXAMPLES", "10"))
REPORT = os.environ.get("SFUMATO_FUZZ_REPORT")  # where the campaign's counts go (scripts/fuzz_http.py)
COUNTS = {"requests": 0, "server_errors": 0, "by_status": {}, "operations": set()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, sd1):
    port = _free_port()
    data = tmp_path_factory.mktemp("fuzz-server")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFUMATO_HOME": str(data / "home")}
    # small limits keep every accepted generation cheap; the fuzzer still reaches the limit checks
    process = subprocess.Popen([sys.executable, "-m", "sfumato.cli", "serve", "--model", str(sd1), "--port", str(port),
                                "--data-dir", str(data / "server"), "--safety", "off", "--max-side", "64",
                                "--max-steps", "2", "--max-images", "2", "--queue-size", "8", "--batch-wait-ms", "0"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("server did not start: " + process.stderr.read())
    yield base
    process.terminate()
    _, err = process.communicate(timeout=30)
    assert "Traceback" not in err, err[-3000:]  # the server logs bugs; the fuzzer must not have found any
    if REPORT:
        with open(REPORT, "w") as handle:
            json.dump({**COUNTS, "operations": sorted(COUNTS["operations"])}, handle, indent=2)


def _operations(base: str) -> list:
    loaded = schemathesis.openapi.from_url(f"{base}/openapi.json")
    return [result.ok() for result in loaded.get_all_operations()]


def test_no_server_errors(live_server):
    """Every operation of the OpenAPI gets EXAMPLES generated requests (valid and invalid); none may be a 5xx."""
    from hypothesis import given

    failures = []
    operations = _operations(live_server)
    assert len(operations) >= 20  # the native, OpenAI and A1111 routes are all in the schema

    for operation in operations:
        @given(operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def fuzz(case):
            response = case.call(base_url=live_server, timeout=120)
            COUNTS["requests"] += 1
            COUNTS["operations"].add(operation.label)
            key = str(response.status_code)
            COUNTS["by_status"][key] = COUNTS["by_status"].get(key, 0) + 1
            if response.status_code >= 500 and response.status_code != 501:  # 501: a feature refused by design
                COUNTS["server_errors"] += 1
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")
            elif response.status_code >= 400 and "application/json" in str(response.headers.get("content-type")):
                body = response.json()
                assert "detail" in body or "error" in body, body  # errors are JSON a client can read

        fuzz()
    assert COUNTS["requests"] >= EXAMPLES * len(operations) * 2 // 5  # routes without inputs get one request each
    assert not failures, "\n".join(failures[:20])
