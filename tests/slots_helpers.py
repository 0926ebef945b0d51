"""Shared checks for the slot backend tests: contention across threads and processes, crashes.

Every holder, between ``acquire`` returning and calling ``release``, adds itself to a counter
file under an exclusive ``flock``. The counter keeps the current and the maximum number of
holders, so a test can assert that the maximum never passed the group's limit.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from opcache_guard.slots import create
from opcache_guard.slots.base import SlotBackend


def _update_counter(path: Path, change: int) -> None:
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text()) if path.exists() else {"current": 0, "max": 0,
                                                                    "total": 0}
        state["current"] += change
        state["max"] = max(state["max"], state["current"])
        if change > 0:
            state["total"] += 1
        path.write_text(json.dumps(state))


def hold_repeatedly(section: dict[str, Any], group: str, host: str, rounds: int,
                    counter: str, hold: float) -> None:
    """Take, hold and release a slot rounds times, counting holders in the counter file."""
    backend = create(section)
    try:
        for _ in range(rounds):
            slot = backend.acquire(group, host, "contention test", timeout=60)
            if slot is None:
                raise RuntimeError(f"{host}: no slot of {group} within 60 s")
            _update_counter(Path(counter), +1)
            time.sleep(hold)
            _update_counter(Path(counter), -1)
            slot.release()
    finally:
        backend.close()


def contend(section: dict[str, Any], group: str, counter: Path, threads: int = 3,
            processes: int = 3, rounds: int = 4, hold: float = 0.02) -> dict[str, int]:
    """Run holders in threads of this process and in separate processes at once.

    Returns the counter: ``max`` holders seen at once and ``total`` slots taken.
    """
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=hold_repeatedly,
                                args=(section, group, f"proc{i}", rounds, str(counter), hold))
                for i in range(processes)]
    failures: list[BaseException] = []

    def run_thread(index: int) -> None:
        try:
            hold_repeatedly(section, group, f"thread{index}", rounds, str(counter), hold)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    workers = [threading.Thread(target=run_thread, args=(i,)) for i in range(threads)]
    for child in children:
        child.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(90)
    for child in children:
        child.join(90)
    assert not failures, failures
    assert [child.exitcode for child in children] == [0] * processes
    result: dict[str, int] = json.loads(counter.read_text())
    return result


_HOLDER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from opcache_guard.slots import create
    section = json.loads(sys.argv[1])
    backend = create(section)
    slot = backend.acquire(sys.argv[2], sys.argv[3], "crash test", timeout=10)
    print("taken" if slot else "none", flush=True)
    time.sleep(60)
""")


def start_holder(section: dict[str, Any], group: str, host: str) -> subprocess.Popen[str]:
    """Start a process that takes a slot and keeps it; returns once it has the slot."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER_SCRIPT, json.dumps(section), group, host],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line == "taken", f"holder process printed {line!r}"
    return process


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL a holder process and reap it."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


#: Groups for ``check_percentage_limits``: each allows two hosts out.
PERCENTAGE_GROUPS = {"half": {"limit": "50%", "size": 4},
                     "guarded": {"limit": 3, "size": 4, "min_pooled": 2}}


def check_percentage_limits(backend: SlotBackend) -> None:
    """Assert that 50% of 4 hosts, and 3 of 4 with 2 kept pooled, both let two hosts out."""
    for group in PERCENTAGE_GROUPS:
        assert backend.acquire(group, "a", "test", 0) is not None
        assert backend.acquire(group, "b", "test", 0) is not None
        assert backend.acquire(group, "c", "test", 0) is None
        assert len(backend.holders(group)) == 2


def check_bounded_wait(backend: SlotBackend) -> None:
    """Assert that a taker of a full group of limit 1 gets None after about its timeout."""
    assert backend.acquire("web", "a", "test", 0) is not None
    started = time.monotonic()
    assert backend.acquire("web", "b", "test", 1.0) is None
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.5
