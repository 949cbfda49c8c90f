"""The job store on PostgreSQL: one queue for several servers or Ray Serve replicas (psycopg 3).

Same logic and schema as the SQLite store (`store.JobStore`); jobs are claimed by a compare-and-set `UPDATE … WHERE
status='queued'` (under PostgreSQL's row locks exactly one claimer wins; a loser sees 0 rows), running jobs carry a
heartbeat, and a killed replica's jobs are claimed again after the lease. Migrations run under an advisory lock so
replicas starting together migrate once. Images stay in `data_dir`, which replicas on several machines must share.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

from sfumato.errors import MissingDependency, OutOfSpace, RuntimeFailure
from sfumato.server.store import LEASE_S, JobStore

MIGRATION_LOCK = 0x5F0A7  # pg_advisory_lock key: one replica migrates at a time


class PostgresJobStore(JobStore):
    time_type = "DOUBLE PRECISION"

    def __init__(self, url: str, data_dir: Path, queue_size: int, lease_s: float = LEASE_S):
        self.url = url
        super().__init__(data_dir, queue_size, exclusive=False, lease_s=lease_s)

    def _connect(self) -> None:
        try:
            import psycopg
        except ImportError:
            raise MissingDependency("the PostgreSQL store needs psycopg: pip install 'psycopg[binary]'") from None
        self._psycopg = psycopg
        self._db_lock = threading.Lock()
        with self._errors():
            self._db = psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def _execute(self, sql: str, args: tuple):
        with self._db_lock, self._errors():
            if self._db.closed or self._db.broken:  # the server restarted: reconnect once
                self._db = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            cursor = self._db.execute(sql.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description else [], cursor.rowcount

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._execute(sql, args)[0]

    def _change(self, sql: str, args: tuple = ()) -> int:
        return self._execute(sql, args)[1]

    def _migrate(self) -> None:
        self._change("SELECT pg_advisory_lock(?)", (MIGRATION_LOCK,))
        try:
            super()._migrate()
        finally:
            self._change("SELECT pg_advisory_unlock(?)", (MIGRATION_LOCK,))

    def _columns(self) -> set[str]:
        return {row[0] for row in self._rows("SELECT column_name FROM information_schema.columns WHERE "
                                             "table_name = 'jobs' AND table_schema = current_schema()")}

    def integrity(self) -> str:
        return "ok" if self._rows("SELECT 1")[0][0] == 1 else "no answer"

    def close(self) -> None:
        super().close()
        with self._db_lock:
            self._db.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Disk-full and connection failures as the one-line errors the adapters map (507 / 503)."""
        errors = self._psycopg.errors
        try:
            yield
        except errors.DiskFull:
            raise OutOfSpace("the job database's disk is full; jobs cannot be stored until space is freed") from None
        except self._psycopg.OperationalError as exc:
            raise RuntimeFailure(f"the job store (PostgreSQL) failed: {str(exc).strip().splitlines()[0]}") from None
