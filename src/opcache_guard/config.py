"""Configuration: named pools, thresholds and paths, from a TOML file or the command line.

A configuration file looks like this (every key but a pool's ``address`` is optional)::

    state_file = "/var/lib/opcache-guard/state.db"

    [probe]
    connect_timeout = 2.0
    read_timeout = 5.0
    script_dir = "/var/lib/opcache-guard/probe"

    [thresholds]
    free_warning_percent = 15

    [pools.www]
    address = "unix:/run/php/php8.2-fpm.sock"
    status_listen = "127.0.0.1:9001"

Unknown keys are rejected with the list of known ones, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

from opcache_guard.errors import ConfigError
from opcache_guard.fastcgi import Address, parse_address
from opcache_guard.health import Thresholds


def default_state_root() -> Path:
    """Return where state lives by default: /var/lib for root, XDG_STATE_HOME otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/opcache-guard")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "opcache-guard"


@dataclasses.dataclass
class PoolConfig:
    """How to reach and read one pool."""

    name: str
    address: Address
    status_listen: Address | None = None
    status_path: str = "/fpm-status"
    ping_path: str = "/fpm-ping"
    ping_response: str = "pong"
    script_path: str = ""
    chroot: str = ""
    # "page" reads FPM state from the status page; "function" from fpm_get_status() inside
    # the status script, one round trip fewer but exposed to a worker crash in PHP 8.1-8.4.
    fpm_status: str = "page"

    @property
    def key(self) -> str:
        """The key of this pool's previous sample in the state store."""
        return f"{self.name}@{self.address}"


@dataclasses.dataclass
class ProbeSettings:
    """Timeouts and where the probe writes its status script."""

    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    script_dir: Path = dataclasses.field(default_factory=lambda: default_state_root() / "probe")


@dataclasses.dataclass
class Config:
    """Everything a command needs, after validation."""

    pools: list[PoolConfig]
    probe: ProbeSettings = dataclasses.field(default_factory=ProbeSettings)
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    state_file: Path = dataclasses.field(default_factory=lambda: default_state_root() / "state.db")
    source: str = "command line"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


_POOL_KEYS = {f.name for f in dataclasses.fields(PoolConfig)} - {"name"}
_PROBE_KEYS = {f.name for f in dataclasses.fields(ProbeSettings)}
_THRESHOLD_KEYS = {f.name for f in dataclasses.fields(Thresholds)}
# Sections that later layers (load balancer, slots, restart, lab) read for themselves.
_PASSTHROUGH_SECTIONS = {"lb", "slots", "fpm", "restart", "agent", "lab", "host", "exporter"}
_TOP_KEYS = {"state_file", "probe", "thresholds", "pools"} | _PASSTHROUGH_SECTIONS


def _reject_unknown(section: str, given: dict[str, Any], known: set[str], source: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} in {section}; "
                          f"known keys: {', '.join(sorted(known))}")


def pool_from_address(text: str, name: str | None = None) -> PoolConfig:
    """Build a pool from a bare address given with --fpm, named after the address."""
    address = parse_address(text)
    return PoolConfig(name=name or str(address), address=address)


def _parse_pool(name: str, raw: Any, source: str) -> PoolConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [pools.{name}] must be a table with an address")
    _reject_unknown(f"[pools.{name}]", raw, _POOL_KEYS, source)
    if "address" not in raw:
        raise ConfigError(f"{source}: [pools.{name}] has no address; add for example "
                          "address = \"unix:/run/php/php8.2-fpm.sock\"")
    values = dict(raw)
    try:
        values["address"] = parse_address(str(values["address"]))
        if values.get("status_listen"):
            values["status_listen"] = parse_address(str(values["status_listen"]))
        else:
            values["status_listen"] = None
    except ConfigError as exc:
        raise ConfigError(f"{source}: [pools.{name}]: {exc}") from exc
    if values.get("fpm_status", "page") not in ("page", "function"):
        raise ConfigError(f"{source}: [pools.{name}] fpm_status = {values['fpm_status']!r} is "
                          "invalid; use \"page\" (the status page) or \"function\" "
                          "(fpm_get_status())")
    for key in ("status_path", "ping_path"):
        if key in values and not str(values[key]).startswith("/"):
            raise ConfigError(f"{source}: [pools.{name}] {key} = {values[key]!r} must start "
                              "with /")
    return PoolConfig(name=name, **values)


def _typed(section: str, raw: dict[str, Any], template: Any, source: str) -> dict[str, Any]:
    """Check each value against the type of the dataclass default it replaces."""
    out = {}
    for key, value in raw.items():
        expected = type(getattr(template, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if issubclass(expected, Path):
            expected = Path
            value = Path(str(value))
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"{source}: {section} {key} = {value!r} must be a "
                              f"{expected.__name__}")
        out[key] = value
    return out


def parse_config(data: dict[str, Any], source: str) -> Config:
    """Validate a decoded TOML document and build a Config.

    Raises:
        ConfigError: naming the file, the key and what to write instead.
    """
    _reject_unknown("the top level", data, _TOP_KEYS, source)
    pools_raw = data.get("pools", {})
    if not isinstance(pools_raw, dict):
        raise ConfigError(f"{source}: pools must be a table of [pools.NAME] sections")
    pools = [_parse_pool(name, raw, source) for name, raw in pools_raw.items()]
    probe_raw = data.get("probe", {})
    _reject_unknown("[probe]", probe_raw, _PROBE_KEYS, source)
    probe = ProbeSettings(**_typed("[probe]", probe_raw, ProbeSettings(), source))
    thresholds_raw = data.get("thresholds", {})
    _reject_unknown("[thresholds]", thresholds_raw, _THRESHOLD_KEYS, source)
    thresholds = Thresholds(**_typed("[thresholds]", thresholds_raw, Thresholds(), source))
    try:
        thresholds.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: [thresholds] {exc}") from exc
    config = Config(pools=pools, probe=probe, thresholds=thresholds, source=source,
                    extra={key: data[key] for key in _PASSTHROUGH_SECTIONS if key in data})
    if "state_file" in data:
        config.state_file = Path(str(data["state_file"]))
    return config


def load_config(path: Path) -> Config:
    """Read and validate a TOML configuration file.

    Raises:
        ConfigError: the file is missing, is not TOML, or has invalid values.
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} not found; pass --config with an "
                          "existing file, or give pools with --fpm ADDRESS") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    return parse_config(data, str(path))
