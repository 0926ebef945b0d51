"""Slots in a table of a local SQLite file, for hosts that coordinate on one machine.

Every taker counts and inserts inside one ``BEGIN IMMEDIATE`` transaction, which holds
SQLite's write lock from the count to the commit, so two takers never both see a free slot.
A row belongs to one host of one group. It records the holder's pid, the start time of that
pid (so a reused pid is not mistaken for the holder) and the boot id, and a lease that
``refresh`` renews. The next ``acquire`` of its group deletes a row whose lease has expired.
A row whose holder process is gone (or whose machine rebooted) is freed earlier only by
``release_stale`` for its own host, which repair calls once it has taken the run over: a
dead holder's host may still be out of service, so another host must not get its slot. A
pinned row (a FAILED restart) has no lease end and is freed the same way.

Configuration (``[slots]``, with ``backend = "sqlite"``):

- ``path``: the SQLite file; by default the configuration's state file.
- ``ttl``: lease seconds, default 600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opcache_guard import procs
from opcache_guard.config import default_state_root
from opcache_guard.errors import SlotError, StateError
from opcache_guard.slots.base import (
    GroupPolicy,
    Holder,
    Slot,
    SlotBackend,
    check_keys,
    number,
    poll,
    register,
)
from opcache_guard.store import StateStore

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    group_name TEXT NOT NULL,
    host TEXT NOT NULL,
    holder TEXT NOT NULL,
    reason TEXT NOT NULL,
    since REAL NOT NULL,
    expires REAL NOT NULL,
    machine TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start TEXT NOT NULL,
    PRIMARY KEY (group_name, host)
);
"""

_COLUMNS = "group_name, host, holder, reason, since"


def boot_id() -> str:
    """Return this boot's id from the kernel, or an empty string where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """Return a process's start time in clock ticks since boot, or "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Fields after the command name, which may contain spaces; starttime is field 22.
    return stat.rpartition(")")[2].split()[19]


# The lease end of a pinned slot: kept until its host's repair or pool command frees it.
PINNED_EXPIRY = 1e18


class SqliteSlot(Slot):
    """A row of the slots table, held by this process."""

    def __init__(self, backend: SqliteBackend, group: str, host: str, holder: str,
                 reason: str) -> None:
        super().__init__(group, host, holder, reason)
        self.backend = backend
        self.ttl = backend.ttl

    def release(self) -> None:
        """Delete the row if this holder still owns it; idempotent."""
        with self.backend.transaction() as conn:
            conn.execute("DELETE FROM slots WHERE group_name = ? AND host = ? AND holder = ?",
                         (self.group, self.host, self.holder))
        log.info("released slot of group %s for %s", self.group, self.host)

    def pin(self) -> bool:
        """Keep the row after this process exits: no lease end, no holder process."""
        with self.backend.transaction() as conn:
            updated = conn.execute(
                "UPDATE slots SET expires = ?, pid = 0, pid_start = '' WHERE group_name = ? "
                "AND host = ? AND holder = ?",
                (PINNED_EXPIRY, self.group, self.host, self.holder)).rowcount
        if updated:
            log.info("kept the slot of group %s for %s until the host is pooled again",
                     self.group, self.host)
        return bool(updated)

    def refresh(self) -> None:
        """Renew the lease.

        Raises:
            SlotError: the slot is no longer held, because its lease expired and another
                run freed it.
        """
        with self.backend.transaction() as conn:
            updated = conn.execute(
                "UPDATE slots SET expires = ? WHERE group_name = ? AND host = ? AND holder = ?",
                (time.time() + self.backend.ttl, self.group, self.host, self.holder)).rowcount
        if not updated:
            raise SlotError(f"slot of group {self.group} for {self.host} is lost: its lease "
                            f"expired; refresh it more often than every {self.backend.ttl:g} s")


