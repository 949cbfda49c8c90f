"""Tiny random models in the real families, built once per test session. Nothing touches the network."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# two pytest-xdist workers (the developer loop's `-n 2`) on 2 cores: one thread each, or their OpenMP teams collide
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

# Tiers (README "Tests"): the developer loop is `pytest -m "not slow and not ray and not postgres and not browser
# and not fuzz"`; CI runs everything. Markers come from the fixtures a test uses where they tell (below), else from
# `@pytest.mark.slow` on the test. An unmarked test slower than SFUMATO_SLOW_TEST_S (10 s) fails: mark it or make
# it cheaper, so the fast tier stays fast.
TIERS = ("slow", "ray", "postgres", "browser", "fuzz")
FIXTURE_TIERS = {"ray_local": "ray", "postgres_server": "postgres", "page": "browser", "browser": "browser"}
MODULE_TIERS = {"test_http_fuzz.py": "fuzz", "test_fuzz.py": "fuzz", "test_ui.py": "browser",
                "test_scale_serve.py": "ray", "test_scale_batch.py": "ray"}
SLOW_TEST_S = float(os.environ.get("SFUMATO_SLOW_TEST_S", "10"))


def pytest_configure(config):
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: a test of the {tier} tier (deselect with -m 'not {tier}')")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = {tier for fixture, tier in FIXTURE_TIERS.items() if fixture in getattr(item, "fixturenames", ())}
        if MODULE_TIERS.get(item.path.name):
            tiers.add(MODULE_TIERS[item.path.name])
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "postgresql" in map(str, params.values()):
            tiers.add("postgres")
        for tier in tiers:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (call.when == "call" and report.passed and call.duration > SLOW_TEST_S
            and not any(item.get_closest_marker(tier) for tier in TIERS)):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {call.duration:.1f} s, more than {SLOW_TEST_S:g} s without a tier "
                           "marker: mark it @pytest.mark.slow or test the same thing with smaller inputs")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own models home and output folder."""
    monkeypatch.setenv("SFUMATO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SFUMATO_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("SFUMATO_MODEL", raising=False)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def _tiny(models_dir, family: str, inpainting: bool = False):
    from sfumato.models.tiny import build_tiny

    path = models_dir / (family + ("-inpaint" if inpainting else ""))
    if not path.exists():
        build_tiny(family, path, inpainting=inpainting)
    return path


@pytest.fixture(scope="session")
def sd1(models_dir):
    return _tiny(models_dir, "sd1")


@pytest.fixture(scope="session")
def sd2(models_dir):
    return _tiny(models_dir, "sd2")


@pytest.fixture(scope="session")
def sdxl(models_dir):
    return _tiny(models_dir, "sdxl")


@pytest.fixture(scope="session")
def sd1_inpaint(models_dir):
    return _tiny(models_dir, "sd1", inpainting=True)


@pytest.fixture(scope="session")
def sd1_single(models_dir, sd1):
    """The tiny SD1 model written as one LDM-layout .safetensors file by our own converter."""
    from sfumato.models.convert import convert

    path = models_dir / "sd1.safetensors"
    if not path.exists():
        convert(sd1, path)
    return path


@pytest.fixture(scope="session")
def engine_sd1(sd1):
    from sfumato.engine import Engine

    return Engine(sd1)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 CPUs, no dashboard), started on first use."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _postgres_bin() -> Path | None:
    import glob
    import shutil

    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL for this session (Debian `postgresql`, installed by .ci/run), on a free loopback port, in a
    throwaway data folder; yields a function that makes a fresh database and returns its URL."""
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile
    import uuid

    psycopg = pytest.importorskip("psycopg")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    folder = tempfile.mkdtemp(prefix="sfumato-pg-")
    run_as: dict = {}
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        run_as = {"user": user.pw_uid, "group": user.pw_gid}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = os.path.join(folder, "data")
    subprocess.run([bindir / "initdb", "-D", data, "-U", "sfumato", "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, **run_as)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([bindir / "pg_ctl", "-D", data, "-o", options, "-l", os.path.join(folder, "log"), "-w", "start"],
                   check=True, capture_output=True, **run_as)
    admin = psycopg.connect(f"postgresql://sfumato@127.0.0.1:{port}/postgres", autocommit=True)

    def fresh_database() -> str:
        name = "t" + uuid.uuid4().hex[:12]
        admin.execute(f"CREATE DATABASE {name}")
        return f"postgresql://sfumato@127.0.0.1:{port}/{name}"

    yield fresh_database
    admin.close()
    subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, **run_as)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def spawn():
    """`subprocess.Popen` for tests: the child gets default SIGINT handling even when the suite runs with SIGINT
    ignored (`nohup ... &`), and every child still running at teardown is killed, whether the test passed or not."""
    import signal
    import subprocess

    children: list[subprocess.Popen] = []

    def start(*args, **kwargs) -> subprocess.Popen:
        child = subprocess.Popen(*args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
