"""The load balancer axis: take one host out of rotation and put it back.

A ``LoadBalancer`` object is bound to one server of one load balancer (an HAProxy server
line, a conftool key, whatever the operator's commands address). Every backend guarantees:

- ``state`` and ``in_flight`` only read (they are safe in a dry run) and finish within the
  backend's timeout or raise ``LoadBalancerError``.
- ``depool`` stops new requests reaching the server; requests already running finish.
  ``disable`` is called once the server has drained and takes it fully out. For HAProxy
  that is maintenance mode, which also pauses health checks during the restart. Other
  backends may do nothing.
  ``pool`` puts the server back into rotation.
- The three changes are idempotent: repeating one after a crash is harmless.
- A change either takes effect or raises ``LoadBalancerError``; a backend never reports
  success for a change it could not confirm.
- A server marked ``INACTIVE`` by the operator is never changed; the calls raise instead.
  Backends whose load balancer has no such mark (HAProxy) never report ``INACTIVE``.
- ``in_flight`` counts the requests still running on the server and any queued for it
  alone. Backends that cannot count them (etcd keys) return None.
- With ``dry_run`` set, changes are logged and not made.

Nothing is kept in process memory that a crash could lose: the state lives in the load
balancer itself, and the restart journal records what we changed.
"""

from __future__ import annotations

import abc
import enum
import logging
from typing import Any, ClassVar

from opcache_guard.registry import Registry

log = logging.getLogger(__name__)


class LbState(enum.Enum):
    """The state of a server in its load balancer."""

    POOLED = "pooled"
    DRAINING = "draining"
    DEPOOLED = "depooled"
    INACTIVE = "inactive"


class LoadBalancer(abc.ABC):
    """One server of one load balancer; see the module docstring for the contract."""

    #: The name that selects this backend in ``[lb] backend = ...``.
    name: ClassVar[str]

    def __init__(self, host: str, dry_run: bool = False) -> None:
        self.host = host
        self.dry_run = dry_run

    @classmethod
    @abc.abstractmethod
    def from_config(cls, host: str, section: dict[str, Any], dry_run: bool) -> LoadBalancer:
        """Build the backend from its ``[lb]`` configuration section.

        Raises:
            ConfigError: a key is missing or invalid, naming the key and the fix.
        """

    @abc.abstractmethod
    def state(self) -> LbState:
        """Return the server's current state."""

    @abc.abstractmethod
    def in_flight(self) -> int | None:
        """Return requests the load balancer has in flight to the server, or None if unknown."""

    @abc.abstractmethod
    def depool(self) -> None:
        """Stop sending new requests to the server."""

    def disable(self) -> None:
        """Take a drained server fully out of rotation."""

    @abc.abstractmethod
    def pool(self) -> None:
        """Put the server back into rotation."""

    def describe(self) -> str:
        """Name the server for log lines, for example ``haproxy php/app1``."""
        return f"{self.name} {self.host}"


BACKENDS: Registry[LoadBalancer] = Registry("lb", "load balancer backend", "opcache_guard.lb")
register = BACKENDS.register


def create(host: str, section: dict[str, Any], dry_run: bool = False) -> LoadBalancer:
    """Build the load balancer backend that ``section['backend']`` names.

    Raises:
        ConfigError: the backend is missing or unknown; the message lists the known ones.
    """
    return BACKENDS.lookup(section.get("backend")).from_config(host, section, dry_run)
