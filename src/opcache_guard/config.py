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
import math
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
    # "page" reads FPM state from the status page. "function" calls fpm_get_status() in the
    # status script, which saves a round trip but can crash the worker (php-src issue 19974).
    fpm_status: str = "page"

    @property
    def key(self) -> str:
        """The key of this pool's previous sample in the state store."""
        return f"{self.name}@{self.address}"

    @property
    def location(self) -> str:
        """The pool as messages name it: ``pool www at ADDRESS``, or ``pool at ADDRESS``.

        The address is the one probed: ``status_listen`` when set.
        """
        address = str(self.status_listen or self.address)
        if self.name == address:
            return f"pool at {address}"
        return f"pool {self.name} at {address}"


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


# Sockets give up on timeouts far beyond this, and a check that waits an hour is hung anyway.
MAX_TIMEOUT = 3600.0

_POOL_KEYS = {f.name for f in dataclasses.fields(PoolConfig)} - {"name"}
# Every pool key is a string; these are the examples error messages suggest.
_POOL_EXAMPLES = {
    "address": '"unix:/run/php/php8.2-fpm.sock"',
    "status_listen": '"127.0.0.1:9001"',
    "status_path": '"/fpm-status"',
    "ping_path": '"/fpm-ping"',
    "ping_response": '"pong"',
    "script_path": '"/var/www/opcache-guard/status.php"',
    "chroot": '"/srv/www"',
    "fpm_status": '"page"',
}
_PROBE_KEYS = {f.name for f in dataclasses.fields(ProbeSettings)}
_THRESHOLD_KEYS = {f.name for f in dataclasses.fields(Thresholds)}
# Sections other commands read and validate when they run; status, check and metrics only
# require each to be a table. The comment names where each one is validated.
_PASSTHROUGH_SECTIONS = {
    "host",     # restart.settings.host_config, for restart, repair, agent and pool
    "lb",       # lb.base.create, for the same commands
    "slots",    # slots.base.parse_groups and create, for those commands and slots status
    "fpm",      # fpm.base.create, for restart, repair, agent and pool
    "restart",  # restart.settings.RestartSettings.validate
    "agent",    # restart.settings.AgentSettings.validate
}
_TOP_KEYS = {"state_file", "probe", "thresholds", "pools"} | _PASSTHROUGH_SECTIONS
_TYPE_NAMES = {bool: "true or false", int: "whole number", float: "number", str: "string",
               Path: "string holding a path"}


def _reject_unknown(section: str, given: dict[str, Any], known: set[str], source: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} in {section}; "
                          f"known keys: {', '.join(sorted(known))}")


def _section(data: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    """Return a top-level table, raising ConfigError when the key has another type."""
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {name} = {value!r} must be a table; write a [{name}] "
                          "section with its keys on the lines below it")
    return value


def _absolute_path(where: str, key: str, value: Any, source: str, example: str) -> Path:
    """Return value as a Path, raising ConfigError unless it is an absolute path string.

    A relative path would resolve against whatever directory cron or systemd starts us in.
    """
    if not isinstance(value, str) or not os.path.isabs(value):
        raise ConfigError(f"{source}: {where}{key} = {value!r} must be an absolute path; "
                          f"write for example {key} = \"{example}\"")
    return Path(value)


def pool_from_address(text: str, name: str | None = None) -> PoolConfig:
    """Build a pool from a bare address given with --fpm, named after the address."""
    address = parse_address(text)
    return PoolConfig(name=name or str(address), address=address)


