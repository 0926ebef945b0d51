"""The states of a safe restart run and the moves allowed between them.

A run walks ACQUIRING, DEPOOLING, DRAINING, DISABLING, RESTARTING, VERIFYING, POOLING,
RELEASING and ends DONE. A forced run goes from ACQUIRING straight to RESTARTING, because
it does not depool. A state names the step about to be taken: the journal records the
state before its step runs, so after a crash the last state says which step may have been
half done, and every step is safe to repeat.

Failures before the restart lead through ABORTING (the host is put back as it was) to
ABORTED. Failures from the restart on lead to FAILED: the host stays out of the load
balancer until repair ``--pool-failed`` or the operator's ``pool`` command puts it back.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import Path
from typing import Any

from opcache_guard import procs
from opcache_guard.errors import RestartError


class State(enum.Enum):
    """The state of a restart run; each names the step about to be taken."""

    ACQUIRING = "acquiring"
    DEPOOLING = "depooling"
    DRAINING = "draining"
    DISABLING = "disabling"
    RESTARTING = "restarting"
    VERIFYING = "verifying"
    POOLING = "pooling"
    RELEASING = "releasing"
    DONE = "done"
    ABORTING = "aborting"
    ABORTED = "aborted"
    SKIPPED = "skipped"
    FAILED = "failed"


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.ACQUIRING: frozenset({S.DEPOOLING, S.RESTARTING, S.SKIPPED, S.ABORTING}),
    S.DEPOOLING: frozenset({S.DRAINING, S.ABORTING}),
    S.DRAINING: frozenset({S.DISABLING, S.ABORTING}),
    S.DISABLING: frozenset({S.RESTARTING, S.ABORTING}),
    S.RESTARTING: frozenset({S.VERIFYING, S.FAILED, S.ABORTING}),
    S.VERIFYING: frozenset({S.POOLING, S.FAILED}),
    S.POOLING: frozenset({S.RELEASING, S.FAILED}),
    S.RELEASING: frozenset({S.DONE}),
    S.ABORTING: frozenset({S.ABORTED, S.FAILED}),
    S.FAILED: frozenset({S.RESTARTING, S.POOLING}),
    S.DONE: frozenset(),
    S.ABORTED: frozenset(),
    S.SKIPPED: frozenset(),
}

#: The next state of a run whose step raised a GuardError, by the state of that step.
ON_ERROR: dict[State, State] = {
    S.ACQUIRING: S.ABORTING,
    S.DEPOOLING: S.ABORTING,
    S.DRAINING: S.ABORTING,
    S.DISABLING: S.ABORTING,
    S.RESTARTING: S.FAILED,
    S.VERIFYING: S.FAILED,
    S.POOLING: S.FAILED,
    S.ABORTING: S.FAILED,
}

#: Runs in these states need nothing more.
FINISHED = frozenset({S.DONE, S.ABORTED, S.SKIPPED})
#: Runs in these states stop the state machine; FAILED waits for an operator.
STOPPED = FINISHED | {S.FAILED}


def check_transition(current: State, new: State) -> None:
    """Raise RestartError unless the transitions table allows current -> new."""
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(state.name for state in TRANSITIONS[current])) or "none"
        raise RestartError(f"illegal restart state change {current.name} -> {new.name}; "
                           f"allowed from {current.name}: {allowed}")


def owner_token(pid: int | None = None) -> str:
    """Return ``PID:STARTTICKS`` for a process, which a reused pid does not match."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_ticks(pid)}"


def owner_alive(token: str) -> bool:
    """Return whether the process named by an owner token still runs."""
    pid_text, _, ticks = token.partition(":")
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return procs.is_alive(pid) and _start_ticks(pid) == ticks


def _start_ticks(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


@dataclasses.dataclass
class Run:
    """One restart run as the journal stores it."""

    id: int
    host: str
    group: str
    reason: str
    state: State
    forced: bool
    was_pooled_before: bool | None
    slot_token: str
    baseline: dict[str, Any]
    started: float
    updated: float
    error: str
    owner: str

    @property
    def in_progress(self) -> bool:
        """Whether a live process other than this one is working on the run."""
        return (self.state not in STOPPED and self.owner != owner_token()
                and owner_alive(self.owner))

    def describe(self) -> str:
        """Return one line for reports: id, host, state and cause."""
        detail = f": {self.error}" if self.error else ""
        return f"run {self.id} of {self.host} ({self.reason}) is {self.state.name}{detail}"
