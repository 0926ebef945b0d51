"""HAProxy through its runtime API: drain, maintenance and ready on one server line.

Configuration::

    [lb]
    backend = "haproxy"
    socket = "unix:/run/haproxy/admin.sock"   # or "127.0.0.1:9999"; needs level admin
    haproxy_backend = "php"
    server = "app1"                            # default: the host name
    timeout = 5.0

``depool`` sets the server to ``drain`` (no new requests, running ones finish), ``disable``
to ``maint`` (which also pauses its health checks), ``pool`` to ``ready``. Every change is
read back with ``show servers state`` before it counts as done.

HAProxy has no mark for a server that an operator wants left alone: a server written
``disabled`` in haproxy.cfg looks the same as one we put into maintenance, so this backend
never reports ``INACTIVE``.
"""

from __future__ import annotations

import logging
from typing import Any

from opcache_guard.errors import LoadBalancerError
from opcache_guard.lb import settings
from opcache_guard.lb.base import LbState, LoadBalancer, register
from opcache_guard.lb.haproxy_api import RuntimeAPI, parse_socket

log = logging.getLogger(__name__)

# srv_admin_state bit flags, from HAProxy 2.6 include/haproxy/server-t.h (enum srv_admin).
ADMF_FMAINT = 0x01  # forced into maintenance (set server ... state maint)
ADMF_IMAINT = 0x02  # maintenance inherited from a tracked server
ADMF_CMAINT = 0x04  # written "disabled" in the configuration; stays set after "state ready"
ADMF_FDRAIN = 0x08  # forced into drain (set server ... state drain)
ADMF_IDRAIN = 0x10  # drain inherited from a tracked server
ADMF_RMAINT = 0x20  # maintenance after a DNS resolution failure
ADMF_MAINT = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT
ADMF_DRAIN = ADMF_FDRAIN | ADMF_IDRAIN

_KEYS = ("socket", "haproxy_backend", "server", "timeout")


def state_of(admin_state: int, weight: int) -> LbState:
    """Map a server's ``srv_admin_state`` flags and user weight to an LbState.

    HAProxy treats a server of weight 0 as draining too: it takes no new requests.
    """
    if admin_state & ADMF_MAINT:
        return LbState.DEPOOLED
    if admin_state & ADMF_DRAIN or weight == 0:
        return LbState.DRAINING
    return LbState.POOLED


@register
class HaproxyLoadBalancer(LoadBalancer):
    """One server line of one HAProxy backend, driven through the admin socket."""

    name = "haproxy"

    def __init__(self, host: str, api: RuntimeAPI, backend: str, server: str,
                 dry_run: bool = False) -> None:
        super().__init__(host, dry_run)
        self.api = api
        self.backend = backend
        self.server = server

    @classmethod
    def from_config(cls, host: str, section: dict[str, Any], dry_run: bool) -> LoadBalancer:
        """Build the backend from ``[lb]``; see the module docstring for the keys.

        Raises:
            ConfigError: a key is missing, unknown or invalid.
        """
        settings.check_keys(section, _KEYS, cls.name)
        address = parse_socket(settings.string(section, "socket"))
        api = RuntimeAPI(address, settings.timeout(section))
        return cls(host, api, settings.string(section, "haproxy_backend"),
                   settings.string(section, "server", host), dry_run)

    def describe(self) -> str:
        """Name the server for log lines: ``haproxy php/app1``."""
        return f"{self.name} {self.backend}/{self.server}"

    def state(self) -> LbState:
        """Return the server's state from ``show servers state``.

        Raises:
            LoadBalancerError: the socket failed, or the backend or server is unknown.
        """
        row = self._find(self.api.show_servers_state(self.backend), "srv_name", "show servers state")
        try:
            return state_of(int(row["srv_admin_state"]), int(row["srv_uweight"]))
        except (KeyError, ValueError) as error:
            raise LoadBalancerError(f"{self.describe()}: 'show servers state' has no usable "
                                    f"srv_admin_state or srv_uweight: {row}") from error

    def in_flight(self) -> int:
        """Return the server's current sessions plus the requests queued for it alone.

        ``scur`` counts the requests the server is running. ``qcur`` counts requests waiting
        in the server's own queue, bound to it by persistence, which it will still serve.

        Raises:
            LoadBalancerError: the socket failed, or the backend or server is unknown.
        """
        row = self._find(self.api.show_stat(self.backend), "svname", "show stat")
        try:
            return int(row["scur"]) + int(row.get("qcur") or 0)
        except (KeyError, ValueError) as error:
            raise LoadBalancerError(f"{self.describe()}: 'show stat' has no usable scur "
                                    f"column: {row}") from error

    def depool(self) -> None:
        """Set the server to drain, unless it already takes no new requests.

        Raises:
            LoadBalancerError: the change was rejected or did not show in the server's state.
        """
        current = self.state()
        if current in (LbState.DRAINING, LbState.DEPOOLED):
            log.info("kept %s %s: it takes no new requests already", self.describe(),
                     current.value)
            return
        self._set("drain", LbState.DRAINING)

    def disable(self) -> None:
        """Put the server into maintenance, which also pauses its health checks.

        Raises:
            LoadBalancerError: the change was rejected or did not show in the server's state.
        """
        if self.state() is LbState.DEPOOLED:
            log.info("kept %s in maintenance: it is there already", self.describe())
            return
        self._set("maint", LbState.DEPOOLED)

    def pool(self) -> None:
        """Set the server to ready.

        Raises:
            LoadBalancerError: the change was rejected or the server is still not pooled
                afterwards (for example because its weight is 0).
        """
        if self.state() is LbState.POOLED:
            log.info("kept %s pooled: it is pooled already", self.describe())
            return
        self._set("ready", LbState.POOLED)

    def _set(self, haproxy_state: str, expected: LbState) -> None:
        command = f"set server {self.backend}/{self.server} state {haproxy_state}"
        if self.dry_run:
            log.info("would send %r to %s (dry run)", command, self.api.address)
            return

        log.info("setting %s to %s", self.describe(), haproxy_state)
        self.api.change(command)
        reached = self.state()
        if reached is not expected:
            raise LoadBalancerError(f"{self.describe()}: still {reached.value} after "
                                    f"{command!r}; check the server's weight and state with "
                                    f"'show servers state {self.backend}'")

    def _find(self, rows: list[dict[str, str]], name_column: str, source: str) -> dict[str, str]:
        for row in rows:
            if row.get(name_column) == self.server:
                return row
        known = ", ".join(row.get(name_column, "?") for row in rows) or "none"
        raise LoadBalancerError(f"HAProxy backend {self.backend} at {self.api.address} has no "
                                f"server {self.server} in '{source}' (servers: {known}); "
                                "check [lb] server")
