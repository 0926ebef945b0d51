"""Slots as etcd keys under leases, for hosts that coordinate across machines.

A slot is the key ``PREFIX/slots/GROUP/HOST``, attached to a lease of ``ttl`` seconds; its
value is JSON with host, holder, reason and since. When a holder dies its lease is not kept
alive, so etcd deletes the key within ``ttl`` seconds.

Counting and taking is one transaction. The taker reads every key under ``PREFIX/slots/GROUP/``
and the store revision R of that read. If fewer keys than the limit exist, it sends a
transaction whose one compare covers the whole group prefix as a range: every key in it must
have a mod revision of at most R, and the put runs only when that is true. Why this is
race-free: a key created or rewritten after the read has a mod revision above R, so it fails
the compare. A key deleted after the read only lowers the count. So at commit the group has at
most the keys counted, which were fewer than the limit, and one more does not exceed it. A
failed compare means another taker moved first, so the taker reads again and retries until
its timeout. Range compares (``Compare.range_end``) came with etcd 3.3; the tests run them
against etcd 3.4.23.

Configuration (``[slots]``, with ``backend = "etcd"``):

- ``endpoints``: one URL or a list, default ``http://127.0.0.1:2379``; tried in order.
- ``prefix``: key prefix, default ``/opcache-guard``.
- ``ttl``: lease seconds, at least 2 (etcd's minimum), default 600.
- ``timeout``: seconds for each request to etcd, default 5.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.parse
from typing import Any

from etcd3gw.client import Etcd3Client

from opcache_guard.errors import ConfigError, SlotError
from opcache_guard.etcdfailover import call_first_reachable
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

log = logging.getLogger(__name__)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _range_end(prefix: str) -> str:
    """Return the key just past every key that starts with prefix (which ends in '/')."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def parse_endpoints(value: Any) -> list[tuple[str, int]]:
    """Read ``endpoints`` into (host, port) pairs.

    Raises:
        ConfigError: an endpoint is not an http URL with a port.
    """
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not urls:
        raise ConfigError(f"[slots] endpoints = {value!r} must be a URL or a list of URLs")
    pairs = []
    for url in urls:
        parsed = urllib.parse.urlsplit(str(url))
        if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
            raise ConfigError(f"[slots] endpoint {url!r} is invalid; write it as "
                              "http://HOST:PORT, for example http://127.0.0.1:2379")
        pairs.append((parsed.hostname, parsed.port))
    return pairs


class EtcdSlot(Slot):
    """A key under a lease, held by this process."""

    def __init__(self, backend: EtcdBackend, group: str, host: str, holder: str, reason: str,
                 lease_id: int) -> None:
        super().__init__(group, host, holder, reason)
        self.backend = backend
        self.lease_id = lease_id
        self.ttl = backend.ttl

    def release(self) -> None:
        """Revoke the lease, which deletes the key; idempotent."""
        self.backend.revoke(self.lease_id)
        log.info("released slot of group %s for %s", self.group, self.host)

    def pin(self) -> bool:
        """Write the key again without a lease, so it outlives this process and its lease."""
        key = self.backend.slot_key(self.group, self.host)
        reply = self.backend.call("/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs") or []
        if not kvs:
            return False
        self.backend.call("/kv/put", {"key": _b64(key), "value": kvs[0].get("value", "")})
        self.backend.revoke(self.lease_id)
        log.info("kept the slot of group %s for %s until the host is pooled again",
                 self.group, self.host)
        return True

    def refresh(self) -> None:
        """Keep the lease alive for another ``ttl`` seconds.

        Raises:
            SlotError: the lease expired, so the slot is lost, or etcd is unreachable.
        """
        reply = self.backend.call("/lease/keepalive", {"ID": self.lease_id})
        if int(reply.get("result", {}).get("TTL", -1)) <= 0:
            raise SlotError(f"slot of group {self.group} for {self.host} is lost: lease "
                            f"{self.lease_id} expired; refresh it more often than every "
                            f"{self.backend.ttl:g} s")


class _PendingLease:
    """The lease a taker puts its key under, granted when first needed.

    A taker may wait longer than ``ttl``, so a lease older than half of it is replaced
    before use rather than trusted to be alive.
    """

    def __init__(self, backend: EtcdBackend) -> None:
        self.backend = backend
        self.lease_id = 0
        self.granted_at = 0.0

    def usable_id(self) -> int:
        if self.lease_id and time.monotonic() - self.granted_at > self.backend.ttl / 2:
            self.discard()
        if not self.lease_id:
            reply = self.backend.call("/lease/grant", {"TTL": int(self.backend.ttl)})
            self.lease_id = int(reply["ID"])
            self.granted_at = time.monotonic()
        return self.lease_id

    def discard(self) -> None:
        lease_id, self.lease_id = self.lease_id, 0
        if not lease_id:
            return
        try:
            self.backend.revoke(lease_id)
        except SlotError as exc:
            log.warning("failed to revoke unused lease %d, it expires in %g s: %s", lease_id,
                        self.backend.ttl, exc)


