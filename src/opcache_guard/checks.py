"""Probe a set of pools and judge each one: the work behind status, check and metrics.

Each pool yields a ``PoolResult``: its sample (None when the probe failed), the error, and
the verdict. The previous sample of each pool comes from the state store, so a self-restart
of OPcache between two checks is noticed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from opcache_guard.config import Config, PoolConfig
from opcache_guard.errors import GuardError, StateError
from opcache_guard.health import Finding, Status, Verdict, judge, unknown
from opcache_guard.probe import Prober
from opcache_guard.restart.journal import unresolved_runs
from opcache_guard.restart.states import State
from opcache_guard.sample import Sample, describe_layout_error
from opcache_guard.store import StateStore

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PoolResult:
    """One pool's reading and judgement."""

    pool: PoolConfig
    sample: Sample | None
    verdict: Verdict
    error: str | None
    duration: float

    @property
    def up(self) -> bool:
        return self.sample is not None


def _check_one(prober: Prober, store: StateStore | None, config: Config,
               pool: PoolConfig) -> PoolResult:
    started = time.monotonic()
    try:
        return _probe_and_judge(prober, store, config, pool, started)
    except GuardError:
        # The state store failed: that concerns every pool, so check_pools reports it once.
        raise
    except Exception as exc:
        # A safety net so that a bug met with one pool cannot abort the check of the others.
        log.exception("failed to check %s", pool.location)
        return _failed(pool, f"{pool.location}: check failed unexpectedly: {exc!r}", started)


def _probe_and_judge(prober: Prober, store: StateStore | None, config: Config,
                     pool: PoolConfig, started: float) -> PoolResult:
    try:
        sample = prober.probe(pool)
    except GuardError as exc:
        return _failed(pool, _name_pool(pool, str(exc)), started)
    except (KeyError, TypeError, ValueError) as exc:
        # The reply was JSON, but not laid out as the status script writes it.
        message = f"{pool.location}: unexpected reply layout: {describe_layout_error(exc)}"
        return _failed(pool, message, started)
    previous = None
    if store is not None:
        key = pool.key
        previous = store.previous_sample(key)
        store.save_sample(key, sample)
    verdict = judge(sample, previous, config.thresholds)
    return PoolResult(pool, sample, verdict, None, time.monotonic() - started)


def _name_pool(pool: PoolConfig, message: str) -> str:
    """Prefix the pool's location to a message that does not start with it already."""
    if message.startswith(pool.location):
        return message
    return f"{pool.location}: {message}"


def _failed(pool: PoolConfig, message: str, started: float) -> PoolResult:
    log.info("failed to probe %s: %s", pool.name, message)
    return PoolResult(pool, None, unknown(pool.name, message), message,
                      time.monotonic() - started)


def check_pools(config: Config, remember: bool = True) -> list[PoolResult]:
    """Probe and judge every configured pool, in parallel, in configuration order.

    Arguments:
        config: the pools, probe settings and thresholds.
        remember: compare with and store the previous sample in the state file.

    Raises:
        StateError: the state file cannot be used; the message says how to fix it.
    """
    prober = Prober(config.probe)
    store = None
    if remember:
        try:
            store = StateStore(config.state_file)
        except StateError as exc:
            raise StateError(f"{exc}; or pass --no-state to check without remembering "
                             "the previous sample") from exc
    workers = min(len(config.pools), 16) or 1
    with ThreadPoolExecutor(max_workers=workers) as executor:
        futures = [executor.submit(_check_one, prober, store, config, pool)
                   for pool in config.pools]
        return [future.result() for future in futures]


def restart_findings(config: Config) -> list[Finding]:
    """Report restart runs of this host's journal that did not end well.

    A FAILED run left the host out of the load balancer on purpose, and an interrupted run
    whose process is gone needs ``repair``: both are CRITICAL. A run another live process is
    working on is a WARNING.
    """
    findings = _host_config_findings(config)
    if not config.state_file.exists():
        return findings
    try:
        runs = unresolved_runs(StateStore(config.state_file))
    except StateError as exc:
        return [Finding(Status.UNKNOWN, "journal", f"cannot read the restart journal: {exc}")]
    where = f" -c {config.source}" if config.source != "command line" else ""
    for run in runs:
        if run.in_progress:
            findings.append(Finding(Status.WARNING, "restart_in_progress", run.describe()))
        elif run.state == State.FAILED:
            findings.append(Finding(
                Status.CRITICAL, "restart_failed",
                f"{run.describe()}; the host stays out of the load balancer: fix it, then run "
                f"'opcache-guard pool{where}'"))
        else:
            findings.append(Finding(
                Status.CRITICAL, "restart_interrupted",
                f"{run.describe()}; run 'opcache-guard repair{where}' to complete it"))
    return findings


def _host_config_findings(config: Config) -> list[Finding]:
    """Report a host configuration that restart and the agent would reject.

    Monitoring must not stay green while the agent cannot act. Only the configuration is
    checked here; no load balancer or slot store is contacted.
    """
    if "host" not in config.extra:
        return []
    from opcache_guard.fpm import base as fpm_base
    from opcache_guard.lb import base as lb_base
    from opcache_guard.restart.settings import host_config

    try:
        host = host_config(config)
        lb_base.create(host.name, host.section("lb"), dry_run=True)
        fpm_base.create(host.name, host.section("fpm"), dry_run=True)
    except GuardError as exc:
        return [Finding(Status.CRITICAL, "host_config",
                        f"the host configuration is invalid, so restart and the agent cannot "
                        f"run: {exc}")]
    return []
