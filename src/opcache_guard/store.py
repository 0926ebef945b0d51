"""The local state store: an embedded SQLite file.

It keeps the previous sample of each pool, so the policy can tell that OPcache restarted
itself between two checks. Later layers add their own tables (the restart journal, the
SQLite slot backend) through ``StateStore.connect``. Writes use WAL mode and a busy timeout,
so an agent, a cron check and an operator can share one file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from opcache_guard.errors import StateError
from opcache_guard.sample import Sample

_SCHEMA = """
CREATE TABLE IF NOT EXISTS last_sample (
    pool_key TEXT PRIMARY KEY,
    taken_at REAL NOT NULL,
    sample TEXT NOT NULL
);
"""


class StateStore:
    """A SQLite state file; each method opens its own short transaction."""

    def __init__(self, path: Path, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._ensure()

    def _ensure(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {self.path.parent}: "
                             f"{exc.strerror}; set state_file to a writable path") from exc
        with self.connect() as conn:
            conn.executescript(_SCHEMA)

    def connect(self) -> sqlite3.Connection:
        """Open a connection in WAL mode with the store's busy timeout.

        Raises:
            StateError: the file cannot be opened.
        """
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the state file {self.path}: {exc}; set state_file "
                             "to a writable path") from exc
        if self.path.exists():
            os.chmod(self.path, 0o600)
        return conn

    def previous_sample(self, pool_key: str) -> Sample | None:
        """Return the last stored sample of a pool, or None."""
        try:
            with self.connect() as conn:
                row = conn.execute("SELECT sample FROM last_sample WHERE pool_key = ?",
                                   (pool_key,)).fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read {self.path}: {exc}") from exc
        if row is None:
            return None
        try:
            return Sample.from_dict(json.loads(row[0]))
        except (ValueError, KeyError, TypeError):
            # A sample written by an older version: judging without it only loses one delta.
            return None

    def save_sample(self, pool_key: str, sample: Sample) -> None:
        """Store a pool's latest sample, replacing the previous one."""
        try:
            with self.connect() as conn:
                conn.execute(
                    "INSERT INTO last_sample (pool_key, taken_at, sample) VALUES (?, ?, ?) "
                    "ON CONFLICT(pool_key) DO UPDATE SET taken_at = excluded.taken_at, "
                    "sample = excluded.sample",
                    (pool_key, time.time(), json.dumps(sample.to_dict())))
        except sqlite3.Error as exc:
            raise StateError(f"cannot write {self.path}: {exc}") from exc
