"""Commands that change hosts: ``restart``, ``repair``, ``agent`` and ``pool``.

Each reads one host configuration (see ``opcache_guard.restart.settings``). Exit status:
0 when the host ended pooled and healthy (or, for ``agent``, the cycle ran), 1 when nothing
changed because no slot came free or the run was aborted, 2 when a host FAILED and stays
out of the load balancer, or the configuration is invalid.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from opcache_guard.agent import Agent
from opcache_guard.cliutil import config_option, guarded, load
from opcache_guard.errors import ConfigError, GuardError
from opcache_guard.restart import (
    Journal,
    Outcome,
    SafeRestart,
    State,
    host_config,
    open_backends,
    repair,
)
from opcache_guard.restart.settings import Backends, HostConfig

dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Show each step without changing anything.")


def _open(config_path: Path | None, dry_run: bool) -> tuple[HostConfig, Backends]:
    host = host_config(load(config_path))
    return host, open_backends(host, dry_run)


def _exit_status(outcomes: list[Outcome]) -> int:
    states = {outcome.state for outcome in outcomes}
    if State.FAILED in states:
        return 2
    if states - {State.DONE}:
        return 1
    return 0


def _report(outcomes: list[Outcome], dry_run: bool) -> None:
    for outcome in outcomes:
        run = f"run {outcome.run_id}" if outcome.run_id else "dry run"
        click.echo(f"{run}: {outcome.state.name}: {outcome.message}")
    if not outcomes and not dry_run:
        click.echo("nothing to do")
    sys.exit(0 if dry_run else _exit_status(outcomes))


@click.command()
@config_option
@click.option("--force", is_flag=True,
              help="Restart without depooling: running requests may fail.")
@dry_run_option
@click.option("--reason", default="operator request", show_default=True,
              help="Why the host is restarted; stored with its slot and in the journal.")
@click.option("--slot-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for a slot (default: [restart] slot_timeout).")
@guarded(status=2)
def restart(config_path: Path | None, force: bool, dry_run: bool, reason: str,
            slot_timeout: float | None) -> None:
    """Restart this host's php-fpm safely: slot, depool, drain, restart, verify, pool."""
    host, backends = _open(config_path, dry_run)
    outcome = SafeRestart(host, backends, force=force, dry_run=dry_run, reason=reason,
                          slot_timeout=slot_timeout).run()
    _report([outcome], dry_run)


@click.command("repair")
@config_option
@dry_run_option
@click.option("--pool-failed", is_flag=True,
              help="Also retry FAILED runs: start the master if down, verify, and pool.")
@guarded(status=2)
def repair_command(config_path: Path | None, dry_run: bool, pool_failed: bool) -> None:
    """Complete restart runs that a crash left unfinished, from the journal."""
    host, backends = _open(config_path, dry_run)
    _report(repair(host, backends, dry_run=dry_run, pool_failed=pool_failed), dry_run)


@click.command()
@config_option
@click.option("--once", is_flag=True, help="Run one cycle and exit (for a systemd timer).")
@click.option("--interval", type=click.FloatRange(min=1), default=None,
              help="Seconds between cycles (default: [agent] interval).")
@dry_run_option
@guarded(status=2)
def agent(config_path: Path | None, once: bool, interval: float | None, dry_run: bool) -> None:
    """Check this host's pools periodically and restart it safely when due."""
    host, backends = _open(config_path, dry_run)
    worker = Agent(host, backends, dry_run=dry_run)
    if once:
        decision = worker.cycle()
        click.echo(decision.message)
        sys.exit(1 if decision.action in ("error", "restart_failed") else 0)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # A long-running agent reports each cycle's decision at INFO, even without -v.
    package_logger = logging.getLogger("opcache_guard")
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    worker.run_forever(stop, interval)


@click.command()
@config_option
@click.option("--host", "host_name", default=None,
              help="Host to pool; must be the configuration's [host] name.")
@click.option("--force", is_flag=True, help="Pool even when a pool fails its ping.")
@dry_run_option
@guarded(status=2)
def pool(config_path: Path | None, host_name: str | None, force: bool, dry_run: bool) -> None:
    """Put this host back into the load balancer after fixing it; closes FAILED runs."""
    host, backends = _open(config_path, dry_run)
    if host_name is not None and host_name != host.name:
        raise ConfigError(f"--host {host_name} does not match [host] name = {host.name!r} in "
                          f"{host.base.source}; use that host's configuration")
    down = [p.name for p in host.base.pools if not backends.prober.ping(p)]
    if down and not force:
        raise GuardError(f"refusing to pool {host.name}: pools {', '.join(down)} do not "
                         "answer their ping; fix them, or pass --force")
    journal = Journal(backends.store)
    failed = [run for run in journal.runs(host.name, unresolved=True)
              if run.state == State.FAILED]
    if dry_run:
        click.echo(f"would pool {host.name} in {backends.lb.describe()} and close "
                   f"{len(failed)} FAILED runs")
        return
    backends.lb.pool()
    for run in failed:
        SafeRestart(host, backends, reason=run.reason).close_by_operator(run)
    click.echo(f"pooled {host.name}; closed {len(failed)} FAILED runs")
