"""The host configuration the restart, repair and agent commands read, validated.

A host configuration is one TOML file: the ``[pools.NAME]`` of this host, and::

    [host]
    name = "app1"          # the name the load balancer and the slots know the host by
    group = "web"          # the slot group it belongs to

    [lb]      backend = "haproxy" | "conftool" | "command" | "memory", and its keys
    [slots]   backend = "sqlite" | "etcd" | "poolcounter" | "memory", [slots.groups.NAME]
    [fpm]     backend = "systemd" | "master" | "command", and its keys

    [restart]
    drain_timeout = 60     # seconds to wait for in-flight requests after depooling
    ...

    [agent]
    interval = 60          # seconds between two checks
    ...
"""

from __future__ import annotations

import dataclasses
from typing import Any

from opcache_guard import lb, slots
from opcache_guard.config import Config, _reject_unknown, _typed
from opcache_guard.errors import ConfigError
from opcache_guard.fpm import base as fpm_base
from opcache_guard.fpm.base import FpmControl
from opcache_guard.lb.base import LoadBalancer
from opcache_guard.probe import Prober
from opcache_guard.slots.base import SlotBackend
from opcache_guard.store import StateStore


@dataclasses.dataclass
class RestartSettings:
    """The ``[restart]`` section: bounds of the safe restart and its optional health check."""

    drain_timeout: float = 60.0
    drain_poll: float = 0.5
    verify_timeout: float = 30.0
    slot_timeout: float = 300.0
    health_url: str = ""
    health_script: str = ""
    health_status: int = 200
    health_timeout: float = 5.0

    def validate(self, source: str) -> None:
        """Raise ConfigError for a bound that is not positive or an unusable health check."""
        for key in ("drain_timeout", "drain_poll", "verify_timeout", "health_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: [restart] {key} must be above 0 seconds")
        if self.slot_timeout < 0:
            raise ConfigError(f"{source}: [restart] slot_timeout must not be negative")
        if self.health_url and not self.health_url.startswith(("http://", "https://")):
            raise ConfigError(f"{source}: [restart] health_url = {self.health_url!r} must "
                              "start with http:// or https://")
        if self.health_script and not self.health_script.startswith("/"):
            raise ConfigError(f"{source}: [restart] health_script = {self.health_script!r} "
                              "must be an absolute path of a PHP script the pools can run")
        if not 100 <= self.health_status <= 599:
            raise ConfigError(f"{source}: [restart] health_status must be an HTTP status")


@dataclasses.dataclass
class AgentSettings:
    """The ``[agent]`` section: how often the agent checks and how long it waits for a slot."""

    interval: float = 60.0
    jitter: float = 10.0
    slot_timeout: float = 30.0
    restart: bool = True

    def validate(self, source: str) -> None:
        """Raise ConfigError for an interval that is too short or a jitter that exceeds it."""
        if self.interval < 1:
            raise ConfigError(f"{source}: [agent] interval must be at least 1 second")
        if not 0 <= self.jitter < self.interval:
            raise ConfigError(f"{source}: [agent] jitter = {self.jitter:g} must be between 0 "
                              f"and interval ({self.interval:g})")
        if self.slot_timeout < 0:
            raise ConfigError(f"{source}: [agent] slot_timeout must not be negative")


@dataclasses.dataclass
class HostConfig:
    """A validated host configuration."""

    name: str
    group: str
    base: Config
    restart: RestartSettings
    agent: AgentSettings

    def section(self, name: str) -> dict[str, Any]:
        """Return a raw backend section (``lb``, ``slots`` or ``fpm``)."""
        value: dict[str, Any] = self.base.extra.get(name, {})
        return value

    @property
    def pool_names(self) -> str:
        """The host's pools for log lines, for example ``www,api``."""
        return ",".join(pool.name for pool in self.base.pools)


def host_config(config: Config) -> HostConfig:
    """Validate the sections the restart commands need.

    Raises:
        ConfigError: a section or key is missing, unknown or invalid, naming the fix.
    """
    source = config.source
    host = _table(config, "host")
    _reject_unknown("[host]", host, {"name", "group"}, source)
    for key in ("name", "group"):
        if not isinstance(host.get(key), str) or not host[key]:
            raise ConfigError(f"{source}: [host] {key} is missing; set for example "
                              f"{key} = \"{'app1' if key == 'name' else 'web'}\"")
    if not config.pools:
        raise ConfigError(f"{source}: no [pools.NAME] sections; list this host's pools")
    for section in ("lb", "fpm"):
        if "backend" not in _table(config, section):
            raise ConfigError(f"{source}: [{section}] backend is missing")
    restart_raw = _table(config, "restart")
    _reject_unknown("[restart]", restart_raw, _fields(RestartSettings), source)
    restart = RestartSettings(**_typed("[restart]", restart_raw, RestartSettings(), source))
    restart.validate(source)
    agent_raw = _table(config, "agent")
    _reject_unknown("[agent]", agent_raw, _fields(AgentSettings), source)
    agent = AgentSettings(**_typed("[agent]", agent_raw, AgentSettings(), source))
    agent.validate(source)
    groups = slots.base.parse_groups(_table(config, "slots"), source)
    if host["group"] not in groups:
        raise ConfigError(f"{source}: the host's group {host['group']!r} has no "
                          f"[slots.groups.{host['group']}] section; add one with limit = 1")
    return HostConfig(host["name"], host["group"], config, restart, agent)


def _table(config: Config, name: str) -> dict[str, Any]:
    value = config.extra.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{config.source}: {name} must be a [{name}] table")
    return value


def _fields(cls: Any) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


@dataclasses.dataclass
class Backends:
    """The objects a safe restart acts through, all built with the same dry-run flag."""

    lb: LoadBalancer
    slots: SlotBackend
    fpm: FpmControl
    prober: Prober
    store: StateStore


def open_backends(host: HostConfig, dry_run: bool = False) -> Backends:
    """Build the load balancer, slot and FPM backends of a host.

    Raises:
        ConfigError: a backend is unknown or its section is invalid.
    """
    return Backends(
        lb=lb.base.create(host.name, host.section("lb"), dry_run),
        slots=slots.base.create(host.section("slots"), dry_run),
        fpm=fpm_base.create(host.name, host.section("fpm"), dry_run),
        prober=Prober(host.base.probe),
        store=StateStore(host.base.state_file),
    )
