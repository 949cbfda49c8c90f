"""The job store: jobs and their results in a database, images on disk. An accepted job is never lost.

A job is `queued` -> `running` -> `completed` | `failed` | `cancelled`. Two implementations share this logic:
SQLite (WAL; the embedded default) here and PostgreSQL (`store_postgres`, for several servers or Ray Serve
replicas on one queue). The schema is created and migrated in code (`MIGRATIONS`).

Claims and leases: a worker claims a job with a compare-and-set (`UPDATE … WHERE status='queued'`: exactly one
claimer wins) and records itself as the job's `owner`; a store that others share beats a heartbeat for its running
jobs. A running job whose owner stopped beating for `lease_s` (a killed replica) goes back to the queue and is
claimed again. Only the owner can complete a job, so no job completes twice. An exclusive store (one server on its
own SQLite file) puts every `running` job back in the queue when it starts: they were left by a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from sfumato.errors import OutOfSpace, RuntimeFailure

FINAL = ("completed", "failed", "cancelled")
LEASE_S = 30.0  # a shared store's running job whose owner has not beaten for this long is claimed again

# (version, SQL): applied in order, once, and recorded in schema_migrations. {time} is the database's 8-byte float
# (SQLite REAL; PostgreSQL's REAL is 4 bytes, seconds since 1970 need DOUBLE PRECISION)
MIGRATIONS = [
    (1, """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY, status TEXT NOT NULL, request TEXT NOT NULL, created {time} NOT NULL, started {time},
        finished {time}, error TEXT, result TEXT, attempts INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created)"""),
    (2, """ALTER TABLE jobs ADD COLUMN owner TEXT; ALTER TABLE jobs ADD COLUMN heartbeat {time}"""),
]
COLUMNS = "id, status, request, created, started, finished, error, result, attempts"


class QueueFull(Exception):
    """The queue holds `queue_size` unfinished jobs."""


@dataclass
class Job:
    id: str
    status: str
    request: dict[str, Any]
    created: float
    started: float | None
    finished: float | None
    error: str | None
    result: dict[str, Any] | None
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "status": self.status, "created": self.created, "started": self.started,
               "finished": self.finished, "error": self.error, "request": self.request}
        if self.result:
            out["images"] = [{"id": i, "url": f"/api/v1/images/{i}.png"} for i in self.result.get("images", [])]
            out["result"] = {k: v for k, v in self.result.items() if k != "images"}
        return out


class JobStore:
    """The store's logic over two primitives a database class provides: `_rows(sql, args)` and `_change(sql,
    args)` (SQL with `?` placeholders), plus `_connect`, `_columns`, `integrity` and `close`."""

    time_type = "REAL"  # the column type of timestamps (float seconds)

    def __init__(self, data_dir: Path, queue_size: int, exclusive: bool = True, lease_s: float = LEASE_S):
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.uploads_dir = self.data_dir / "uploads"
        for folder in (self.images_dir, self.uploads_dir):
            folder.mkdir(parents=True, exist_ok=True)
            if exclusive:  # a PNG half-written when this server was killed (a shared folder's may be in flight)
                for partial in folder.glob("*.part"):
                    partial.unlink(missing_ok=True)
        self.queue_size, self.exclusive, self.lease_s = queue_size, exclusive, lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._connect()
        self._migrate()
        self.recovered = self.requeue_running() if exclusive else self.requeue_stale()
        self.on_final: list[Callable[[str], None]] = []  # called with a job id when the job finishes (any thread)
        self._closed = threading.Event()
        if not exclusive:
            threading.Thread(target=self._beat, name="sfumato-store-heartbeat", daemon=True).start()

    # -- what a database class provides
    def _connect(self) -> None:
        raise NotImplementedError

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _change(self, sql: str, args: tuple = ()) -> int:
        raise NotImplementedError

    def _migrate(self) -> None:
        """Apply the migrations this database has not seen, each once."""
        self._change(f"CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                     f"applied {self.time_type})")
        done = {row[0] for row in self._rows("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            already = version == 2 and "owner" in self._columns()  # added by a replica migrating at the same time
            for statement in [] if already else sql.format(time=self.time_type).split(";"):
                self._change(statement)
            self._change("INSERT INTO schema_migrations (version, applied) VALUES (?, ?)", (version, time.time()))

    def _columns(self) -> set[str]:
        raise NotImplementedError

    def schema_version(self) -> int:
        return max(row[0] for row in self._rows("SELECT version FROM schema_migrations"))

    # -- jobs
    def _one(self, sql: str, args: tuple = ()) -> Job | None:
        rows = self._rows(f"SELECT {COLUMNS} FROM jobs {sql}", args)
        return _job(rows[0]) if rows else None

    def add(self, request: dict[str, Any]) -> Job:
        """Queue a job (durably, before this returns) or raise QueueFull."""
        with self._lock:
            pending = self._rows("SELECT COUNT(*) FROM jobs WHERE status IN ('queued','running')")[0][0]
            if pending >= self.queue_size:
                raise QueueFull(pending)
            job_id = uuid.uuid4().hex
            self._change("INSERT INTO jobs (id, status, request, created) VALUES (?, 'queued', ?, ?)",
                         (job_id, json.dumps(request), time.time()))
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        return self._one("WHERE id = ?", (job_id,))

    def queued(self, limit: int = 1000) -> list[Job]:
        return [_job(r) for r in self._rows(f"SELECT {COLUMNS} FROM jobs WHERE status='queued' ORDER BY created "
                                            "LIMIT ?", (limit,))]

    def counts(self) -> dict[str, int]:
        return {status: n for status, n in self._rows("SELECT status, COUNT(*) FROM jobs GROUP BY status")}

    def recent(self, limit: int = 50) -> list[Job]:
        return [_job(r) for r in self._rows(f"SELECT {COLUMNS} FROM jobs ORDER BY created DESC LIMIT ?", (limit,))]

    def start(self, job_id: str) -> bool:
        """Claim a queued job for this store's owner; False when another worker (or a cancel) was first."""
        now = time.time()
        return self._change("UPDATE jobs SET status='running', started=?, heartbeat=?, owner=?, attempts=attempts+1 "
                            "WHERE id=? AND status='queued'", (now, now, self.owner, job_id)) == 1

    def requeue_running(self) -> int:
        """Put every `running` job back in the queue (after a crash, or a store failure mid-batch); how many."""
        if not self.exclusive:  # others' running jobs are theirs: only this owner's go back
            return self._change("UPDATE jobs SET status='queued', started=NULL, owner=NULL WHERE status='running' "
                                "AND owner=?", (self.owner,))
        return self._change("UPDATE jobs SET status='queued', started=NULL, owner=NULL WHERE status='running'")

    def requeue_stale(self) -> int:
        """Running jobs whose owner stopped beating for `lease_s` (killed) go back to the queue; how many."""
        return self._change("UPDATE jobs SET status='queued', started=NULL, owner=NULL WHERE status='running' AND "
                            "(heartbeat IS NULL OR heartbeat < ?)", (time.time() - self.lease_s,))

    def requeue(self, job_id: str) -> None:
        self._change("UPDATE jobs SET status='queued', started=NULL, owner=NULL WHERE id=? AND status='running' "
                     "AND owner=?", (job_id, self.owner))

    def lost(self, job_ids: list[str]) -> list[str]:
        """Which of this owner's jobs are no longer running for it (cancelled elsewhere, or claimed again)."""
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        mine = {r[0] for r in self._rows(f"SELECT id FROM jobs WHERE id IN ({marks}) AND status='running' AND "
                                         "owner=?", (*job_ids, self.owner))}
        return [j for j in job_ids if j not in mine]

    def _beat(self) -> None:
        while not self._closed.wait(self.lease_s / 3):
            try:
                self._change("UPDATE jobs SET heartbeat=? WHERE owner=? AND status='running'", (time.time(), self.owner))
            except Exception:  # the database is away for a moment: the next beat tries again
                continue

    def _finish(self, job_id: str, sql: str, args: tuple) -> bool:
        changed = self._change(sql, args) == 1
        if changed:
            for listener in self.on_final:
                listener(job_id)
        return changed

    def complete(self, job_id: str, result: dict[str, Any]) -> bool:
        """Record a job's result; False when this owner no longer holds it (nothing completes twice)."""
        return self._finish(job_id, "UPDATE jobs SET status='completed', finished=?, result=? WHERE id=? AND "
                            "status='running' AND owner=?", (time.time(), json.dumps(result), job_id, self.owner))

    def fail(self, job_id: str, error: str) -> None:
        self._finish(job_id, "UPDATE jobs SET status='failed', finished=?, error=? WHERE id=? AND (status='queued' "
                     "OR (status='running' AND owner=?))", (time.time(), error, job_id, self.owner))

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it already finished."""
        return self._finish(job_id, "UPDATE jobs SET status='cancelled', finished=? WHERE id=? AND status IN "
                            "('queued','running')", (time.time(), job_id))

    def image_path(self, image_id: str) -> Path | None:
        """The PNG of an image id, only inside the images folder (anything else -> None)."""
        if not image_id or not all(c.isalnum() or c == "-" for c in image_id):
            return None
        path = self.images_dir / f"{image_id}.png"
        return path if path.is_file() else None

    def integrity(self) -> str:
        return "ok"

    def stop_beating(self) -> None:
        """No more heartbeats (on close; a test's way to play a replica that hangs)."""
        self._closed.set()

    def close(self) -> None:
        self.stop_beating()


class SqliteJobStore(JobStore):
    """SQLite in `data_dir/jobs.sqlite3` (WAL); processes on one machine may share it (`exclusive=False`)."""

    def _connect(self) -> None:
        self._db = sqlite3.connect(self.data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")

        self._db_lock = threading.Lock()  # one connection, shared by the server's threads

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._db_lock, storage_errors():
            return self._db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple = ()) -> int:
        with self._db_lock, storage_errors():
            return self._db.execute(sql, args).rowcount

    def _migrate(self) -> None:
        """Migrate inside one write transaction: servers sharing the file and starting together migrate once."""
        self._change("BEGIN IMMEDIATE")
        try:
            super()._migrate()
        except BaseException:
            self._change("ROLLBACK")
            raise
        self._change("COMMIT")

    def _columns(self) -> set[str]:
        return {row[1] for row in self._rows("PRAGMA table_info(jobs)")}

    def integrity(self) -> str:
        """SQLite's own integrity check: "ok" for a consistent database."""
        return self._rows("PRAGMA integrity_check")[0][0]

    def close(self) -> None:
        super().close()
        with self._db_lock:
            self._db.close()


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def is_whole_png(path: Path) -> bool:
    """True when the file starts with the PNG signature and ends with the IEND chunk (not truncated)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(-len(PNG_END), 2)
            return head == b"\x89PNG\r\n\x1a\n" and handle.read() == PNG_END
    except OSError:
        return False


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """SQLite's disk-full and I/O failures as the one-line errors the adapters map (507 / 503)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "full" in str(exc).lower():
            raise OutOfSpace("the server's disk is full; jobs cannot be stored until space is freed") from None
        raise RuntimeFailure(f"the job store failed: {exc}") from None


def _job(row: tuple) -> Job:
    job_id, status, request, created, started, finished, error, result, attempts = row
    return Job(job_id, status, json.loads(request), created, started, finished, error,
               json.loads(result) if result else None, attempts)
