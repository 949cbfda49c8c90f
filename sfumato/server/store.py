"""The job store: jobs and their results in SQLite (WAL), images on disk. An accepted job is never lost.

A job is `queued` -> `running` -> `completed` | `failed` | `cancelled`. On start, jobs left `running`
by a crash go back to `queued` and run again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from sfumato.errors import OutOfSpace, RuntimeFailure

FINAL = ("completed", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    result TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
"""


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
    def __init__(self, data_dir: Path, queue_size: int):
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.uploads_dir = self.data_dir / "uploads"
        for folder in (self.images_dir, self.uploads_dir):
            folder.mkdir(parents=True, exist_ok=True)
            for partial in folder.glob("*.part"):  # a PNG half-written when the process was killed
                partial.unlink(missing_ok=True)
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.recovered = self.requeue_running()
        self.on_final: list[Callable[[str], None]] = []  # called with a job id when the job finishes (any thread)

    def _one(self, sql: str, args: tuple = ()) -> Job | None:
        with self._lock:
            row = self._db.execute(f"SELECT * FROM jobs {sql}", args).fetchone()
        return _job(row) if row else None

    def add(self, request: dict[str, Any]) -> Job:
        """Queue a job (durably, before this returns) or raise QueueFull."""
        with self._lock:
            pending = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued','running')").fetchone()[0]
            if pending >= self.queue_size:
                raise QueueFull(pending)
            job_id = uuid.uuid4().hex
            with storage_errors():
                self._db.execute("INSERT INTO jobs (id, status, request, created) VALUES (?, 'queued', ?, ?)",
                                 (job_id, json.dumps(request), time.time()))
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        return self._one("WHERE id = ?", (job_id,))

    def queued(self, limit: int = 1000) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status='queued' ORDER BY created LIMIT ?",
                                    (limit,)).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: n for status, n in rows}

    def recent(self, limit: int = 50) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_job(r) for r in rows]

    def _set(self, sql: str, args: tuple) -> int:
        with self._lock, storage_errors():
            return self._db.execute(sql, args).rowcount

    def start(self, job_id: str) -> bool:
        return self._set("UPDATE jobs SET status='running', started=?, attempts=attempts+1 WHERE id=? AND "
                         "status='queued'", (time.time(), job_id)) == 1

    def requeue_running(self) -> int:
        """Put every `running` job back in the queue (after a crash, or a store failure mid-batch); how many."""
        return self._set("UPDATE jobs SET status='queued', started=NULL WHERE status='running'", ())

    def requeue(self, job_id: str) -> None:
        self._set("UPDATE jobs SET status='queued', started=NULL WHERE id=? AND status='running'", (job_id,))

    def _finish(self, job_id: str, sql: str, args: tuple) -> bool:
        changed = self._set(sql, args) == 1
        if changed:
            for listener in self.on_final:
                listener(job_id)
        return changed

    def complete(self, job_id: str, result: dict[str, Any]) -> None:
        self._finish(job_id, "UPDATE jobs SET status='completed', finished=?, result=? WHERE id=? AND status='running'",
                     (time.time(), json.dumps(result), job_id))

    def fail(self, job_id: str, error: str) -> None:
        self._finish(job_id, "UPDATE jobs SET status='failed', finished=?, error=? WHERE id=? AND status IN "
                     "('queued','running')", (time.time(), error, job_id))

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
        """SQLite's own integrity check: "ok" for a consistent database."""
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        with self._lock:
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
