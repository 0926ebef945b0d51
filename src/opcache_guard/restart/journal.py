"""The restart journal: restart runs and their state changes, in the local state store.

``restart_runs`` contains one row per run with its current state and what a repair needs: the
slot token, whether the host was pooled before, and the baseline that proves a new master.
``restart_transitions`` logs every state change with its reason. A state change and its log
row are written in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from opcache_guard.errors import StateError
from opcache_guard.restart.states import FINISHED, Run, State, owner_token
from opcache_guard.store import StateStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS restart_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    grp TEXT NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL,
    forced INTEGER NOT NULL,
    was_pooled_before INTEGER,
    slot_token TEXT NOT NULL DEFAULT '',
    baseline TEXT NOT NULL DEFAULT '{}',
    started REAL NOT NULL,
    updated REAL NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS restart_runs_state ON restart_runs (state);
CREATE TABLE IF NOT EXISTS restart_transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES restart_runs (id),
    at REAL NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    note TEXT NOT NULL
);
"""

_COLUMNS = ("id, host, grp, reason, state, forced, was_pooled_before, slot_token, baseline, "
            "started, updated, error, owner")
_UPDATABLE = {"was_pooled_before", "slot_token", "baseline", "error", "owner"}


class Journal:
    """Restart runs stored in the state file."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._execute(lambda conn: conn.executescript(_SCHEMA))

    def _execute(self, work: Any) -> Any:
        try:
            with self.store.connect() as conn:
                return work(conn)
        except sqlite3.Error as exc:
            raise StateError(f"restart journal in {self.store.path}: {exc}; check that the "
                             "state file is writable and not corrupt") from exc

    def create(self, host: str, group: str, reason: str, forced: bool) -> Run:
        """Record a new run in state ACQUIRING, owned by this process."""
        now = time.time()
        owner = owner_token()

        def insert(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO restart_runs (host, grp, reason, state, forced, started, updated, "
                "owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (host, group, reason, State.ACQUIRING.value, int(forced), now, now, owner))
            run_id = int(cursor.lastrowid or 0)
            conn.execute("INSERT INTO restart_transitions (run_id, at, from_state, to_state, "
                         "note) VALUES (?, ?, '', ?, ?)",
                         (run_id, now, State.ACQUIRING.value, reason))
            return run_id

        run_id = self._execute(insert)
        return Run(run_id, host, group, reason, State.ACQUIRING, forced, None, "", {}, now, now,
                   "", owner)

    def record(self, run: Run, state: State, note: str, **fields: Any) -> None:
        """Write a state change, its note and changed run fields in one transaction.

        The Run object is updated to match once the write succeeded.
        """
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"journal fields {sorted(unknown)} cannot be updated")
        now = time.time()
        stored = {key: _encode(value) for key, value in fields.items()}
        assignments = "".join(f", {key} = ?" for key in stored)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"UPDATE restart_runs SET state = ?, updated = ?{assignments} "
                         "WHERE id = ?", (state.value, now, *stored.values(), run.id))
            conn.execute("INSERT INTO restart_transitions (run_id, at, from_state, to_state, "
                         "note) VALUES (?, ?, ?, ?, ?)",
                         (run.id, now, run.state.value, state.value, note))
            conn.execute("COMMIT")

        self._execute(write)
        run.state = state
        run.updated = now
        for key, value in fields.items():
            setattr(run, key, value)

    def get(self, run_id: int) -> Run | None:
        """Return one run, or None."""
        rows = self._execute(lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM restart_runs WHERE id = ?", (run_id,)).fetchall())
        return _decode(rows[0]) if rows else None

    def runs(self, host: str | None = None, unresolved: bool = False,
             limit: int = 100) -> list[Run]:
        """Return runs, newest first; only FAILED and unfinished ones with unresolved."""
        where, params = ["1 = 1"], []
        if host is not None:
            where.append("host = ?")
            params.append(host)
        if unresolved:
            finished = ", ".join(f"'{state.value}'" for state in FINISHED)
            where.append(f"state NOT IN ({finished})")
        rows = self._execute(lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM restart_runs WHERE {' AND '.join(where)} "
            "ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall())
        return [_decode(row) for row in rows]

    def transitions(self, run_id: int) -> list[tuple[float, str, str, str]]:
        """Return a run's state changes, oldest first: (time, from, to, note)."""
        rows = self._execute(lambda conn: conn.execute(
            "SELECT at, from_state, to_state, note FROM restart_transitions WHERE run_id = ? "
            "ORDER BY id", (run_id,)).fetchall())
        return [(float(at), str(old), str(new), str(note)) for at, old, new, note in rows]


def _encode(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value


def _decode(row: tuple[Any, ...]) -> Run:
    (run_id, host, group, reason, state, forced, pooled, token, baseline, started, updated,
     error, owner) = row
    return Run(int(run_id), host, group, reason, State(state), bool(forced),
               None if pooled is None else bool(pooled), token, json.loads(baseline),
               float(started), float(updated), error, owner)


def unresolved_runs(store: StateStore, host: str | None = None) -> list[Run]:
    """Return the runs that are FAILED or unfinished, newest first.

    ``opcache-guard check`` reports each as CRITICAL: a FAILED host is out of the load
    balancer until an operator acts, and an unfinished run whose owner is gone needs
    ``opcache-guard repair``. A run another live process is working on shows
    ``in_progress``.
    """
    return Journal(store).runs(host, unresolved=True)
