"""The health policy: thresholds applied to a Sample, returning a Verdict.

OPcache restarts itself (an "oom" or "hash" restart) when its memory or its key table is full
and wasted memory is at least ``opcache.max_wasted_percentage``. That in-place restart races
with running requests and can leave code or interned strings corrupted until the master
restarts. The policy therefore warns as the cache approaches that point, asks for a restart
of the master (``restart_due``) before it is reached, and reports a self-restart that already
happened as CRITICAL for as long as the same master runs.

Every threshold is a percentage, so the defaults fit any cache size; absolute megabyte
thresholds for free memory are available too.
"""

from __future__ import annotations

import dataclasses
import enum
import math

from opcache_guard.errors import ConfigError
from opcache_guard.sample import Sample

MB = 1024 * 1024


class Status(enum.IntEnum):
    """Nagios plugin states; the value is the plugin exit status."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """Rank used to pick the worst state: OK < WARNING < UNKNOWN < CRITICAL."""
        return {0: 0, 1: 1, 3: 2, 2: 3}[self.value]


def worst(statuses: list[Status]) -> Status:
    """Return the most severe status, or OK for an empty list."""
    return max(statuses, key=lambda status: status.severity, default=Status.OK)


@dataclasses.dataclass
class Thresholds:
    """Limits that turn a Sample into findings. Percentages are of the matching capacity.

    A threshold set to 0 is disabled.
    """

    free_warning_percent: float = 15.0
    free_critical_percent: float = 5.0
    free_warning_mb: float = 0.0
    free_critical_mb: float = 0.0
    # Waste is judged as a fraction of max_wasted_percentage, the point where a full cache
    # restarts itself.
    waste_warning_ratio: float = 0.5
    waste_critical_ratio: float = 0.8
    keys_warning_percent: float = 80.0
    keys_critical_percent: float = 95.0
    interned_free_warning_percent: float = 10.0
    # A full interned strings buffer costs memory and speed but never restarts OPcache.
    interned_free_critical_percent: float = 0.0
    listen_queue_warning: int = 1
    count_manual_restarts: bool = True

    def validate(self) -> None:
        """Check ranges, and that each warning threshold is milder than its critical one.

        Raises:
            ConfigError: a value is not finite, is negative, is a percentage above 100 or a
                ratio above 10, or a pair is in the wrong order.
        """
        for field in dataclasses.fields(self):
            self._check_range(field.name, getattr(self, field.name))
        pairs = [
            ("free_warning_percent", "free_critical_percent", True),
            ("free_warning_mb", "free_critical_mb", True),
            ("waste_warning_ratio", "waste_critical_ratio", False),
            ("keys_warning_percent", "keys_critical_percent", False),
            ("interned_free_warning_percent", "interned_free_critical_percent", True),
        ]
        for warning_name, critical_name, falling in pairs:
            warning = getattr(self, warning_name)
            critical = getattr(self, critical_name)
            if not warning or not critical:
                continue
            if (falling and warning < critical) or (not falling and warning > critical):
                raise ConfigError(
                    f"thresholds {warning_name} = {warning:g} and {critical_name} = "
                    f"{critical:g} are in the wrong order; the warning must come first")

    @staticmethod
    def _check_range(name: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} = {value!r} is invalid; use a finite number of 0 or "
                              "more (0 disables the threshold)")
        if name.endswith("_percent") and value > 100:
            raise ConfigError(f"{name} = {value!r} is a percentage; use 0 to 100")
        # Waste above 10 times max_wasted_percentage is unlikely, so such a value is probably
        # a percentage written where a ratio belongs.
        if name.endswith("_ratio") and value > 10:
            raise ConfigError(f"{name} = {value!r} is a ratio of max_wasted_percentage; use 0 "
                              "to 10")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One reason behind a verdict."""

    status: Status
    code: str
    message: str


