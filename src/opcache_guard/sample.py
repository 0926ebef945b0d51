"""The Sample: one reading of one pool's OPcache and FPM state.

Field names follow PHP's own (``opcache_get_status()``, the FPM status page) with spaces and
dashes turned into underscores. Memory figures are in bytes, times are Unix seconds.
``to_dict`` is the stable JSON form that ``status --json`` prints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from opcache_guard.errors import ProbeError

_OPCACHE_LAYOUT = "unexpected OPcache status layout"
_FPM_LAYOUT = "unexpected FPM status layout"


@dataclasses.dataclass
class OpcacheState:
    """What ``opcache_get_status(false)`` and ``opcache_get_configuration()`` report."""

    enabled: bool
    cache_full: bool
    restart_pending: bool
    restart_in_progress: bool
    memory_size: int
    used_memory: int
    free_memory: int
    wasted_memory: int
    current_wasted_percentage: float
    max_wasted_percentage: float
    num_cached_scripts: int
    num_cached_keys: int
    max_cached_keys: int
    max_accelerated_files: int
    interned_strings_buffer_size: int
    interned_strings_used_memory: int
    interned_strings_free_memory: int
    number_of_strings: int
    hits: int
    misses: int
    hit_rate: float
    start_time: int
    last_restart_time: int
    oom_restarts: int
    hash_restarts: int
    manual_restarts: int
    validate_timestamps: bool
    revalidate_freq: int
    file_update_protection: int = 2

    @property
    def free_percentage(self) -> float:
        """Free memory as a percentage of memory_consumption."""
        return 100.0 * self.free_memory / self.memory_size if self.memory_size else 0.0

    @property
    def keys_percentage(self) -> float:
        """Cached keys as a percentage of max_cached_keys."""
        return 100.0 * self.num_cached_keys / self.max_cached_keys if self.max_cached_keys else 0.0

    @property
    def interned_free_percentage(self) -> float:
        """Free interned strings buffer as a percentage of its size."""
        size = self.interned_strings_buffer_size
        return 100.0 * self.interned_strings_free_memory / size if size else 100.0

    @property
    def total_restarts(self) -> int:
        return self.oom_restarts + self.hash_restarts + self.manual_restarts


@dataclasses.dataclass
class FpmState:
    """The FPM pool state, from the status page or ``fpm_get_status()``."""

    pool: str
    process_manager: str
    start_time: int
    accepted_conn: int
    listen_queue: int
    max_listen_queue: int
    listen_queue_len: int
    idle_processes: int
    active_processes: int
    total_processes: int
    max_active_processes: int
    max_children_reached: int
    slow_requests: int


@dataclasses.dataclass
class Sample:
    """One reading of one pool."""

    pool: str
    address: str
    time: float
    duration: float
    php_version: str
    opcache: OpcacheState
    fpm: FpmState | None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def key(self) -> str:
        """The key of this pool's previous sample in the state store, as PoolConfig.key."""
        return f"{self.pool}@{self.address}"

    def to_dict(self) -> dict[str, Any]:
        """Return the stable JSON form, with derived percentages added."""
        data = dataclasses.asdict(self)
        data["opcache"]["free_percentage"] = round(self.opcache.free_percentage, 2)
        data["opcache"]["keys_percentage"] = round(self.opcache.keys_percentage, 2)
        data["opcache"]["interned_strings_free_percentage"] = round(
            self.opcache.interned_free_percentage, 2)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        """Rebuild a Sample from ``to_dict`` output, ignoring derived and unknown keys."""
        opcache_fields = {f.name for f in dataclasses.fields(OpcacheState)}
        opcache = OpcacheState(**{k: v for k, v in data["opcache"].items() if k in opcache_fields})
        fpm = FpmState(**data["fpm"]) if data.get("fpm") else None
        return cls(pool=data["pool"], address=data["address"], time=data["time"],
                   duration=data["duration"], php_version=data["php_version"],
                   opcache=opcache, fpm=fpm, notes=list(data.get("notes", [])))


def _number(mapping: dict[str, Any], key: str, default: float = 0) -> Any:
    value = mapping.get(key, default)
    return default if value is None else value


def _table(mapping: dict[str, Any], key: str, layout: str) -> dict[str, Any]:
    value = mapping.get(key)
    if not isinstance(value, dict):
        raise ProbeError(f"{layout}: {key} is {'missing' if value is None else 'not an object'}"
                         "; is this PHP 7.4 or newer?")
    return value


def _int(mapping: dict[str, Any], key: str, layout: str, default: int | None = None) -> int:
    """Return mapping[key] as an int, or default when the key is absent and a default exists.

    Raises:
        ProbeError: the key is missing (without a default), or the value is not a number.
    """
    return int(_convert(int, mapping, key, layout, default))