@register
class SqliteBackend(SlotBackend):
    """Slots in a SQLite file; see the module docstring."""

    name = "sqlite"

    def __init__(self, groups: dict[str, GroupPolicy], path: Path, ttl: float = 600.0,
                 dry_run: bool = False) -> None:
        super().__init__(groups, dry_run)
        self.path = path
        self.ttl = ttl
        self.store = StateStore(path)
        self.machine = socket.gethostname()
        self.boot_id = boot_id()
        try:
            with contextlib.closing(self.store.connect()) as conn:
                conn.executescript(_SCHEMA)
        except (sqlite3.Error, StateError) as exc:
            raise SlotError(f"cannot create the slot table in {path}: {exc}; set [slots] "
                            "path to a writable file") from exc

    @classmethod
    def from_config(cls, section: dict[str, Any], groups: dict[str, GroupPolicy],
                    dry_run: bool) -> SqliteBackend:
        """Build the backend from ``[slots]``: ``path`` and ``ttl``."""
        check_keys(section, cls.name, ("path", "ttl"))
        path = Path(str(section.get("path", default_state_root() / "state.db")))
        return cls(groups, path, number(section, "ttl", 600.0, 1.0), dry_run)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one write transaction, taken before the block reads anything.

        Raises:
            SlotError: the file cannot be opened, locked or written.
        """
        try:
            conn = self.store.connect()
        except StateError as exc:
            raise SlotError(str(exc)) from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise SlotError(f"slot table in {self.path} failed: {exc}; check that the file "
                            "is writable") from exc
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def take(self, policy: GroupPolicy, host: str, reason: str, timeout: float,
             holder: str) -> Slot | None:
        """Take a slot; see ``SlotBackend.acquire``."""
        return poll(lambda: self._try_take(policy, host, reason, holder), timeout)

    def _try_take(self, policy: GroupPolicy, host: str, reason: str,
                  holder: str) -> SqliteSlot | None:
        with self.transaction() as conn:
            self._delete_stale(conn, policy.name)
            row = conn.execute("SELECT holder FROM slots WHERE group_name = ? AND host = ?",
                               (policy.name, host)).fetchone()
            if row is not None:
                if row[0] != holder:
                    return None
                conn.execute("UPDATE slots SET expires = ? WHERE group_name = ? AND host = ?",
                             (time.time() + self.ttl, policy.name, host))
                return SqliteSlot(self, policy.name, host, holder, reason)
            taken = conn.execute("SELECT COUNT(*) FROM slots WHERE group_name = ?",
                                 (policy.name,)).fetchone()[0]
            if taken >= policy.max_out():
                return None
            now = time.time()
            pid = os.getpid()
            conn.execute("INSERT INTO slots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (policy.name, host, holder, reason, now, now + self.ttl, self.machine,
                          self.boot_id, pid, process_start(pid)))
        log.info("took slot %d of %d of group %s for %s (%s)", taken + 1, policy.max_out(),
                 policy.name, host, reason)
        return SqliteSlot(self, policy.name, host, holder, reason)

    def _is_stale(self, expires: float, machine: str, boot: str, pid: int,
                  pid_start: str, own_host: bool) -> bool:
        if own_host and pid == 0:
            return True
        if expires < time.time():
            return True
        if machine != self.machine or not own_host:
            # A dead holder's host may still be out of service: only that host's own repair
            # frees the slot early, once it has taken the run over.
            return False
        if boot != self.boot_id:
            return True
        return not procs.is_alive(pid) or process_start(pid) != pid_start

    def _delete_stale(self, conn: sqlite3.Connection, group: str,
                      host: str | None = None) -> list[str]:
        rows = conn.execute(
            "SELECT host, holder, expires, machine, boot_id, pid, pid_start FROM slots "
            "WHERE group_name = ?", (group,)).fetchall()
        freed = []
        for row_host, row_holder, expires, machine, boot, pid, pid_start in rows:
            if host is not None and row_host != host:
                continue
            if not self._is_stale(expires, machine, boot, pid, pid_start, host is not None):
                continue
            conn.execute("DELETE FROM slots WHERE group_name = ? AND host = ? AND holder = ?",
                         (group, row_host, row_holder))
            log.warning("freed stale slot of group %s for %s: holder %s is gone or its lease "
                        "expired", group, row_host, row_holder)
            freed.append(row_host)
        return freed

    def holders(self, group: str) -> list[Holder]:
        """Return the rows of a group, stale ones included until an acquire frees them."""
        self.policy(group)
        try:
            with contextlib.closing(self.store.connect()) as conn:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM slots WHERE group_name = ? "
                                    "ORDER BY since", (group,)).fetchall()
        except (sqlite3.Error, StateError) as exc:
            raise SlotError(f"cannot read the slot table in {self.path}: {exc}") from exc
        return [Holder(*row) for row in rows]

    def release_stale(self, group: str, host: str) -> bool:
        """Free host's slot of group if its holder is dead or its lease expired."""
        self.policy(group)
        if self.dry_run:
            log.info("would free a stale slot of group %s for %s", group, host)
            return False
        with self.transaction() as conn:
            return bool(self._delete_stale(conn, group, host))