@dataclasses.dataclass
class Verdict:
    """The judgement of one pool: a status, the findings behind it and whether to restart."""

    pool: str
    status: Status
    findings: list[Finding]
    restart_due: bool

    @property
    def summary(self) -> str:
        """One line: the findings that set the status, or 'healthy'."""
        relevant = [f.message for f in self.findings if f.status == self.status]
        return "; ".join(relevant) if relevant else "healthy"

    def to_dict(self) -> dict[str, object]:
        return {
            "pool": self.pool,
            "status": self.status.name,
            "restart_due": self.restart_due,
            "findings": [
                {"status": f.status.name, "code": f.code, "message": f.message}
                for f in self.findings
            ],
        }


def unknown(pool: str, message: str) -> Verdict:
    """Return the verdict for a pool that could not be read."""
    return Verdict(pool, Status.UNKNOWN, [Finding(Status.UNKNOWN, "probe_failed", message)], False)


def _mb(value: float) -> str:
    return f"{value / MB:.1f} MB"


def _free_advice(sample: Sample, limits: Thresholds) -> str:
    opcache = sample.opcache
    if opcache.max_wasted_percentage and limits.waste_warning_ratio and (
            opcache.current_wasted_percentage / opcache.max_wasted_percentage
            >= limits.waste_warning_ratio):
        return ""
    return "; little of it is wasted, so raise opcache.memory_consumption"


def _free_memory(sample: Sample, limits: Thresholds) -> list[Finding]:
    opcache = sample.opcache
    advice = _free_advice(sample, limits)
    percent = opcache.free_percentage
    message = (f"free memory {_mb(opcache.free_memory)} is {percent:.1f}% of "
               f"{_mb(opcache.memory_size)}")
    for status, limit in ((Status.CRITICAL, limits.free_critical_percent),
                          (Status.WARNING, limits.free_warning_percent)):
        if limit and percent < limit:
            return [Finding(status, "free_memory", f"{message}, below {limit:g}%{advice}")]
    for status, limit in ((Status.CRITICAL, limits.free_critical_mb),
                          (Status.WARNING, limits.free_warning_mb)):
        if limit and opcache.free_memory < limit * MB:
            return [Finding(status, "free_memory", f"{message}, below {limit:g} MB{advice}")]
    return []


def _wasted_memory(sample: Sample, limits: Thresholds) -> list[Finding]:
    opcache = sample.opcache
    if not opcache.max_wasted_percentage:
        return []
    ratio = opcache.current_wasted_percentage / opcache.max_wasted_percentage
    message = (f"wasted memory {opcache.current_wasted_percentage:.1f}% is "
               f"{ratio:.0%} of max_wasted_percentage {opcache.max_wasted_percentage:g}%")
    nearly_full = opcache.cache_full or (
        bool(limits.free_warning_percent) and opcache.free_percentage < limits.free_warning_percent)
    if limits.waste_critical_ratio and ratio >= limits.waste_critical_ratio:
        if nearly_full:
            return [Finding(Status.CRITICAL, "wasted_memory",
                            f"{message} and the cache is nearly full: OPcache will restart "
                            "itself soon; restart the master first")]
        return [Finding(Status.WARNING, "wasted_memory",
                        f"{message}; OPcache restarts itself once the cache fills")]
    if limits.waste_warning_ratio and ratio >= limits.waste_warning_ratio:
        return [Finding(Status.WARNING, "wasted_memory", message)]
    return []


def _keys(sample: Sample, limits: Thresholds) -> list[Finding]:
    opcache = sample.opcache
    percent = opcache.keys_percentage
    message = (f"cached keys {opcache.num_cached_keys} are {percent:.1f}% of "
               f"max_cached_keys {opcache.max_cached_keys}")
    for status, limit in ((Status.CRITICAL, limits.keys_critical_percent),
                          (Status.WARNING, limits.keys_warning_percent)):
        if limit and percent >= limit:
            return [Finding(status, "cached_keys", f"{message}; raise "
                            "opcache.max_accelerated_files or restart the master")]
    return []


