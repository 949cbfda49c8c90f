"""Open the job store a URL names (SQLite by default, PostgreSQL for several servers)."""

from __future__ import annotations

from pathlib import Path

from sfumato.errors import InvalidRequest
from sfumato.server.store import LEASE_S, JobStore, SqliteJobStore


def open_store(url: str | None, data_dir: Path, queue_size: int, exclusive: bool = True,
               lease_s: float = LEASE_S) -> JobStore:
    """The store a URL names: None or `sqlite` -> SQLite in data_dir; `postgresql://…` -> PostgreSQL (always
    shared: several servers claim from one queue)."""
    if url is None or url == "sqlite":
        return SqliteJobStore(data_dir, queue_size, exclusive, lease_s)
    if url.startswith(("postgresql://", "postgres://")):
        from sfumato.server.store_postgres import PostgresJobStore

        return PostgresJobStore(url, data_dir, queue_size, lease_s=lease_s)
    raise InvalidRequest(f"--store must be sqlite or a postgresql://… URL, got {url.split(':')[0]!r}")