def _parse_pool(name: str, raw: Any, source: str) -> PoolConfig:
    where = f"[pools.{name}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a table with an address")
    _reject_unknown(where, raw, _POOL_KEYS, source)
    if "address" not in raw:
        raise ConfigError(f"{source}: {where} has no address; add for example "
                          "address = \"unix:/run/php/php8.2-fpm.sock\"")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {where} {key} = {value!r} must be a string; write "
                              f"for example {key} = {_POOL_EXAMPLES[key]}")
    values: dict[str, Any] = dict(raw)
    try:
        values["address"] = parse_address(raw["address"])
        if raw.get("status_listen"):
            values["status_listen"] = parse_address(raw["status_listen"])
        else:
            values["status_listen"] = None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from exc
    if raw.get("fpm_status", "page") not in ("page", "function"):
        raise ConfigError(f"{source}: {where} fpm_status = {raw['fpm_status']!r} is "
                          "invalid; use \"page\" (the status page) or \"function\" "
                          "(fpm_get_status())")
    for key in ("status_path", "ping_path"):
        if key in raw and not raw[key].startswith("/"):
            raise ConfigError(f"{source}: {where} {key} = {raw[key]!r} must start with /; "
                              f"write for example {key} = {_POOL_EXAMPLES[key]}")
    for key in ("script_path", "chroot"):
        if raw.get(key):
            _absolute_path(f"{where} ", key, raw[key], source, _POOL_EXAMPLES[key].strip('"'))
    return PoolConfig(name=name, **values)


def _typed(section: str, raw: dict[str, Any], template: Any, source: str) -> dict[str, Any]:
    """Check each value against the type of the dataclass default it replaces.

    Floats must be finite, and a Path must be given as a string.
    """
    out = {}
    for key, value in raw.items():
        expected = type(getattr(template, key))
        if issubclass(expected, Path):
            expected = Path
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        accepted = str if expected is Path else expected
        if not isinstance(value, accepted) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"{source}: {section} {key} = {value!r} must be a "
                              f"{_TYPE_NAMES.get(expected, expected.__name__)}")
        if expected is float and not math.isfinite(float(value)):
            raise ConfigError(f"{source}: {section} {key} = {value!r} must be a finite number")
        out[key] = Path(value) if expected is Path else value
    return out


def _parse_probe(raw: dict[str, Any], source: str) -> ProbeSettings:
    _reject_unknown("[probe]", raw, _PROBE_KEYS, source)
    values = _typed("[probe]", raw, ProbeSettings(), source)
    for key in ("connect_timeout", "read_timeout"):
        if key in values and not 0 < values[key] <= MAX_TIMEOUT:
            raise ConfigError(f"{source}: [probe] {key} = {values[key]!r} is out of range; "
                              f"use seconds above 0 and at most {MAX_TIMEOUT:g}, for example "
                              f"{key} = 5.0")
    if "script_dir" in raw:
        values["script_dir"] = _absolute_path("[probe] ", "script_dir", raw["script_dir"],
                                              source, "/var/lib/opcache-guard/probe")
    return ProbeSettings(**values)


def _parse_thresholds(raw: dict[str, Any], source: str) -> Thresholds:
    _reject_unknown("[thresholds]", raw, _THRESHOLD_KEYS, source)
    thresholds = Thresholds(**_typed("[thresholds]", raw, Thresholds(), source))
    try:
        thresholds.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: [thresholds] {exc}") from exc
    return thresholds


def parse_config(data: dict[str, Any], source: str) -> Config:
    """Validate a decoded TOML document and build a Config.

    Raises:
        ConfigError: naming the file, the key and what to write instead.
    """
    _reject_unknown("the top level", data, _TOP_KEYS, source)
    pools_raw = data.get("pools", {})
    if not isinstance(pools_raw, dict):
        raise ConfigError(f"{source}: pools = {pools_raw!r} must be a table of [pools.NAME] "
                          "sections")
    pools = [_parse_pool(name, raw, source) for name, raw in pools_raw.items()]
    probe = _parse_probe(_section(data, "probe", source), source)
    thresholds = _parse_thresholds(_section(data, "thresholds", source), source)
    extra = {key: _section(data, key, source) for key in _PASSTHROUGH_SECTIONS if key in data}
    config = Config(pools=pools, probe=probe, thresholds=thresholds, source=source,
                    extra=extra)
    if "state_file" in data:
        config.state_file = _absolute_path("", "state_file", data["state_file"], source,
                                           "/var/lib/opcache-guard/state.db")
    return config


def load_config(path: Path) -> Config:
    """Read and validate a TOML configuration file.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8 TOML, or has invalid values.
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} not found; pass --config with an "
                          "existing file, or give pools with --fpm ADDRESS") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not UTF-8 text (byte {exc.start} is "
                          "invalid); TOML files must be UTF-8, so save it as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    return parse_config(data, str(path))
