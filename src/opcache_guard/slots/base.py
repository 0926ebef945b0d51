"""The slots axis: a fleet-wide bound on how many hosts of a group are out of service.

Everything that takes a host out of service (the periodic agent, an operator's restart, a
rollout) first takes a slot of the host's group and releases it when the host is back.
A group's limit is an absolute number or a percentage of its size, and a group may also
demand a minimum number of pooled hosts. Every backend guarantees:

- Counting the holders and taking a slot is one atomic step: no interleaving of takers, on
  one machine or many, lets a group exceed its limit.
- ``acquire`` waits at most ``timeout`` seconds and returns None when no slot came free.
  It raises ``SlotError`` only when the backend itself failed or is unreachable.
- Taking a slot twice for the same host and holder returns the slot already held, so a
  repeat after a crash never takes two.
- A holder that dies without releasing does not keep its slot forever: etcd expires the
  lease, PoolCounter frees it with the connection, SQLite frees slots whose holder process is
  gone or whose lease ran out. ``Slot.refresh`` keeps a long hold alive.
- ``release`` is idempotent.
- ``holders`` and ``status`` only read, and are safe in a dry run. In a dry run ``acquire``
  only reads too: it returns a ``DryRunSlot`` when a slot is free and takes nothing.

A holder is a string, ``hostname:pid:random`` by default (one per backend object). The journal
stores ``Slot.token``; a run that finds a token after a crash passes its holder back to
``acquire`` to get the same slot again rather than a second one.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from opcache_guard.errors import ConfigError
from opcache_guard.registry import Registry

if TYPE_CHECKING:
    from opcache_guard.config import Config

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class GroupPolicy:
    """A group's limits. ``limit`` is a count, or a percentage of ``size`` when it ends in %."""

    name: str
    limit: str = "1"
    size: int = 0
    min_pooled: int = 0

    def max_out(self, size: int | None = None) -> int:
        """Return how many hosts may be out at once; at least one when the group has hosts.

        Arguments:
            size: the live size of the group, if known; otherwise the configured size.
        """
        members = size if size is not None else self.size
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", self.limit)
        if match:
            allowed = int(members * float(match[1]) / 100)
            allowed = max(allowed, 1)
        else:
            allowed = int(self.limit)
        if self.min_pooled and members:
            allowed = min(allowed, max(members - self.min_pooled, 0))
        return allowed

    def validate(self) -> None:
        """Raise ConfigError for a limit that is neither a count nor a percentage."""
        if not re.fullmatch(r"\s*(\d+|\d+(\.\d+)?\s*%)\s*", self.limit):
            raise ConfigError(f"[slots.groups.{self.name}] limit = {self.limit!r} is invalid; "
                              "use a count such as 2 or a percentage such as \"10%\"")
        if self.limit.strip().endswith("%") and self.size <= 0:
            raise ConfigError(f"[slots.groups.{self.name}] limit {self.limit} is a percentage, "
                              "so the group needs size = NUMBER_OF_HOSTS")
        if self.min_pooled < 0:
            raise ConfigError(f"[slots.groups.{self.name}] min_pooled must not be negative")


@dataclasses.dataclass(frozen=True)
class Holder:
    """The holder of a slot: host, holder id, reason, and start time (Unix seconds)."""

    group: str
    host: str
    holder: str
    reason: str
    since: float

    @property
    def age(self) -> float:
        return time.time() - self.since


@dataclasses.dataclass(frozen=True)
class GroupStatus:
    """A group's limit and current holders, for ``slots status``."""

    policy: GroupPolicy
    max_out: int
    holders: list[Holder]
    #: False when the backend lists only the slots of this process (PoolCounter).
    holders_complete: bool = True


class Slot(abc.ABC):
    """A slot held by this process; the backend's handle to release it."""

    #: Seconds the slot survives without ``refresh``; None when it lives as long as its holder.
    ttl: float | None = None

    def __init__(self, group: str, host: str, holder: str, reason: str) -> None:
        self.group = group
        self.host = host
        self.holder = holder
        self.reason = reason

    @abc.abstractmethod
    def release(self) -> None:
        """Give the slot back; idempotent."""

    def refresh(self) -> None:
        """Keep the slot alive during a long hold."""

    def pin(self) -> bool:
        """Keep the slot after this process exits, until the host's ``release_stale``.

        A host left out of service on purpose (a FAILED restart) must keep counting against
        its group's limit. Returns False where the backend cannot keep a slot without its
        holder (PoolCounter frees it with the connection).
        """
        return False

    @property
    def token(self) -> str:
        """An identifier the journal stores to find this slot again after a crash."""
        return f"{self.group}/{self.host}/{self.holder}"


