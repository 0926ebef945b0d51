"""The local state store: an embedded SQLite file.

It keeps the previous sample of each pool, so the policy can tell that OPcache restarted
itself between two checks. Later layers add their own tables (the restart journal, the
SQLite slot backend) through ``StateStore.connect``. Writes use WAL mode and a busy timeout,
so an agent, a cron check and an operator can share one file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
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
        directory = self.path.parent
        try:
            if not directory.exists():
                # Mode 0755: the probe's script directory usually sits beside the state file,
                # and php-fpm workers running as another user must be able to enter it. The
                # state file itself is created mode 0600.
                directory.mkdir(parents=True, mode=0o755)
                os.chmod(directory, 0o755)
            self._create_file()
        except OSError as exc:
            raise StateError(f"cannot create the state file {self.path}: {exc.strerror}; set "
                             "state_file to a writable path") from exc
        try:
            with contextlib.closing(self.connect()) as conn:
                # WAL mode is a property of the file and stays once set, so it is set here
                # only; switching modes takes a lock that busy connections would contend for.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"cannot use the state file {self.path}: {exc}; set state_file "
                             "to a writable path, or move the damaged file away") from exc

    def _create_file(self) -> None:
        """Create the state file mode 0600, or check that the existing one is a plain file."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            # Present already, or another process created it a moment ago: check it.
            pass
        else:
            os.close(fd)
            return
        info = self.path.lstat()
        if not stat.S_ISREG(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            raise StateError(f"state file {self.path} is {kind}; set state_file to the path "
                             "of a regular file (it is created if missing)")

    def connect(self) -> sqlite3.Connection:
        """Open a connection in WAL mode with the store's busy timeout.

        Raises:
            StateError: the file cannot be opened or is not a SQLite database.
        """
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the state file {self.path}: {exc}; set state_file "
                             "to a writable path, or move the damaged file away") from exc
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