@register
class EtcdBackend(SlotBackend):
    """Slots in etcd; see the module docstring."""

    name = "etcd"

    def __init__(self, groups: dict[str, GroupPolicy], endpoints: list[tuple[str, int]],
                 prefix: str = "/opcache-guard", ttl: float = 600.0, timeout: float = 5.0,
                 dry_run: bool = False) -> None:
        super().__init__(groups, dry_run)
        if ttl < 2:
            raise ConfigError(f"[slots] ttl = {ttl:g} is below etcd's minimum lease of 2 s; "
                              "set ttl = 2 or more")
        self.clients = [Etcd3Client(host=host, port=port, timeout=timeout, api_path="/v3/")
                        for host, port in endpoints]
        self.prefix = prefix.rstrip("/")
        self.ttl = ttl
        self.timeout = timeout

    @classmethod
    def from_config(cls, section: dict[str, Any], groups: dict[str, GroupPolicy],
                    dry_run: bool) -> EtcdBackend:
        """Build the backend from ``[slots]``: endpoints, prefix, ttl and timeout."""
        check_keys(section, cls.name, ("endpoints", "prefix", "ttl", "timeout"))
        endpoints = parse_endpoints(section.get("endpoints", "http://127.0.0.1:2379"))
        prefix = str(section.get("prefix", "/opcache-guard"))
        if not prefix.startswith("/"):
            raise ConfigError(f"[slots] prefix = {prefix!r} must start with /")
        return cls(groups, endpoints, prefix, number(section, "ttl", 600.0, 0.0),
                   number(section, "timeout", 5.0, 0.1), dry_run)

    def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one request to the endpoints in order, returning the first response.

        Raises:
            SlotError: every endpoint failed, or etcd rejected the request.
        """
        def post(client: Etcd3Client) -> dict[str, Any]:
            reply: dict[str, Any] = client.post(client.get_url(path), json=payload)
            return reply

        endpoints = [(str(client.base_url), client) for client in self.clients]
        return call_first_reachable(endpoints, post, SlotError, f"to {path}",
                                    "check [slots] endpoints")

    def revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its key; a lease that already expired is fine.

        Raises:
            SlotError: etcd is unreachable or failed.
        """
        try:
            self.call("/kv/lease/revoke", {"ID": lease_id})
        except SlotError as exc:
            if "lease not found" not in str(exc):
                raise

    def group_prefix(self, group: str) -> str:
        """Return the key prefix of a group's slots, ending in '/'."""
        return f"{self.prefix}/slots/{group}/"

    def _read_group(self, group: str) -> tuple[int, list[dict[str, Any]]]:
        prefix = self.group_prefix(group)
        reply = self.call("/kv/range", {"key": _b64(prefix), "range_end": _b64(_range_end(prefix))})
        revision = int(reply["header"]["revision"])
        return revision, list(reply.get("kvs", []))

    def take(self, policy: GroupPolicy, host: str, reason: str, timeout: float,
             holder: str) -> Slot | None:
        """Take a slot; see ``SlotBackend.acquire``."""
        lease = _PendingLease(self)
        try:
            slot = poll(lambda: self._try_take(policy, host, reason, holder, lease), timeout)
        except BaseException:
            lease.discard()
            raise
        if slot is None or slot.lease_id != lease.lease_id:
            lease.discard()
        return slot

    def _try_take(self, policy: GroupPolicy, host: str, reason: str, holder: str,
                  lease: _PendingLease) -> EtcdSlot | None:
        prefix = self.group_prefix(policy.name)
        key = prefix + host
        revision, kvs = self._read_group(policy.name)
        for kv in kvs:
            if _unb64(kv["key"]) != key:
                continue
            current = json.loads(_unb64(kv.get("value", "")) or "{}")
            if current.get("holder") != holder:
                return None
            return EtcdSlot(self, policy.name, host, holder, current.get("reason", reason),
                            int(kv.get("lease", 0)))
        if len(kvs) >= policy.max_out():
            return None
        lease_id = lease.usable_id()
        value = json.dumps({"host": host, "holder": holder, "reason": reason,
                            "since": time.time()})
        txn = {
            "compare": [{"key": _b64(prefix), "range_end": _b64(_range_end(prefix)),
                         "target": "MOD", "result": "LESS", "mod_revision": revision + 1}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value),
                                         "lease": lease_id}}],
        }
        if not self.call("/kv/txn", txn).get("succeeded", False):
            log.debug("retrying slot of group %s for %s: the group changed since revision %d",
                      policy.name, host, revision)
            return None
        log.info("took slot %d of %d of group %s for %s (%s)", len(kvs) + 1, policy.max_out(),
                 policy.name, host, reason)
        return EtcdSlot(self, policy.name, host, holder, reason, lease_id)

    def slot_key(self, group: str, host: str) -> str:
        """Return the key of host's slot in group."""
        return self.group_prefix(group) + host

    def release_stale(self, group: str, host: str) -> bool:
        """Delete host's pinned slot (a key without a lease); a leased key expires by itself."""
        self.policy(group)
        key = self.slot_key(group, host)
        kvs = self.call("/kv/range", {"key": _b64(key)}).get("kvs") or []
        if not kvs or int(kvs[0].get("lease", 0) or 0):
            return False
        if self.dry_run:
            log.info("would free the pinned slot of group %s for %s", group, host)
            return False
        self.call("/kv/deleterange", {"key": _b64(key)})
        log.warning("freed the pinned slot of group %s for %s", group, host)
        return True

    def holders(self, group: str) -> list[Holder]:
        """Return the live keys of a group, oldest first."""
        self.policy(group)
        _, kvs = self._read_group(group)
        found = []
        for kv in kvs:
            try:
                value = json.loads(_unb64(kv.get("value", "")))
                found.append(Holder(group, str(value["host"]), str(value["holder"]),
                                    str(value.get("reason", "")), float(value["since"])))
            except (ValueError, KeyError, TypeError):
                log.warning("skipped malformed slot key %s in etcd", _unb64(kv["key"]))
        return sorted(found, key=lambda h: h.since)

    def close(self) -> None:
        """Close the HTTP sessions; held slots stay until released or expired."""
        for client in self.clients:
            client.session.close()
