"""Render pool results: a table, stable JSON, a Nagios plugin line, Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rich.table import Table

from opcache_guard.checks import PoolResult
from opcache_guard.health import MB, Finding, Status, worst

JSON_FORMAT_VERSION = 1
_STYLE = {Status.OK: "green", Status.WARNING: "yellow", Status.CRITICAL: "bold red",
          Status.UNKNOWN: "magenta"}


def overall(results: Sequence[PoolResult]) -> Status:
    """Return the worst status over all pools."""
    return worst([result.verdict.status for result in results])


def to_json(results: Sequence[PoolResult]) -> dict[str, Any]:
    """Return the documented JSON form of ``status --json``."""
    return {
        "format": JSON_FORMAT_VERSION,
        "time": time.time(),
        "status": overall(results).name,
        "pools": [
            {
                "name": result.pool.name,
                "address": str(result.pool.address),
                "up": result.up,
                "error": result.error,
                "verdict": result.verdict.to_dict(),
                "sample": result.sample.to_dict() if result.sample else None,
            }
            for result in results
        ],
    }


def _mb(value: float) -> str:
    return f"{value / MB:.1f}"


def status_table(results: Sequence[PoolResult]) -> Table:
    """Build the readable table of ``status``: one row per pool."""
    table = Table(title="OPcache and FPM status", title_justify="left")
    for heading in ("pool", "status", "MB used/free/size", "wasted", "keys",
                    "interned free", "hit rate", "restarts oom/hash/man",
                    "FPM act/idle/total", "queue"):
        table.add_column(heading, justify="left" if heading in ("pool", "status") else "right")
    for result in results:
        status = result.verdict.status
        label = f"[{_STYLE[status]}]{status.name}[/]"
        if result.verdict.restart_due:
            label += " restart due"
        sample = result.sample
        if sample is None:
            table.add_row(result.pool.name, label, *["-"] * 8)
            continue
        opcache = sample.opcache
        fpm = sample.fpm
        table.add_row(
            result.pool.name,
            label,
            f"{_mb(opcache.used_memory)}/{_mb(opcache.free_memory)}/{_mb(opcache.memory_size)}",
            f"{opcache.current_wasted_percentage:.1f}% of {opcache.max_wasted_percentage:g}%",
            f"{opcache.num_cached_keys}/{opcache.max_cached_keys}",
            f"{opcache.interned_free_percentage:.0f}%",
            f"{opcache.hit_rate:.1f}%",
            f"{opcache.oom_restarts}/{opcache.hash_restarts}/{opcache.manual_restarts}",
            f"{fpm.active_processes}/{fpm.idle_processes}/{fpm.total_processes}" if fpm else "-",
            str(fpm.listen_queue) if fpm else "-",
        )
    return table


def findings_lines(results: Sequence[PoolResult]) -> list[str]:
    """Return one line per finding, for printing below the table."""
    lines = []
    for result in results:
        for finding in result.verdict.findings:
            lines.append(f"{result.pool.name}: {finding.status.name}: {finding.message}")
    return lines


def _perfdata_label(pool: str, metric: str) -> str:
    # Nagios labels may not contain quotes or equals signs; they are quoted for spaces.
    clean = pool.replace("'", "").replace("=", "_")
    return f"'{clean}_{metric}'"


def nagios(results: Sequence[PoolResult],
           host_findings: Sequence[Finding] = ()) -> tuple[int, str]:
    """Return the plugin exit status and output: a status line with performance data.

    The worst pool or host finding (such as a failed restart) decides the status; the first
    line names each of them that is not OK. Further lines list every finding, as Nagios and
    Icinga show long output.
    """
    status = worst([overall(results), *[finding.status for finding in host_findings]])
    bad = [r for r in results if r.verdict.status != Status.OK]
    parts = [finding.message for finding in host_findings]
    # The message of a pool that could not be read starts with the pool and its address.
    parts += [r.verdict.summary if r.error else f"{r.pool.name}: {r.verdict.summary}"
              for r in bad]
    if parts:
        summary = "; ".join(parts)
    else:
        summary = f"{len(results)} pool{'s' if len(results) != 1 else ''} healthy"
    perf = []
    for result in results:
        sample = result.sample
        if sample is None:
            continue
        opcache = sample.opcache
        name = result.pool.name
        perf += [
            f"{_perfdata_label(name, 'free')}={opcache.free_memory}B;;;0;{opcache.memory_size}",
            f"{_perfdata_label(name, 'wasted')}={opcache.current_wasted_percentage:.2f}%;;;0;100",
            (f"{_perfdata_label(name, 'keys')}={opcache.num_cached_keys};;;0;"
            f"{opcache.max_cached_keys}"),
            f"{_perfdata_label(name, 'restarts')}={opcache.total_restarts}c",
            f"{_perfdata_label(name, 'hit_rate')}={opcache.hit_rate:.2f}%;;;0;100",
        ]
    line = f"OPCACHE {status.name} - {summary}"
    if perf:
        line += " | " + " ".join(perf)
    details = [line for line in findings_lines(results) if line.split(": ", 2)[-1] not in summary]
    return int(status), "\n".join([line, *details])


class PoolCollector(Collector):
    """Prometheus collector over one round of pool results.

    A pool whose probe failed exports only ``opcache_guard_up 0`` and its scrape duration,
    never zeros that would look like data.
    """

    def __init__(self, results: Sequence[PoolResult], extra: Iterable[Collector] = ()) -> None:
        self.results = results
        self.extra = list(extra)

    def collect(self) -> Iterable[Metric]:
        labels = ["pool"]
        up = GaugeMetricFamily("opcache_guard_up", "1 when the pool's probe succeeded", labels=labels)
        duration = GaugeMetricFamily("opcache_guard_probe_duration_seconds",
                                     "Time the probe of the pool took", labels=labels)
        status = GaugeMetricFamily("opcache_guard_status",
                                   "Verdict: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN", labels=labels)
        restart_due = GaugeMetricFamily("opcache_guard_restart_due",
                                        "1 when the policy asks for a restart of the master",
                                        labels=labels)
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for result in self.results:
            name = [result.pool.name]
            up.add_metric(name, 1.0 if result.up else 0.0)
            duration.add_metric(name, result.duration)
            status.add_metric(name, float(result.verdict.status))
            if result.sample is None:
                continue
            restart_due.add_metric(name, 1.0 if result.verdict.restart_due else 0.0)
            for metric, help_text, value in _sample_values(result):
                family = families.get(metric)
                if family is None:
                    family = families[metric] = _family(metric, help_text, labels)
                family.add_metric(name, value)
        yield from (up, duration, status, restart_due, *families.values())
        for collector in self.extra:
            yield from collector.collect()


def _family(metric: str, help_text: str,
            labels: list[str]) -> GaugeMetricFamily | CounterMetricFamily:
    if metric.endswith("_total"):
        return CounterMetricFamily(metric.removesuffix("_total"), help_text, labels=labels)
    return GaugeMetricFamily(metric, help_text, labels=labels)


def _sample_values(result: PoolResult) -> list[tuple[str, str, float]]:
    assert result.sample is not None
    opcache = result.sample.opcache
    values = [
        ("opcache_memory_size_bytes", "opcache.memory_consumption", opcache.memory_size),
        ("opcache_memory_used_bytes", "Used OPcache memory", opcache.used_memory),
        ("opcache_memory_free_bytes", "Free OPcache memory", opcache.free_memory),
        ("opcache_memory_wasted_bytes", "Wasted OPcache memory", opcache.wasted_memory),
        ("opcache_memory_wasted_percent", "Wasted memory, percent",
         opcache.current_wasted_percentage),
        ("opcache_max_wasted_percent", "opcache.max_wasted_percentage",
         opcache.max_wasted_percentage),
        ("opcache_cached_scripts", "Cached scripts", opcache.num_cached_scripts),
        ("opcache_cached_keys", "Cached keys", opcache.num_cached_keys),
        ("opcache_max_cached_keys", "Capacity of the key table", opcache.max_cached_keys),
        ("opcache_interned_strings_buffer_bytes", "Interned strings buffer size",
         opcache.interned_strings_buffer_size),
        ("opcache_interned_strings_used_bytes", "Interned strings buffer used",
         opcache.interned_strings_used_memory),
        ("opcache_interned_strings_free_bytes", "Interned strings buffer free",
         opcache.interned_strings_free_memory),
        ("opcache_interned_strings", "Interned strings", opcache.number_of_strings),
        ("opcache_hits_total", "OPcache hits since the master started", opcache.hits),
        ("opcache_misses_total", "OPcache misses since the master started", opcache.misses),
        ("opcache_hit_rate_percent", "OPcache hit rate", opcache.hit_rate),
        ("opcache_cache_full", "1 when OPcache is full", float(opcache.cache_full)),
        ("opcache_restart_pending", "1 when an OPcache restart is pending or in progress",
         float(opcache.restart_pending or opcache.restart_in_progress)),
        ("opcache_oom_restarts_total", "Restarts because memory ran out", opcache.oom_restarts),
        ("opcache_hash_restarts_total", "Restarts because the key table filled",
         opcache.hash_restarts),
        ("opcache_manual_restarts_total", "Restarts by opcache_reset()", opcache.manual_restarts),
        ("opcache_start_time_seconds", "When this OPcache segment was created",
         opcache.start_time),
        ("opcache_last_restart_time_seconds", "Last OPcache restart, 0 for never",
         opcache.last_restart_time),
    ]
    fpm = result.sample.fpm
    if fpm is not None:
        values += [
            ("phpfpm_active_processes", "FPM workers serving a request", fpm.active_processes),
            ("phpfpm_idle_processes", "Idle FPM workers", fpm.idle_processes),
            ("phpfpm_total_processes", "FPM workers", fpm.total_processes),
            ("phpfpm_listen_queue", "Requests waiting for a worker", fpm.listen_queue),
            ("phpfpm_max_listen_queue", "Most requests ever waiting", fpm.max_listen_queue),
            ("phpfpm_accepted_connections_total", "Connections accepted", fpm.accepted_conn),
            ("phpfpm_max_children_reached_total", "Times pm.max_children was reached",
             fpm.max_children_reached),
            ("phpfpm_slow_requests_total", "Slow requests", fpm.slow_requests),
            ("phpfpm_start_time_seconds", "When the pool started", fpm.start_time),
        ]
    return [(name, help_text, float(value)) for name, help_text, value in values]


def prometheus_text(results: Sequence[PoolResult], scrape_seconds: float,
                    extra: Iterable[Collector] = ()) -> bytes:
    """Return the text exposition of one round of results."""
    registry = CollectorRegistry()
    registry.register(PoolCollector(results, extra))
    registry.register(_DurationCollector(scrape_seconds))
    return generate_latest(registry)


def scrape_duration(seconds: float) -> list[Metric]:
    """Return the metric that reports how long probing every pool took."""
    return [GaugeMetricFamily("opcache_guard_scrape_duration_seconds",
                              "Time taken to probe every pool", value=seconds)]


class _DurationCollector(Collector):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def collect(self) -> Iterable[Metric]:
        return scrape_duration(self.seconds)
