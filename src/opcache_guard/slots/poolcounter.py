"""Slots as PoolCounter locks: one TCP connection per held slot.

PoolCounter (the ``poolcounterd`` daemon) speaks one text line each way. ``ACQ4ME KEY WORKERS
MAXQUEUE TIMEOUT`` returns ``LOCKED`` when fewer than WORKERS clients hold KEY, otherwise
queues the client for up to TIMEOUT whole seconds and returns ``LOCKED`` or ``TIMEOUT``, or
``QUEUE_FULL`` when MAXQUEUE clients already hold or wait for KEY. ``RELEASE`` returns
``RELEASED`` or ``NOT_LOCKED``. The daemon counts and grants in one event loop, which makes
count-and-take atomic, and it frees every lock of a connection when the connection closes, so a
crashed holder frees its slot at once.

Each slot takes two locks on its own connection: first ``opcache-guard:host:GROUP:HOST`` with
one worker, so one host never has two slots of a group, whichever process requests them, then
``opcache-guard:slots:GROUP`` with the group's limit as workers. The same connection asking for
one key twice would take two slots, which is why every slot has its own connection.

What PoolCounter cannot do:

- It cannot list holders. ``holders`` returns the slots this backend object holds, and
  ``slots status`` says so. ``STATS`` returns only daemon-wide counters (locks held, workers
  processing and waiting), not counts per key, so it does not help here.
- It waits in whole seconds: a timeout of 2.7 s waits 2 s, and below 0.95 s it tries once.
- Re-taking with the same host and holder returns the held slot only within this process.

Configuration (``[slots]``, with ``backend = "poolcounter"``):

- ``address``: ``HOST:PORT`` of the daemon, default ``127.0.0.1:7531``.
- ``timeout``: seconds to connect and to wait for each reply beyond the slot wait, default 5.
- ``maxqueue``: how many takers may wait for a group's slot at once, default 100.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from opcache_guard.errors import ConfigError, SlotError
from opcache_guard.slots.base import (
    GroupPolicy,
    Holder,
    Slot,
    SlotBackend,
    check_keys,
    number,
    register,
)

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:7531"
_WHOLE_SECOND_SLACK = 0.05


def parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[IPv6]:PORT``) into host and port.

    Raises:
        ConfigError: the text has no valid port.
    """
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"[slots] address = {text!r} is invalid; write HOST:PORT, for "
                          f"example {DEFAULT_ADDRESS}")
    return host, int(port)


