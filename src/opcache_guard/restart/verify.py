"""The read-only checks of a safe restart: baseline, drain and verification.

Proof of a new master: before the restart, the baseline records every pool's OPcache
``start_time`` (and the master's identity, such as its pid, where the FPM backend knows
it). After the restart every pool must answer its ping and show a later ``start_time``, and
the identity, when known on both sides, must differ. ``start_time`` has a resolution of one
second, so the restart step first waits until the clock has left the old start second.
A pool whose baseline could not be read must show a start at or after the baseline time.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import PurePosixPath
from typing import Any

from opcache_guard.config import PoolConfig
from opcache_guard.errors import FastCGIError, LoadBalancerError, ProbeError, RestartError
from opcache_guard.fastcgi import FastCGIClient
from opcache_guard.fpm.base import FpmControl
from opcache_guard.health import Status, Thresholds, judge
from opcache_guard.lb.base import LoadBalancer
from opcache_guard.probe import Prober
from opcache_guard.restart.settings import RestartSettings
from opcache_guard.sample import Sample
from opcache_guard.store import StateStore

log = logging.getLogger(__name__)


def read_baseline(prober: Prober, pools: list[PoolConfig], fpm: FpmControl) -> dict[str, Any]:
    """Read what the new master must differ from: OPcache start times and the identity."""
    starts: dict[str, int | None] = {}
    for pool in pools:
        try:
            starts[pool.name] = prober.probe(pool).opcache.start_time
        except ProbeError as exc:
            log.warning("failed to read the baseline of pool %s: %s", pool.name, exc)
            starts[pool.name] = None
    return {"taken_at": int(time.time()), "starts": starts, "identity": fpm.identity()}


def latest_start(baseline: dict[str, Any]) -> int:
    """Return the latest OPcache start second the baseline saw."""
    known = [start for start in baseline.get("starts", {}).values() if start is not None]
    return max(known, default=int(baseline.get("taken_at", 0)) - 1)


def staleness(sample: Sample, baseline: dict[str, Any], identity: str | None) -> str | None:
    """Return why a sample may come from the old master, or None if it is from a new one."""
    old_identity = baseline.get("identity")
    if old_identity and identity and old_identity == identity:
        return f"the master is still {identity}"
    old_start = baseline.get("starts", {}).get(sample.pool)
    start = sample.opcache.start_time
    if old_start is not None and start <= old_start:
        return f"OPcache start_time {start} is not later than the old {old_start}"
    if old_start is None and start < int(baseline.get("taken_at", 0)):
        return f"OPcache start_time {start} is older than the restart"
    return None


def drain_status(lb: LoadBalancer, prober: Prober, pools: list[PoolConfig]) -> str | None:
    """Return what still runs on the host, or None when it has drained.

    A pool counts as drained when its status page shows one active process, the one serving
    the status request, or none when the status page comes from ``status_listen``.
    """
    busy = []
    try:
        in_flight = lb.in_flight()
    except LoadBalancerError as exc:
        return f"load balancer in-flight count unreadable: {exc}"
    if in_flight:
        busy.append(f"load balancer reports {in_flight} in flight")
    for pool in pools:
        try:
            state = prober.status_page(pool)
        except ProbeError as exc:
            busy.append(f"pool {pool.name} status unreadable: {exc}")
            continue
        own_request = 0 if pool.status_listen else 1
        if state.active_processes > own_request:
            busy.append(f"pool {pool.name} has {state.active_processes - own_request} active")
    return "; ".join(busy) or None


def wait_drained(lb: LoadBalancer, prober: Prober, pools: list[PoolConfig],
                 settings: RestartSettings) -> tuple[bool, str]:
    """Poll until the host has drained or drain_timeout passes; return (drained, detail)."""
    deadline = time.monotonic() + settings.drain_timeout
    started = time.monotonic()
    while True:
        busy = drain_status(lb, prober, pools)
        if busy is None:
            return True, f"drained in {time.monotonic() - started:.1f} s"
        if time.monotonic() >= deadline:
            return False, busy
        time.sleep(settings.drain_poll)


def health_check(settings: RestartSettings, pools: list[PoolConfig], timeout: float) -> str | None:
    """Run the configured health URL and script; return what failed, or None."""
    if settings.health_url:
        try:
            with urllib.request.urlopen(settings.health_url, timeout=timeout) as reply:
                status = int(reply.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            return f"health URL {settings.health_url} failed: {exc}"
        if status != settings.health_status:
            return (f"health URL {settings.health_url} returned {status}, expected "
                    f"{settings.health_status}")
    if settings.health_script:
        name = "/" + PurePosixPath(settings.health_script).name
        for pool in pools:
            try:
                with FastCGIClient(pool.address, connect_timeout=timeout,
                                   read_timeout=timeout) as client:
                    status = client.get(settings.health_script, name).status
            except FastCGIError as exc:
                return f"health script on pool {pool.name} failed: {exc}"
            if status != settings.health_status:
                return (f"health script {settings.health_script} on pool {pool.name} "
                        f"returned {status}, expected {settings.health_status}")
    return None


def _check_once(prober: Prober, pools: list[PoolConfig], baseline: dict[str, Any],
                fpm: FpmControl, thresholds: Thresholds) -> tuple[list[Sample], str | None]:
    """Probe every pool once; return the samples and why they do not pass yet, if so.

    Raises:
        RestartError: a new master answers but is unhealthy, which waiting does not cure.
    """
    down = [pool.name for pool in pools if not prober.ping(pool)]
    if down:
        return [], f"pools {', '.join(down)} do not answer their ping"
    identity = fpm.identity()
    samples = []
    for pool in pools:
        try:
            sample = prober.probe(pool)
        except ProbeError as exc:
            return [], str(exc)
        stale = staleness(sample, baseline, identity)
        if stale:
            return [], f"pool {pool.name}: {stale}"
        verdict = judge(sample, None, thresholds)
        if verdict.status == Status.CRITICAL or verdict.restart_due:
            raise RestartError(f"pool {pool.name} is unhealthy after the restart: "
                               f"{verdict.summary}")
        samples.append(sample)
    return samples, None


def verify(prober: Prober, pools: list[PoolConfig], baseline: dict[str, Any], fpm: FpmControl,
           thresholds: Thresholds, settings: RestartSettings, store: StateStore | None) -> str:
    """Wait until every pool runs on a new, healthy master; return a summary.

    The fresh samples are stored, so the next check compares with the new master.

    Raises:
        RestartError: verify_timeout passed, or a new master is unhealthy.
    """
    deadline = time.monotonic() + settings.verify_timeout
    started = time.monotonic()
    while True:
        samples, problem = _check_once(prober, pools, baseline, fpm, thresholds)
        if problem is None:
            problem = health_check(settings, pools, settings.health_timeout)
        if problem is None:
            break
        if time.monotonic() >= deadline:
            raise RestartError(f"verification timed out after {settings.verify_timeout:g} s: "
                               f"{problem}")
        time.sleep(0.1)
    if store is not None:
        for sample in samples:
            store.save_sample(sample.key, sample)
    starts = ", ".join(f"{s.pool} OPcache started {s.opcache.start_time}" for s in samples)
    return f"healthy in {time.monotonic() - started:.1f} s ({starts})"
