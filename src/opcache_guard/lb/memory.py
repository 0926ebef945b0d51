"""A load balancer that exists only in memory or in a JSON file, for tests and dry labs.

It keeps the ``LoadBalancer`` contract, so restart and agent tests run against it the code
paths that HAProxy or conftool take, and it can be told to fail chosen calls::

    [lb]
    backend = "memory"
    path = "/tmp/lb.json"     # optional: share the state between processes
    server = "app1"           # default: the host name
    fail = ["pool"]           # calls that raise LoadBalancerError

Without ``path`` the state lives in this process only. With it, every call locks the file,
so a restart run in a child process and the test that watches it see the same state. The
file also logs every change (``calls``), which tests read to prove what happened.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opcache_guard import jsonfile
from opcache_guard.errors import ConfigError, LoadBalancerError
from opcache_guard.lb.base import LbState, LoadBalancer, register

log = logging.getLogger(__name__)

CALLS = ("state", "in_flight", "depool", "disable", "pool")
_PROCESS_STATE: dict[str, Any] = {}


def _empty() -> dict[str, Any]:
    return {"servers": {}, "fail": [], "calls": []}


@register
class MemoryLoadBalancer(LoadBalancer):
    """A load balancer whose servers are entries of a dict or of a JSON file."""

    name = "memory"

    def __init__(self, host: str, path: Path | None = None, server: str = "",
                 fail: list[str] | None = None, dry_run: bool = False) -> None:
        super().__init__(host, dry_run)
        self.path = path
        self.server = server or host
        self.configured_failures = list(fail or [])

    @classmethod
    def from_config(cls, host: str, section: dict[str, Any], dry_run: bool) -> LoadBalancer:
        unknown = sorted(set(section) - {"backend", "path", "server", "fail"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in [lb] for backend 'memory'; "
                              "known keys: backend, fail, path, server")
        fail = section.get("fail", [])
        if not isinstance(fail, list) or not set(fail) <= set(CALLS):
            raise ConfigError(f"[lb] fail = {fail!r} must be a list of calls among: "
                              f"{', '.join(CALLS)}")
        path = Path(str(section["path"])) if section.get("path") else None
        return cls(host, path, str(section.get("server", "")), fail, dry_run)

    def describe(self) -> str:
        return f"memory load balancer server {self.server}"

    @contextlib.contextmanager
    def _data(self) -> Iterator[dict[str, Any]]:
        """Yield the shared state, locked; changes are written back on exit."""
        if self.path is None:
            if not _PROCESS_STATE:
                _PROCESS_STATE.update(_empty())
            yield _PROCESS_STATE
            return
        with jsonfile.locked(self.path, _empty) as data:
            yield data

    def _entry(self, data: dict[str, Any], call: str) -> dict[str, Any]:
        if call in self.configured_failures or call in data["fail"]:
            raise LoadBalancerError(f"memory load balancer: {call} of server {self.server} "
                                    "failed (fault injected)")
        entry: dict[str, Any] = data["servers"].setdefault(
            self.server, {"state": LbState.POOLED.value, "in_flight": 0})
        return entry

    def _change(self, call: str, state: LbState) -> None:
        if self.dry_run:
            log.info("would %s server %s", call, self.server)
            return
        with self._data() as data:
            entry = self._entry(data, call)
            if entry["state"] == LbState.INACTIVE.value:
                raise LoadBalancerError(f"memory load balancer: server {self.server} is "
                                        f"inactive; refusing to {call} it")
            entry["state"] = state.value
            data["calls"].append([self.server, call])

    def state(self) -> LbState:
        with self._data() as data:
            return LbState(self._entry(data, "state")["state"])

    def in_flight(self) -> int | None:
        with self._data() as data:
            value = self._entry(data, "in_flight")["in_flight"]
        return None if value is None else int(value)

    def depool(self) -> None:
        self._change("depool", LbState.DRAINING)

    def disable(self) -> None:
        self._change("disable", LbState.DEPOOLED)

    def pool(self) -> None:
        self._change("pool", LbState.POOLED)

    def set(self, state: LbState | None = None, in_flight: int | None = -1,
            fail: list[str] | None = None) -> None:
        """Set the server's state, in-flight count or failing calls, as a test would."""
        with self._data() as data:
            entry = data["servers"].setdefault(
                self.server, {"state": LbState.POOLED.value, "in_flight": 0})
            if state is not None:
                entry["state"] = state.value
            if in_flight is None or in_flight >= 0:
                entry["in_flight"] = in_flight
            if fail is not None:
                data["fail"] = fail

    def calls(self) -> list[str]:
        """Return the changes made to this server so far, oldest first."""
        with self._data() as data:
            return [call for server, call in data["calls"] if server == self.server]