class PoolCounterConnection:
    """One connection to the daemon; the locks it holds end when it closes."""

    def __init__(self, address: tuple[str, int], timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        try:
            self.sock = socket.create_connection(address, timeout=timeout)
        except OSError as exc:
            raise SlotError(f"cannot connect to PoolCounter at {self.label}: {exc}; check "
                            "that poolcounterd runs and [slots] address") from exc
        self.reader = self.sock.makefile("rb")

    @property
    def label(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def command(self, line: str, wait: float = 0.0) -> str:
        """Send one command and return the reply line, waiting up to wait + timeout seconds.

        Raises:
            SlotError: the connection failed or the daemon closed it.
        """
        try:
            self.sock.settimeout(wait + self.timeout)
            self.sock.sendall(line.encode() + b"\n")
            reply = self.reader.readline()
        except OSError as exc:
            self.close()
            raise SlotError(f"PoolCounter at {self.label} failed on {line.split()[0]}: "
                            f"{exc}") from exc
        if not reply:
            self.close()
            raise SlotError(f"PoolCounter at {self.label} closed the connection on "
                            f"{line.split()[0]}")
        return reply.decode(errors="replace").strip()

    def close(self) -> None:
        """Close the connection, which frees every lock it holds."""
        self.reader.close()
        self.sock.close()


class PoolCounterSlot(Slot):
    """A slot held by an open connection."""

    def __init__(self, backend: PoolCounterBackend, connection: PoolCounterConnection,
                 group: str, host: str, holder: str, reason: str) -> None:
        super().__init__(group, host, holder, reason)
        self.backend = backend
        self.connection: PoolCounterConnection | None = connection
        self.since = time.time()

    def release(self) -> None:
        """Release both locks and close the connection; idempotent."""
        connection, self.connection = self.connection, None
        if connection is None:
            return
        try:
            for _ in range(2):
                connection.command("RELEASE")
        except SlotError as exc:
            log.warning("closing PoolCounter connection after a failed RELEASE, which frees "
                        "the slot of group %s for %s: %s", self.group, self.host, exc)
        finally:
            connection.close()
            self.backend.forget(self)
        log.info("released slot of group %s for %s", self.group, self.host)


@register
class PoolCounterBackend(SlotBackend):
    """Slots in PoolCounter; see the module docstring."""

    name = "poolcounter"
    lists_all_holders = False

    def __init__(self, groups: dict[str, GroupPolicy], address: tuple[str, int],
                 timeout: float = 5.0, maxqueue: int = 100, dry_run: bool = False) -> None:
        super().__init__(groups, dry_run)
        self.address = address
        self.timeout = timeout
        self.maxqueue = maxqueue
        self._held: dict[tuple[str, str], PoolCounterSlot] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, section: dict[str, Any], groups: dict[str, GroupPolicy],
                    dry_run: bool) -> PoolCounterBackend:
        """Build the backend from ``[slots]``: address, timeout and maxqueue."""
        check_keys(section, cls.name, ("address", "timeout", "maxqueue"))
        maxqueue = section.get("maxqueue", 100)
        if isinstance(maxqueue, bool) or not isinstance(maxqueue, int) or maxqueue < 1:
            raise ConfigError(f"[slots] maxqueue = {maxqueue!r} must be a whole number of "
                              "at least 1")
        return cls(groups, parse_address(str(section.get("address", DEFAULT_ADDRESS))),
                   number(section, "timeout", 5.0, 0.1), maxqueue, dry_run)

    def take(self, policy: GroupPolicy, host: str, reason: str, timeout: float,
             holder: str) -> Slot | None:
        """Take a slot; see ``SlotBackend.acquire``."""
        group = policy.name
        with self._lock:
            held = self._held.get((group, host))
        if held is not None:
            return held if held.holder == holder else None
        workers = policy.max_out()
        deadline = time.monotonic() + timeout
        connection = PoolCounterConnection(self.address, self.timeout)
        try:
            taken = (self._lock_key(connection, f"opcache-guard:host:{group}:{host}", 1, deadline)
                     and self._lock_key(connection, f"opcache-guard:slots:{group}", workers,
                                        deadline))
        except BaseException:
            connection.close()
            raise
        if not taken:
            connection.close()
            return None
        slot = PoolCounterSlot(self, connection, group, host, holder, reason)
        with self._lock:
            self._held[(group, host)] = slot
        log.info("took a slot of group %s (limit %d) for %s (%s)", group, workers, host, reason)
        return slot

    def _lock_key(self, connection: PoolCounterConnection, key: str, workers: int,
                  deadline: float) -> bool:
        # The daemon waits whole seconds; the slack keeps a 1 s timeout from becoming 0 s
        # after the few microseconds already spent.
        wait = max(int(deadline - time.monotonic() + _WHOLE_SECOND_SLACK), 0)
        reply = connection.command(f"ACQ4ME {key} {workers} {workers + self.maxqueue} {wait}",
                                   wait)
        if reply == "LOCKED":
            return True
        if reply == "TIMEOUT":
            return False
        if reply == "QUEUE_FULL":
            log.warning("PoolCounter queue for %s is full (%d waiting); raise [slots] maxqueue",
                        key, self.maxqueue)
            return False
        raise SlotError(f"PoolCounter at {connection.label} returned {reply!r} to ACQ4ME {key}")

    def forget(self, slot: PoolCounterSlot) -> None:
        """Drop a released slot from the slots this process holds."""
        with self._lock:
            if self._held.get((slot.group, slot.host)) is slot:
                del self._held[(slot.group, slot.host)]

    def holders(self, group: str) -> list[Holder]:
        """Return the slots of a group that this backend object holds; others cannot be listed."""
        self.policy(group)
        with self._lock:
            slots = [slot for (name, _), slot in self._held.items() if name == group]
        return [Holder(group, s.host, s.holder, s.reason, s.since) for s in slots]

    def close(self) -> None:
        """Release every slot this backend object holds."""
        with self._lock:
            slots = list(self._held.values())
        for slot in slots:
            slot.release()