def split_token(token: str) -> tuple[str, str, str]:
    """Split a ``Slot.token`` into group, host and holder.

    Raises:
        ConfigError: the token does not have the form GROUP/HOST/HOLDER.
    """
    parts = token.rsplit("/", 2)
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"slot token {token!r} is invalid; expected GROUP/HOST/HOLDER")
    return parts[0], parts[1], parts[2]


class DryRunSlot(Slot):
    """The slot a dry run would have taken; releasing it changes nothing."""

    def release(self) -> None:
        """Do nothing, as nothing was taken."""


def new_holder_id() -> str:
    """Return a fresh holder id, ``hostname:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def poll(attempt: Callable[[], T | None], timeout: float, first_delay: float = 0.02,
         max_delay: float = 0.5) -> T | None:
    """Call attempt until it returns a value or timeout seconds pass, with a growing delay.

    attempt runs at least once, even with a timeout of zero, and never after the deadline.
    Returns its first result that is not None, or None.
    """
    deadline = time.monotonic() + timeout
    delay = first_delay
    while True:
        result = attempt()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        # Jitter keeps waiters that started together from polling in lockstep.
        time.sleep(min(delay * (0.5 + secrets.randbelow(1000) / 1000), remaining))
        delay = min(delay * 2, max_delay)


def check_keys(section: dict[str, Any], backend: str, known: Iterable[str]) -> None:
    """Raise ConfigError for a key of ``[slots]`` that neither the backend nor groups use."""
    allowed = {"backend", "groups", *known}
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in [slots] for backend {backend}; "
                          f"known keys: {', '.join(sorted(allowed))}")


def number(section: dict[str, Any], key: str, default: float, minimum: float) -> float:
    """Read a positive number from ``[slots]``, or raise ConfigError naming the key."""
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"[slots] {key} = {value!r} must be a number of seconds")
    if value < minimum:
        raise ConfigError(f"[slots] {key} = {value!r} is too small; use at least {minimum:g}")
    return float(value)


class SlotBackend(abc.ABC):
    """One coordination store; see the module docstring for the contract."""

    #: The name that selects this backend in ``[slots] backend = ...``.
    name: ClassVar[str]

    #: Whether ``holders`` lists every holder, or only those of this process.
    lists_all_holders: ClassVar[bool] = True

    def __init__(self, groups: dict[str, GroupPolicy], dry_run: bool = False) -> None:
        self.groups = groups
        self.dry_run = dry_run
        self.holder = new_holder_id()

    @classmethod
    @abc.abstractmethod
    def from_config(cls, section: dict[str, Any], groups: dict[str, GroupPolicy],
                    dry_run: bool) -> SlotBackend:
        """Build the backend from its ``[slots]`` section."""

    def policy(self, group: str) -> GroupPolicy:
        """Return a group's policy.

        Raises:
            ConfigError: the group is not configured.
        """
        if group not in self.groups:
            known = ", ".join(sorted(self.groups)) or "none"
            raise ConfigError(f"slot group {group!r} is not configured; add "
                              f"[slots.groups.{group}] (configured groups: {known})")
        return self.groups[group]

    def acquire(self, group: str, host: str, reason: str, timeout: float,
                holder: str | None = None) -> Slot | None:
        """Take a slot of group for host, waiting at most timeout seconds; None if none came free.

        Arguments:
            group: a configured group.
            host: the host that goes out of service.
            reason: why, shown by ``slots status``.
            timeout: seconds to wait for a free slot; zero tries once.
            holder: the holder id to take it as; defaults to this backend's ``holder``.

        Raises:
            ConfigError: the group is not configured, or host is not a valid name.
            SlotError: the backend failed or is unreachable.
        """
        policy = self.policy(group)
        check_host(host)
        holder = holder or self.holder
        if self.dry_run:
            return self.dry_run_acquire(group, host, reason, holder)
        if policy.max_out() < 1:
            log.info("rejected a slot of group %s for %s: limit %s with min_pooled %d allows "
                     "none out", group, host, policy.limit, policy.min_pooled)
            return None
        slot = self.take(policy, host, reason, timeout, holder)
        if slot is None:
            log.info("timed out after %g s waiting for a slot of group %s for %s", timeout,
                     group, host)
        return slot

    @abc.abstractmethod
    def take(self, policy: GroupPolicy, host: str, reason: str, timeout: float,
             holder: str) -> Slot | None:
        """Take a slot as ``acquire`` does, after it has checked its arguments."""

    def dry_run_acquire(self, group: str, host: str, reason: str, holder: str) -> Slot | None:
        """Decide from ``holders`` whether a slot is free, and take nothing."""
        policy = self.policy(group)
        current = self.holders(group)
        mine = [h for h in current if h.host == host]
        if mine and mine[0].holder != holder:
            log.info("would wait: %s already out of group %s, held by %s", host, group,
                     mine[0].holder)
            return None
        if not mine and len(current) >= policy.max_out():
            log.info("would wait: group %s has %d of %d slots taken", group, len(current),
                     policy.max_out())
            return None
        log.info("would take a slot of group %s for %s (%s)", group, host, reason)
        return DryRunSlot(group, host, holder, reason)

    @abc.abstractmethod
    def holders(self, group: str) -> list[Holder]:
        """Return the current holders of the group's slots."""

    def release_stale(self, group: str, host: str) -> bool:
        """Free a slot a crashed run of ours left for host; return whether one was freed.

        Backends whose slots vanish with their holder (etcd leases, PoolCounter connections)
        have nothing to do.
        """
        return False

    def status(self) -> list[GroupStatus]:
        """Return every configured group's limit and holders."""
        return [GroupStatus(policy, policy.max_out(), self.holders(name), self.lists_all_holders)
                for name, policy in sorted(self.groups.items())]

    def close(self) -> None:
        """Release connections; slots of this process held by connection are freed too."""


