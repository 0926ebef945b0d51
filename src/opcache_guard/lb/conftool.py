"""Conftool-style keys in etcd, for load balancers that watch etcd (PyBall, confd templates).

Each host has one JSON value ``{"pooled": "yes"|"no"|"inactive", "weight": N}`` at
``PREFIX/pools/DATACENTER/CLUSTER/SERVICE/HOST``. Configuration::

    [lb]
    backend = "conftool"
    endpoints = ["http://127.0.0.1:2379"]   # one URL or a list; tried in order
    prefix = "/conftool/v1"
    datacenter = "eqiad"
    cluster = "appservers"
    service = "apache2"
    timeout = 5.0

``depool`` writes ``pooled: no`` and ``pool`` writes ``pooled: yes``. Each write is a
transaction that compares the key's mod_revision with the one just read, so a concurrent edit
by an operator is never overwritten. On a conflict the key is read again, a bounded number of
times.
Every other field of the value is kept. A host at ``inactive`` belongs to the operator and is
never changed. etcd does not know about requests, so ``in_flight`` returns None, and
``disable`` does nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import urllib.parse
from typing import Any, Literal

import etcd3gw

from opcache_guard.errors import ConfigError, LoadBalancerError
from opcache_guard.etcdfailover import call_first_reachable
from opcache_guard.lb import settings
from opcache_guard.lb.base import LbState, LoadBalancer, register

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/conftool/v1"
DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
#: How many times a change reads the key again after another writer changed it meanwhile.
MAX_ATTEMPTS = 5

_KEYS = ("endpoints", "prefix", "datacenter", "cluster", "service", "timeout")
_STATES = {"yes": LbState.POOLED, "no": LbState.DEPOOLED, "inactive": LbState.INACTIVE}


@dataclasses.dataclass(frozen=True)
class KeyValue:
    """A conftool value as read, with the revision that a compare-and-swap checks."""

    value: dict[str, Any]
    mod_revision: int


@register
class ConftoolLoadBalancer(LoadBalancer):
    """One host's conftool key in etcd."""

    name = "conftool"

    def __init__(self, host: str, endpoints: list[str], key: str, timeout: float = 5.0,
                 dry_run: bool = False) -> None:
        super().__init__(host, dry_run)
        self.endpoints = endpoints
        self.key = key
        self.timeout = timeout
        self._clients = [_client(url, timeout) for url in endpoints]

    @classmethod
    def from_config(cls, host: str, section: dict[str, Any], dry_run: bool) -> LoadBalancer:
        """Build the backend from ``[lb]``; see the module docstring for the keys.

        Raises:
            ConfigError: a key is missing, unknown or invalid.
        """
        settings.check_keys(section, _KEYS, cls.name)
        endpoints = settings.string_list(section, "endpoints", required=False,
                                           allow_single=True) or [DEFAULT_ENDPOINT]
        prefix = settings.string(section, "prefix", DEFAULT_PREFIX).rstrip("/")
        parts = [settings.string(section, name) for name in ("datacenter", "cluster", "service")]
        for part in [*parts, host]:
            if "/" in part:
                raise ConfigError(f"[lb] conftool key part {part!r} contains '/'; each of "
                                  "datacenter, cluster, service and the host is one path segment")
        key = "/".join([prefix, "pools", *parts, host])
        return cls(host, endpoints, key, settings.timeout(section), dry_run)

    def describe(self) -> str:
        """Name the key for log lines: ``conftool /conftool/v1/pools/dc/cluster/svc/app1``."""
        return f"{self.name} {self.key}"

    def state(self) -> LbState:
        """Return the state stored in the host's key.

        Raises:
            LoadBalancerError: etcd is unreachable, the key is missing, or its value is invalid.
        """
        return _state_of(self.key, self.read().value)

    def in_flight(self) -> int | None:
        """Return None: etcd does not know how many requests the host is serving."""
        return None

    def depool(self) -> None:
        """Set ``pooled`` to ``no``.

        Raises:
            LoadBalancerError: the host is inactive, the key is missing, or etcd failed.
        """
        self._change("no")

    def pool(self) -> None:
        """Set ``pooled`` to ``yes``.

        Raises:
            LoadBalancerError: the host is inactive, the key is missing, or etcd failed.
        """
        self._change("yes")

    def read(self) -> KeyValue:
        """Read the host's key and the revision of its last change.

        Raises:
            LoadBalancerError: etcd is unreachable, the key is missing or not a JSON object.
        """
        found = self._call(lambda client: client.get(self.key, metadata=True))
        if not found:
            raise LoadBalancerError(f"conftool key {self.key} not found in etcd at "
                                    f"{', '.join(self.endpoints)}; create it (for example "
                                    "with confctl) or check [lb] prefix, datacenter, cluster "
                                    "and service")
        raw, metadata = found[0]
        try:
            value = json.loads(raw)
        except ValueError as error:
            raise LoadBalancerError(f"conftool key {self.key} is not JSON: {raw[:80]!r}") from error
        if not isinstance(value, dict):
            raise LoadBalancerError(f"conftool key {self.key} is not a JSON object: {raw[:80]!r}")
        return KeyValue(value, int(metadata["mod_revision"]))

    def write_if_unchanged(self, value: dict[str, Any], mod_revision: int) -> bool:
        """Write value only if the key's mod_revision is still mod_revision.

        Returns:
            Whether the write happened; False means another writer changed the key first.

        Raises:
            LoadBalancerError: etcd is unreachable or rejected the transaction.
        """
        encoded_key = _encode(self.key)
        transaction = {
            "compare": [{"key": encoded_key, "result": "EQUAL", "target": "MOD",
                         "mod_revision": mod_revision}],
            "success": [{"request_put": {"key": encoded_key,
                                         "value": _encode(json.dumps(value, sort_keys=True))}}],
            "failure": [],
        }
        reply = self._call(lambda client: client.transaction(transaction))
        return bool(reply.get("succeeded", False))

    def _change(self, pooled: Literal["yes", "no"]) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            current = self.read()
            state = _state_of(self.key, current.value)
            if state is LbState.INACTIVE:
                raise LoadBalancerError(f"conftool key {self.key} is pooled=inactive; opcache-"
                                        "guard never changes an inactive host, so an operator "
                                        "must pool it first")
            if current.value["pooled"] == pooled:
                log.info("kept %s at pooled=%s: it is there already", self.describe(), pooled)
                return
            if self.dry_run:
                log.info("would set %s to pooled=%s (dry run)", self.describe(), pooled)
                return

            updated = {**current.value, "pooled": pooled}
            if self.write_if_unchanged(updated, current.mod_revision):
                log.info("set %s to pooled=%s", self.describe(), pooled)
                return
            log.warning("retrying %s: the key changed while setting pooled=%s (attempt %d of %d)",
                        self.describe(), pooled, attempt, MAX_ATTEMPTS)
        raise LoadBalancerError(f"conftool key {self.key} changed under every one of "
                                f"{MAX_ATTEMPTS} attempts to set pooled={pooled}; another "
                                "writer keeps editing it, find it and retry")

    def _call(self, request: Any) -> Any:
        return call_first_reachable(
            list(zip(self.endpoints, self._clients, strict=True)), request, LoadBalancerError,
            f"for conftool key {self.key}", f"waited {self.timeout:g} s each; check [lb] "
            "endpoints")


def _encode(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _state_of(key: str, value: dict[str, Any]) -> LbState:
    pooled = value.get("pooled")
    if pooled not in _STATES:
        raise LoadBalancerError(f"conftool key {key} has pooled={pooled!r}; expected yes, no or "
                                "inactive")
    return _STATES[pooled]


def _client(url: str, timeout: float) -> etcd3gw.Etcd3Client:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"[lb] endpoints: {url!r} is not an etcd URL; write "
                          "http://127.0.0.1:2379")
    port = parsed.port or 2379
    return etcd3gw.Etcd3Client(host=parsed.hostname, port=port, protocol=parsed.scheme,
                               timeout=timeout)
