"""Browser-facing defences: forged Host headers (DNS rebinding) and cross-site writes (CSRF) are refused on every
route, with or without an API key; the same-origin UI and header-less API clients keep working."""

from __future__ import annotations

import io

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sfumato.errors import ModelNotFound  # noqa: E402
from sfumato.server.app import create_app  # noqa: E402
from sfumato.server.guard import HostPolicy, split_host  # noqa: E402
from sfumato.server.settings import ServerSettings  # noqa: E402

LOCAL = "http://127.0.0.1:7860"
SMALL = {"width": 64, "height": 64, "steps": 1}


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def app_factory(tmp_path_factory, sd1):
    made = {}

    def make(**changes):
        key = tuple(sorted(changes.items()))
        if key not in made:
            data = tmp_path_factory.mktemp("guard")
            settings = ServerSettings(**{"model": str(sd1), "data_dir": data, "safety": "off", **changes})
            made[key] = create_app(settings)
        return made[key]

    return make


@pytest.fixture(scope="module")
def client(app_factory):
    with TestClient(app_factory(), base_url=LOCAL) as c:
        yield c


@pytest.mark.parametrize("host", ["evil.example:7860", "evil.example", "127.0.0.1.evil.example", "attacker.localhost.evil",
                                  "", "[::1", "192.168.1.20:7860"])
@pytest.mark.parametrize("path", ["/api/v1/jobs", "/healthz", "/", "/ui/main.js", "/sdapi/v1/options", "/docs"])
def test_forged_host_is_refused_on_every_route(client, host, path):
    r = client.get(path, headers={"Host": host})
    assert r.status_code == 421, (host, path, r.status_code)
    assert "DNS rebinding" in r.json()["error"]["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:7860", "localhost:7860", "localhost", "[::1]:7860", "127.0.0.2:7860",
                                  "LOCALHOST:7860", "app.localhost:7860"])
def test_loopback_hosts_are_served(client, host):
    r = client.get("/api/v1/jobs", headers={"Host": host})
    assert r.status_code == 200 and "jobs" in r.json()


def test_cross_site_form_post_is_refused_and_runs_no_job(client):
    before = len(client.get("/api/v1/jobs").json()["jobs"])
    # what a plain <form enctype="multipart/form-data"> on evil.example sends: no preflight, an Origin header
    r = client.post("/v1/images/variations", files={"image": ("a.png", _png_bytes(), "image/png")},
                    data={"n": "1", "size": "256x256"},
                    headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and "evil.example" in r.json()["error"]["message"]
    # a browser that sends only Sec-Fetch-Site (or an opaque "null" origin) is refused as well
    r = client.post("/api/v1/jobs", json={"prompt": "x", **SMALL}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    r = client.post("/api/v1/jobs", json={"prompt": "x", **SMALL}, headers={"Origin": "null"})
    assert r.status_code == 403
    # a sibling port on localhost is another origin too
    r = client.delete("/api/v1/jobs/nope", headers={"Origin": "http://127.0.0.1:3000", "Sec-Fetch-Site": "same-site"})
    assert r.status_code == 403
    assert len(client.get("/api/v1/jobs").json()["jobs"]) == before


def test_same_origin_and_headerless_clients_work(client):
    r = client.post("/api/v1/tokens", json={"prompt": "red apple"},
                    headers={"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200 and r.json()["chunks"] == [2]
    r = client.post("/api/v1/tokens", json={"prompt": "red apple"})  # curl / openai / requests: no Origin
    assert r.status_code == 200
    r = client.post("/api/v1/tokens", json={"prompt": "red apple"},
                    headers={"Origin": "http://localhost:7860", "Host": "localhost:7860"})
    assert r.status_code == 200
    # a cross-site GET is answered (the browser withholds it from the page: no CORS header)
    r = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_configured_cors_origin_may_write(app_factory):
    app = app_factory(cors_origins=("https://studio.example",))
    with TestClient(app, base_url=LOCAL) as c:
        r = c.post("/api/v1/tokens", json={"prompt": "a"}, headers={"Origin": "https://studio.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://studio.example"
        r = c.post("/api/v1/tokens", json={"prompt": "a"}, headers={"Origin": "https://other.example"})
        assert r.status_code == 403


def test_guard_applies_with_an_api_key_and_before_auth(app_factory):
    app = app_factory(api_key="k3y", host="0.0.0.0", allowed_hosts=("studio.lan",))
    with TestClient(app, base_url="http://studio.lan:7860") as c:
        auth = {"Authorization": "Bearer k3y"}
        assert c.get("/api/v1/jobs", headers=auth).status_code == 200
        assert c.get("/api/v1/jobs").status_code == 401
        assert c.get("/api/v1/jobs", headers={**auth, "Host": "evil.example"}).status_code == 421
        r = c.post("/api/v1/tokens", json={"prompt": "a"}, headers={**auth, "Origin": "http://evil.example"})
        assert r.status_code == 403
        r = c.post("/api/v1/tokens", json={"prompt": "a"}, headers={**auth, "Origin": "http://studio.lan:7860"})
        assert r.status_code == 200


def test_policy_table():
    policy = HostPolicy("127.0.0.1")
    assert split_host("[::1]:7860") == ("::1", 7860) and split_host("Example.COM.") == ("example.com", None)
    assert split_host("a:b:c") == ("", None) and not policy.host_allowed("")
    assert policy.origin_allowed("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert not policy.origin_allowed("http://127.0.0.1:7861", "127.0.0.1:7860")
    # the scheme is not compared (a TLS proxy in front sends https origins to a plain-http server), ports are
    assert policy.origin_allowed("https://127.0.0.1:7860", "127.0.0.1:7860")
    assert not policy.origin_allowed("file://", "127.0.0.1:7860")
    assert not policy.origin_allowed("http://evil.example", "evil.example")  # same-origin but a forged Host
    lan = HostPolicy("192.168.1.5", allowed_hosts=("studio.lan",))
    assert lan.host_allowed("192.168.1.5") and lan.host_allowed("studio.lan") and not lan.host_allowed("evil.example")
    assert not HostPolicy("0.0.0.0").host_allowed("0.0.0.0")


def test_server_refuses_to_start_without_a_loadable_model(tmp_path):
    settings = ServerSettings(model=str(tmp_path / "nonexistent"), data_dir=tmp_path / "s", safety="off")
    with pytest.raises(ModelNotFound):
        create_app(settings)
