"""The Sample: one reading of one pool's OPcache and FPM state.

Field names follow PHP's own (``opcache_get_status()``, the FPM status page) with spaces and
dashes turned into underscores. Memory figures are in bytes, times are Unix seconds.
``to_dict`` is the stable JSON form that ``status --json`` prints.
"""

from __future__ import annotations

import dataclasses
from typing import Any


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


def parse_opcache(status: dict[str, Any], configuration: dict[str, Any]) -> OpcacheState:
    """Build an OpcacheState from the decoded PHP arrays.

    Raises:
        KeyError or TypeError: a section PHP always sends is missing.
    """
    memory = status["memory_usage"]
    interned = status.get("interned_strings_usage") or {}
    stats = status["opcache_statistics"]
    directives = configuration.get("directives", {}) if configuration else {}
    wasted_limit = float(_number(directives, "opcache.max_wasted_percentage", 0.05))
    # PHP 8 reports this directive as a fraction (0.05 for 5 %).
    if wasted_limit <= 1:
        wasted_limit *= 100
    memory_size = int(_number(directives, "opcache.memory_consumption", 0))
    if not memory_size:
        memory_size = memory["used_memory"] + memory["free_memory"] + memory["wasted_memory"]
    return OpcacheState(
        enabled=bool(status.get("opcache_enabled", False)),
        cache_full=bool(status.get("cache_full", False)),
        restart_pending=bool(status.get("restart_pending", False)),
        restart_in_progress=bool(status.get("restart_in_progress", False)),
        memory_size=memory_size,
        used_memory=int(memory["used_memory"]),
        free_memory=int(memory["free_memory"]),
        wasted_memory=int(memory["wasted_memory"]),
        current_wasted_percentage=float(memory.get("current_wasted_percentage", 0.0)),
        max_wasted_percentage=wasted_limit,
        num_cached_scripts=int(stats["num_cached_scripts"]),
        num_cached_keys=int(stats["num_cached_keys"]),
        max_cached_keys=int(stats["max_cached_keys"]),
        max_accelerated_files=int(_number(directives, "opcache.max_accelerated_files", 0)),
        interned_strings_buffer_size=int(_number(interned, "buffer_size")),
        interned_strings_used_memory=int(_number(interned, "used_memory")),
        interned_strings_free_memory=int(_number(interned, "free_memory")),
        number_of_strings=int(_number(interned, "number_of_strings")),
        hits=int(stats["hits"]),
        misses=int(stats["misses"]),
        hit_rate=float(stats.get("opcache_hit_rate", 0.0)),
        start_time=int(stats["start_time"]),
        last_restart_time=int(stats["last_restart_time"]),
        oom_restarts=int(stats["oom_restarts"]),
        hash_restarts=int(stats["hash_restarts"]),
        manual_restarts=int(stats["manual_restarts"]),
        validate_timestamps=bool(_number(directives, "opcache.validate_timestamps", True)),
        revalidate_freq=int(_number(directives, "opcache.revalidate_freq", 2)),
        file_update_protection=int(_number(directives, "opcache.file_update_protection", 2)),
    )


def parse_fpm(data: dict[str, Any]) -> FpmState:
    """Build an FpmState from the status page JSON or ``fpm_get_status()``.

    The status page spells keys with spaces ("listen queue"), fpm_get_status() with dashes.
    """
    normal = {key.replace(" ", "_").replace("-", "_"): value for key, value in data.items()}
    return FpmState(
        pool=str(normal.get("pool", "")),
        process_manager=str(normal.get("process_manager", "")),
        start_time=int(normal.get("start_time", 0)),
        accepted_conn=int(normal.get("accepted_conn", 0)),
        listen_queue=int(normal.get("listen_queue", 0)),
        max_listen_queue=int(normal.get("max_listen_queue", 0)),
        listen_queue_len=int(normal.get("listen_queue_len", 0)),
        idle_processes=int(normal.get("idle_processes", 0)),
        active_processes=int(normal.get("active_processes", 0)),
        total_processes=int(normal.get("total_processes", 0)),
        max_active_processes=int(normal.get("max_active_processes", 0)),
        max_children_reached=int(normal.get("max_children_reached", 0)),
        slow_requests=int(normal.get("slow_requests", 0)),
    )