def _interned(sample: Sample, limits: Thresholds) -> list[Finding]:
    opcache = sample.opcache
    if not opcache.interned_strings_buffer_size:
        return []
    percent = opcache.interned_free_percentage
    message = (f"interned strings buffer has {percent:.1f}% free of "
               f"{_mb(opcache.interned_strings_buffer_size)}")
    for status, limit in ((Status.CRITICAL, limits.interned_free_critical_percent),
                          (Status.WARNING, limits.interned_free_warning_percent)):
        if limit and percent < limit:
            return [Finding(status, "interned_strings", message)]
    return []


def _flags(sample: Sample) -> list[Finding]:
    opcache = sample.opcache
    findings = []
    if opcache.restart_pending or opcache.restart_in_progress:
        state = "in progress" if opcache.restart_in_progress else "pending"
        findings.append(Finding(Status.CRITICAL, "restart_pending",
                                f"an OPcache restart is {state}: running requests may see "
                                "corrupted code; restart the master"))
    if opcache.cache_full:
        findings.append(Finding(Status.WARNING, "cache_full",
                                "OPcache is full: new scripts are no longer cached"))
    return findings


def _restart_counts(opcache_restarts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in opcache_restarts.items() if count)


def _self_restarts(sample: Sample, previous: Sample | None, limits: Thresholds) -> list[Finding]:
    opcache = sample.opcache
    counters = {"oom_restarts": opcache.oom_restarts, "hash_restarts": opcache.hash_restarts}
    if limits.count_manual_restarts:
        counters["manual_restarts"] = opcache.manual_restarts
    findings = []
    same_master = previous is not None and previous.opcache.start_time == opcache.start_time
    if same_master and previous is not None:
        before = previous.opcache
        grown = {name: value - getattr(before, name) for name, value in counters.items()
                 if value > getattr(before, name)}
        moved = opcache.last_restart_time != before.last_restart_time
        if grown or moved:
            detail = _restart_counts(grown) or "last_restart_time moved"
            findings.append(Finding(
                Status.CRITICAL, "restarted_since_last_sample",
                f"OPcache restarted itself since the previous check ({detail}); code in "
                "memory may be corrupted: restart the master"))
    if sum(counters.values()) and not findings:
        findings.append(Finding(
            Status.CRITICAL, "restarted",
            f"OPcache restarted itself since the master started ({_restart_counts(counters)}); "
            "code in memory may be corrupted until the master restarts"))
    return findings


def _listen_queue(sample: Sample, limits: Thresholds) -> list[Finding]:
    fpm = sample.fpm
    if fpm is None or not limits.listen_queue_warning:
        return []
    if fpm.listen_queue >= limits.listen_queue_warning:
        return [Finding(Status.WARNING, "listen_queue",
                        f"{fpm.listen_queue} requests wait in the listen queue; all "
                        f"{fpm.total_processes} workers are busy")]
    return []


# Findings a restart of the master cures. Low free memory without waste, or a full interned
# strings buffer, would fill up again at once: those need larger settings, not a restart.
_RESTART_CODES = {"wasted_memory", "cached_keys", "restart_pending", "restarted",
                  "restarted_since_last_sample"}


def judge(sample: Sample, previous: Sample | None, limits: Thresholds) -> Verdict:
    """Apply the thresholds to a sample; previous is the last sample of the same pool, if any."""
    findings = [
        *_self_restarts(sample, previous, limits),
        *_flags(sample),
        *_free_memory(sample, limits),
        *_wasted_memory(sample, limits),
        *_keys(sample, limits),
        *_interned(sample, limits),
        *_listen_queue(sample, limits),
        *[Finding(Status.WARNING, "probe", note) for note in sample.notes],
    ]
    status = worst([finding.status for finding in findings])
    restart_due = any(finding.status == Status.CRITICAL and finding.code in _RESTART_CODES
                      for finding in findings)
    return Verdict(sample.pool, status, findings, restart_due)