def _float(mapping: dict[str, Any], key: str, layout: str, default: float | None = None) -> float:
    """Return mapping[key] as a float; see ``_int``."""
    return float(_convert(float, mapping, key, layout, default))


def _convert(kind: type[int | float], mapping: dict[str, Any], key: str, layout: str,
             default: float | None) -> float:
    value = mapping.get(key)
    if value is None:
        if default is None:
            raise ProbeError(f"{layout}: {key} is missing; is this PHP 7.4 or newer?")
        return default
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProbeError(f"{layout}: {key} = {value!r} is not a number") from exc


def parse_opcache(status: dict[str, Any], configuration: dict[str, Any]) -> OpcacheState:
    """Build an OpcacheState from the decoded PHP arrays.

    Raises:
        ProbeError: a section PHP always sends is missing, or a figure is not a number.
    """
    layout = _OPCACHE_LAYOUT
    memory = _table(status, "memory_usage", layout)
    interned = status.get("interned_strings_usage") or {}
    if not isinstance(interned, dict):
        raise ProbeError(f"{layout}: interned_strings_usage is not an object")
    stats = _table(status, "opcache_statistics", layout)
    directives = configuration.get("directives") if isinstance(configuration, dict) else None
    if not isinstance(directives, dict):
        directives = {}
    wasted_limit = _float(directives, "opcache.max_wasted_percentage", layout, 0.05)
    # PHP 8 reports this directive as a fraction (0.05 for 5 %).
    if wasted_limit <= 1:
        wasted_limit *= 100
    used = _int(memory, "used_memory", layout)
    free = _int(memory, "free_memory", layout)
    wasted = _int(memory, "wasted_memory", layout)
    memory_size = _int(directives, "opcache.memory_consumption", layout, 0)
    if not memory_size:
        memory_size = used + free + wasted
    return OpcacheState(
        enabled=bool(status.get("opcache_enabled", False)),
        cache_full=bool(status.get("cache_full", False)),
        restart_pending=bool(status.get("restart_pending", False)),
        restart_in_progress=bool(status.get("restart_in_progress", False)),
        memory_size=memory_size,
        used_memory=used,
        free_memory=free,
        wasted_memory=wasted,
        current_wasted_percentage=_float(memory, "current_wasted_percentage", layout, 0.0),
        max_wasted_percentage=wasted_limit,
        num_cached_scripts=_int(stats, "num_cached_scripts", layout),
        num_cached_keys=_int(stats, "num_cached_keys", layout),
        max_cached_keys=_int(stats, "max_cached_keys", layout),
        max_accelerated_files=_int(directives, "opcache.max_accelerated_files", layout, 0),
        interned_strings_buffer_size=_int(interned, "buffer_size", layout, 0),
        interned_strings_used_memory=_int(interned, "used_memory", layout, 0),
        interned_strings_free_memory=_int(interned, "free_memory", layout, 0),
        number_of_strings=_int(interned, "number_of_strings", layout, 0),
        hits=_int(stats, "hits", layout),
        misses=_int(stats, "misses", layout),
        hit_rate=_float(stats, "opcache_hit_rate", layout, 0.0),
        start_time=_int(stats, "start_time", layout),
        last_restart_time=_int(stats, "last_restart_time", layout),
        oom_restarts=_int(stats, "oom_restarts", layout),
        hash_restarts=_int(stats, "hash_restarts", layout),
        manual_restarts=_int(stats, "manual_restarts", layout),
        validate_timestamps=bool(_number(directives, "opcache.validate_timestamps", True)),
        revalidate_freq=_int(directives, "opcache.revalidate_freq", layout, 2),
        file_update_protection=_int(directives, "opcache.file_update_protection", layout, 2),
    )


def parse_fpm(data: dict[str, Any]) -> FpmState:
    """Build an FpmState from the status page JSON or ``fpm_get_status()``.

    The status page spells keys with spaces ("listen queue"), fpm_get_status() with dashes.

    Raises:
        ProbeError: a figure is not a number.
    """
    normal = {key.replace(" ", "_").replace("-", "_"): value for key, value in data.items()}
    counters = {field.name: _int(normal, field.name, _FPM_LAYOUT, 0)
                for field in dataclasses.fields(FpmState)
                if field.name not in ("pool", "process_manager")}
    return FpmState(pool=str(normal.get("pool", "")),
                    process_manager=str(normal.get("process_manager", "")), **counters)


def describe_layout_error(exc: Exception) -> str:
    """Word a KeyError, TypeError or ValueError met while reading a reply, for a message."""
    if isinstance(exc, KeyError):
        return f"{exc.args[0]!r} is missing" if exc.args else "a key is missing"
    return str(exc)
