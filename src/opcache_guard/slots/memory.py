"""Slots kept in memory or in a locked JSON file, for tests and fault injection.

It keeps the ``SlotBackend`` contract on one machine: the count and the take happen under
one ``flock``, and a slot whose holder process is gone is freed by the next taker::

    [slots]
    backend = "memory"
    path = "/tmp/slots.json"    # optional: share the slots between processes
    fail = false                # true: every acquire raises SlotError

    [slots.groups.web]
    limit = 1
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opcache_guard import jsonfile, procs
from opcache_guard.errors import ConfigError, SlotError
from opcache_guard.slots.base import GroupPolicy, Holder, Slot, SlotBackend, register

POLL_INTERVAL = 0.05
_PROCESS_SLOTS: list[dict[str, Any]] = []


class MemorySlot(Slot):
    """A slot of the memory backend."""

    def __init__(self, backend: MemorySlots, group: str, host: str, holder: str,
                 reason: str) -> None:
        super().__init__(group, host, holder, reason)
        self.backend = backend

    def release(self) -> None:
        with self.backend._entries() as entries:
            entries[:] = [entry for entry in entries
                          if (entry["group"], entry["host"], entry["holder"])
                          != (self.group, self.host, self.holder)]


@register
class MemorySlots(SlotBackend):
    """Slots as entries of a list, in this process or in a JSON file."""

    name = "memory"

    def __init__(self, groups: dict[str, GroupPolicy], path: Path | None = None,
                 fail: bool = False, dry_run: bool = False) -> None:
        super().__init__(groups, dry_run)
        self.path = path
        self.fail = fail
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def from_config(cls, section: dict[str, Any], groups: dict[str, GroupPolicy],
                    dry_run: bool) -> SlotBackend:
        unknown = sorted(set(section) - {"backend", "path", "fail", "groups"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in [slots] for backend 'memory'; "
                              "known keys: backend, fail, groups, path")
        path = Path(str(section["path"])) if section.get("path") else None
        return cls(groups, path, bool(section.get("fail", False)), dry_run)

    @contextlib.contextmanager
    def _entries(self) -> Iterator[list[dict[str, Any]]]:
        if self.path is None:
            yield _PROCESS_SLOTS
            return
        with jsonfile.locked(self.path, list) as entries:
            yield entries

    def _try_take(self, group: str, host: str, reason: str, holder: str) -> MemorySlot | None:
        limit = self.policy(group).max_out()
        with self._entries() as entries:
            _drop_dead(entries)
            for entry in entries:
                if (entry["group"], entry["host"], entry["holder"]) == (group, host, holder):
                    return MemorySlot(self, group, host, holder, entry["reason"])
            if sum(1 for entry in entries if entry["group"] == group) >= limit:
                return None
            entries.append({"group": group, "host": host, "holder": holder,
                            "reason": reason, "since": time.time(), "pid": os.getpid()})
        return MemorySlot(self, group, host, holder, reason)

    def take(self, policy: GroupPolicy, host: str, reason: str, timeout: float,
             holder: str) -> Slot | None:
        group = policy.name
        if self.fail:
            raise SlotError(f"memory slots: acquire for {host} in group {group} failed "
                            "(fault injected)")
        deadline = time.monotonic() + timeout
        while True:
            slot = self._try_take(group, host, reason, holder)
            if slot is not None or time.monotonic() >= deadline:
                return slot
            time.sleep(POLL_INTERVAL)

    def holders(self, group: str) -> list[Holder]:
        with self._entries() as entries:
            _drop_dead(entries)
            return [Holder(entry["group"], entry["host"], entry["holder"], entry["reason"],
                           entry["since"]) for entry in entries if entry["group"] == group]

    def release_stale(self, group: str, host: str) -> bool:
        with self._entries() as entries:
            return _drop_dead(entries, group, host) > 0


def _drop_dead(entries: list[dict[str, Any]], group: str = "", host: str = "") -> int:
    """Remove the slots whose holder process is gone, of one host or of all; return how many."""
    kept = [entry for entry in entries
            if procs.is_alive(entry["pid"])
            or (host and (entry["group"], entry["host"]) != (group, host))]
    dropped = len(entries) - len(kept)
    entries[:] = kept
    return dropped