BACKENDS: Registry[SlotBackend] = Registry("slots", "slot backend", "opcache_guard.slots")
register = BACKENDS.register

# Group and host names become etcd keys and PoolCounter keys, which end at a space.
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


def check_host(host: str) -> None:
    """Raise ConfigError for a host name that cannot be part of a slot key."""
    if not _NAME.fullmatch(host):
        raise ConfigError(f"host name {host!r} is invalid for a slot; use letters, digits, "
                          "'.', ':', '_' and '-'")


def parse_groups(section: dict[str, Any], source: str = "") -> dict[str, GroupPolicy]:
    """Read ``[slots.groups.NAME]`` tables into validated policies.

    Arguments:
        section: the ``[slots]`` table.
        source: the configuration file, named at the start of error messages when given.

    Raises:
        ConfigError: a group is not a table, or a key has the wrong type or value.
    """
    prefix = f"{source}: " if source else ""
    raw_groups = section.get("groups", {})
    if not isinstance(raw_groups, dict):
        raise ConfigError(f"{prefix}[slots] groups = {raw_groups!r} must be a table; write "
                          "one [slots.groups.NAME] section per group, with limit = N")
    groups = {}
    for name, raw in raw_groups.items():
        where = f"{prefix}[slots.groups.{name}]"
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: the group name is invalid; use letters, "
                              "digits, '.', ':', '_' and '-'")
        if not isinstance(raw, dict):
            raise ConfigError(f"{prefix}[slots.groups] {name} = {raw!r} must be a table; "
                              f"write [slots.groups.{name}] followed by limit = N")
        unknown = sorted(set(raw) - {"limit", "size", "min_pooled"})
        if unknown:
            raise ConfigError(f"{prefix}unknown key {unknown[0]!r} in [slots.groups.{name}]; "
                              "known keys: limit, min_pooled, size")
        limit = raw.get("limit", "1")
        if isinstance(limit, bool) or not isinstance(limit, (int, str)):
            raise ConfigError(f"{where} limit = {limit!r} is invalid; use a count such as "
                              "limit = 2 or a percentage such as limit = \"10%\"")
        for key in ("size", "min_pooled"):
            value = raw.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{where} {key} = {value!r} must be a whole number of 0 or "
                                  f"more, for example {key} = 8")
        policy = GroupPolicy(name=name, limit=str(limit), size=raw.get("size", 0),
                             min_pooled=raw.get("min_pooled", 0))
        try:
            policy.validate()
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from exc
        groups[name] = policy
    return groups


def create(section: dict[str, Any], dry_run: bool = False) -> SlotBackend:
    """Build the slot backend that ``section['backend']`` names (default ``sqlite``).

    Raises:
        ConfigError: the backend is unknown; the message lists the known ones.
    """
    backend = BACKENDS.lookup(section.get("backend", "sqlite"))
    return backend.from_config(section, parse_groups(section), dry_run)


def create_from(config: Config, dry_run: bool = False) -> SlotBackend:
    """Build the slot backend of a loaded configuration's ``[slots]`` section.

    The SQLite backend keeps its table in the configuration's state file unless ``path`` is set.
    """
    section = dict(config.extra.get("slots", {}))
    if section.get("backend", "sqlite") == "sqlite":
        section.setdefault("path", str(config.state_file))
    return create(section, dry_run)
