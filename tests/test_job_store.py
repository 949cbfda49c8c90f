"""The job store's contract, run against SQLite and a real PostgreSQL: migrations, claims (exactly one winner),
owner-only completion, leases (a dead owner's jobs are claimed again), cancels seen by the owner."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from sfumato.server.open_store import open_store
from sfumato.server.store import MIGRATIONS, QueueFull, SqliteJobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request, tmp_path):
    """A function making stores on one fresh database: each call is another server on the same queue."""
    url = request.getfixturevalue("postgres_server")() if request.param == "postgresql" else "sqlite"
    made = []

    def make(queue_size: int = 64, lease_s: float = 30.0, exclusive: bool = False):
        store = open_store(url, tmp_path / "data", queue_size, exclusive=exclusive, lease_s=lease_s)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_schema_is_migrated_once_and_jobs_round_trip(make_store):
    store = make_store(queue_size=2)
    assert store.schema_version() == MIGRATIONS[-1][0]
    job = store.add({"prompt": "a", "seed": 3})
    assert (job.status, job.request, job.attempts) == ("queued", {"prompt": "a", "seed": 3}, 0)
    store.add({"prompt": "b"})
    with pytest.raises(QueueFull):
        store.add({"prompt": "c"})
    again = make_store()  # a second server on the same database migrates nothing and sees the jobs
    assert again.schema_version() == store.schema_version()
    assert [j.request["prompt"] for j in again.queued()] == ["a", "b"]
    assert again.counts() == {"queued": 2}
    assert store.integrity() == "ok"


def test_exactly_one_claimer_wins_each_job(make_store):
    stores = [make_store(queue_size=500) for _ in range(2)]
    ids = [stores[0].add({"prompt": str(i)}).id for i in range(60)]
    claims: dict[str, list[str]] = {i: [] for i in ids}
    lock = threading.Lock()

    def claim(store):
        for job in store.queued():
            if store.start(job.id):
                with lock:
                    claims[job.id].append(store.owner)

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(owners) == 1 for owners in claims.values()), claims
    assert stores[1].counts() == {"running": 60}


def test_only_the_owner_completes_and_anyone_cancels(make_store):
    a, b = make_store(), make_store()
    job = a.add({"prompt": "x"})
    assert a.start(job.id) and not b.start(job.id)
    assert not b.complete(job.id, {"images": []})  # not b's job
    b.fail(job.id, "not mine")
    assert a.get(job.id).status == "running"
    assert a.complete(job.id, {"images": ["i"]}) and a.get(job.id).status == "completed"
    assert not a.complete(job.id, {"images": ["again"]}) and b.get(job.id).result == {"images": ["i"]}
    other = a.add({"prompt": "y"})
    assert a.start(other.id)
    assert a.lost([other.id]) == []
    assert b.cancel(other.id)  # a cancel through another server ...
    assert a.lost([other.id]) == [other.id]  # ... is seen by the owner, which stops
    assert not a.complete(other.id, {"images": []}) and a.get(other.id).status == "cancelled"


@pytest.mark.slow
def test_a_dead_owners_job_is_claimed_again_and_completes_once(make_store):
    dead, alive = make_store(lease_s=1.0), make_store(lease_s=1.0)
    job = dead.add({"prompt": "x"})
    assert dead.start(job.id)
    time.sleep(1.2)  # the owner beats every lease/3: still its job
    assert alive.requeue_stale() == 0 and alive.get(job.id).status == "running"
    dead.stop_beating()  # hung (or killed): no more heartbeats
    time.sleep(1.3)
    assert alive.requeue_stale() == 1
    assert alive.start(job.id) and alive.get(job.id).attempts == 2
    assert not dead.complete(job.id, {"images": ["stale"]})  # the old owner, back to life, cannot complete it
    assert alive.complete(job.id, {"images": ["fresh"]})
    assert alive.get(job.id).result == {"images": ["fresh"]}


def test_a_shared_store_leaves_other_servers_running_jobs_alone(make_store):
    a = make_store()
    job = a.add({"prompt": "x"})
    assert a.start(job.id)
    b = make_store()  # a server starting next to a running one takes nothing from it
    assert b.recovered == 0 and b.requeue_running() == 0
    assert a.get(job.id).status == "running"
    assert a.requeue_running() == 1 and a.get(job.id).status == "queued"  # its own, after a store failure


def test_an_exclusive_sqlite_store_requeues_a_crashed_servers_jobs(tmp_path):
    store = SqliteJobStore(tmp_path, 8)
    job = store.add({"prompt": "x"})
    assert store.start(job.id)
    store.close()
    again = SqliteJobStore(tmp_path, 8)
    assert again.recovered == 1 and again.get(job.id).status == "queued"
    again.close()


def test_a_database_from_before_migrations_is_upgraded_with_its_jobs(tmp_path):
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript(MIGRATIONS[0][1].format(time="REAL") + ";")
    db.execute("INSERT INTO jobs (id, status, request, created) VALUES ('old', 'completed', '{\"prompt\": \"p\"}', 1)")
    db.commit()
    db.close()
    store = SqliteJobStore(tmp_path, 8)
    assert store.schema_version() == MIGRATIONS[-1][0]
    assert store.get("old").request == {"prompt": "p"} and store.get("old").status == "completed"
    store.close()


def test_two_servers_on_postgresql_survive_a_killed_replica(tmp_path, sd1, postgres_server):
    """Two `sfumato serve` processes share one PostgreSQL queue and one data folder; kill -9 one while it runs jobs:
    every job completes (the other claims the dead one's jobs after the lease), none completes twice."""
    import signal

    import httpx
    import psycopg
    from test_server import _free_port, _serve

    url = postgres_server()
    data = tmp_path / "shared"
    ports = [_free_port(), _free_port()]
    servers = [_serve(sd1, data, port, "--store", url, "--store-lease", "2", "--max-batch-size", "1")
               for port in ports]
    a, b = (f"http://127.0.0.1:{port}" for port in ports)
    try:
        ids = [httpx.post(f"{a}/api/v1/jobs", json={"prompt": f"job {i}", "seed": i, "width": 64, "height": 64,
                                                     "steps": 30}).json()["id"] for i in range(6)]
        victim = servers[0].pid
        with psycopg.connect(url, autocommit=True) as db:
            deadline = time.time() + 60
            while not (held := db.execute("SELECT id FROM jobs WHERE status='running' AND owner LIKE %s",
                                          (f"%:{victim}:%",)).fetchall()):
                assert time.time() < deadline, "the first server never ran a job"
                time.sleep(0.05)
            servers[0].send_signal(signal.SIGKILL)
            servers[0].wait(10)
            for job_id in ids:  # the survivor answers for every job, including those it did not accept
                deadline = time.time() + 180
                while (job := httpx.get(f"{b}/api/v1/jobs/{job_id}").json())["status"] not in ("completed", "failed"):
                    assert time.time() < deadline, job
                    time.sleep(0.1)
                assert job["status"] == "completed" and len(job["images"]) == 1
                assert httpx.get(f"{b}{job['images'][0]['url']}").status_code == 200
            attempts = dict(db.execute("SELECT id, attempts FROM jobs").fetchall())
        assert attempts[held[0][0]] == 2  # the killed replica's job ran again, once
        assert sum(attempts.values()) == len(ids) + len(held)
        assert len(list((data / "images").glob("*.png"))) == len(ids)  # no stray image of a second completion
    finally:
        for server in servers:
            if server.poll() is None:
                server.terminate()
                server.wait(10)
