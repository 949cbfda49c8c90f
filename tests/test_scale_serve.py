"""`sfumato serve --ray`: the same APIs on Ray Serve replicas sharing one job queue; a killed replica's jobs finish."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import sqlite3
import time

import httpx
import pytest
from PIL import Image

from sfumato.server.settings import ServerSettings

KEY = "serve-key"


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    from ray import serve

    from sfumato.scale import serve as ray_serve
    from test_server import _free_port

    port = _free_port()
    data = tmp_path_factory.mktemp("serve-data")
    settings = ServerSettings(port=port, data_dir=data, api_key=KEY, safety="off", store_lease_s=2.0,
                              batch_wait_ms=0)
    ray_serve.start(settings, ray_serve.ServeScale(replicas=2, cpus_per_replica=0.5))
    yield f"http://127.0.0.1:{port}", data
    serve.shutdown()


def _headers():
    return {"Authorization": f"Bearer {KEY}"}


def _replica_states():
    from ray import serve

    return dict(serve.status().applications["sfumato"].deployments["SfumatoReplica"].replica_states)


def test_two_replicas_answer_the_openai_a1111_and_native_apis_with_auth(served):
    openai = pytest.importorskip("openai")
    base, _ = served
    assert _replica_states() == {"RUNNING": 2}
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    result = client.images.generate(prompt="red apple", n=2, size="32x32", response_format="b64_json",
                                    extra_body={"seed": 5, "steps": 2})
    assert [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in result.data] == [(32, 32)] * 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).images.generate(prompt="x")
    a1111 = httpx.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "pear", "steps": 2, "seed": 5}, headers=_headers(),
                       timeout=60).json()
    assert len(a1111["images"]) == 1 and json.loads(a1111["info"])["seed"] == 5
    assert httpx.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 999}, headers=_headers()).status_code \
        == 422  # the same limits
    assert httpx.get(f"{base}/healthz", headers={"Host": "evil.example"}).status_code == 421  # the same Host guard
    job = httpx.post(f"{base}/api/v1/jobs", json={"prompt": "plum", "steps": 2}, headers=_headers()).json()
    with httpx.stream("GET", f"{base}{job['events']}", headers=_headers(), timeout=60) as events:
        names = [line.split(": ", 1)[1] for line in events.iter_lines() if line.startswith("event: ")]
    assert names[-1] == "completed"


def test_a_killed_replicas_jobs_complete_on_the_other(served):
    base, data = served
    ids = [httpx.post(f"{base}/api/v1/jobs", json={"prompt": f"job {i}", "seed": i, "steps": 40, "width": 64,
                                                    "height": 64}, headers=_headers()).json()["id"]
           for i in range(6)]
    db = sqlite3.connect(data / "jobs.sqlite3")
    deadline = time.time() + 60
    while not (running := db.execute("SELECT id, owner FROM jobs WHERE status='running'").fetchall()):
        assert time.time() < deadline
        time.sleep(0.05)
    job_id, owner = running[0]
    os.kill(int(owner.split(":")[1]), signal.SIGKILL)  # owner is host:pid:tag
    for each in ids:
        deadline = time.time() + 180
        while (job := httpx.get(f"{base}/api/v1/jobs/{each}", headers=_headers()).json())["status"] not in (
                "completed", "failed"):
            assert time.time() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "completed"
    assert db.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0] == 2
    deadline = time.time() + 120
    while _replica_states() != {"RUNNING": 2}:  # Ray Serve replaced the killed replica
        assert time.time() < deadline, _replica_states()
        time.sleep(0.5)


def test_the_declarative_builder_checks_its_arguments_and_keeps_the_key_out_of_the_config(monkeypatch, tmp_path):
    from ray.serve import Application

    from sfumato.errors import InvalidRequest
    from sfumato.scale import serve as ray_serve

    with pytest.raises(InvalidRequest, match="unknown sfumato application arguments: api_key"):
        ray_serve.build({"api_key": "in-the-yaml"})
    with pytest.raises(InvalidRequest, match="--autoscale is MIN,MAX"):
        ray_serve.build({"autoscale": "4"})
    with pytest.raises(InvalidRequest, match="--autoscale is MIN,MAX with"):
        ray_serve.build({"autoscale": "3,1"})
    monkeypatch.delenv("SFUMATO_API_KEY", raising=False)
    assert isinstance(ray_serve.build({"data_dir": str(tmp_path), "replicas": "2"}), Application)
    monkeypatch.setenv("SFUMATO_API_KEY", "secret")
    app = ray_serve.build({"data_dir": str(tmp_path), "autoscale": "1,4", "allowed_hosts": "sfumato.example.com"})
    assert isinstance(app, Application)


def test_the_kuberay_example_deploys_arguments_the_builder_takes(monkeypatch, tmp_path):
    """docs/kuberay/sfumato-rayservice.yaml: valid YAML, its application points at the builder, and the builder takes
    its arguments (paths swapped for this machine's)."""
    from pathlib import Path

    import yaml
    from ray.serve import Application

    from sfumato.scale import serve as ray_serve

    manifest = yaml.safe_load((Path(__file__).parents[1] / "docs/kuberay/sfumato-rayservice.yaml").read_text())
    application = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]
    assert application["import_path"] == "sfumato.scale.serve:build" and application["route_prefix"] == "/"
    args = dict(application["args"], model=None, data_dir=str(tmp_path))
    monkeypatch.setenv("SFUMATO_API_KEY", "from-a-secret")
    assert isinstance(ray_serve.build(args), Application)
