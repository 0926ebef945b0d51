"""Act two of the demo: agents restart the lab's filled pools while load runs through HAProxy."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from opcache_guard import procs
from opcache_guard.checks import check_pools
from opcache_guard.config import Config, load_config
from opcache_guard.errors import LabError
from opcache_guard.lab import LabMaster, LabRecord
from opcache_guard.labfill import Filler
from opcache_guard.labhosts import HOSTS_DIR
from opcache_guard.restart.journal import Journal
from opcache_guard.restart.states import State
from opcache_guard.store import StateStore
from opcache_guard.wrk import WrkRun

LOAD_SECONDS = 25
AGENTS_DEADLINE = 60.0
FILL_STEPS = 200


def run_cli(*args: str) -> int:
    """Run a real opcache-guard command, echoing it and its output; return its exit status."""
    argv = [sys.executable, "-m", "opcache_guard", *args]
    click.secho(f"\n$ opcache-guard {' '.join(args)}", bold=True)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    click.echo(result.stdout.rstrip())
    if result.stderr.strip():
        click.echo(result.stderr.rstrip(), err=True)
    click.secho(f"(exit status {result.returncode})", dim=True)
    return result.returncode


def fill_until_restart_due(config: Config, master: LabMaster) -> None:
    """Deploy and rewrite code in one pool until the policy asks for a restart.

    Raises:
        LabError: the pool never reached that point, or OPcache restarted itself first.
    """
    filler = Filler(Path(master.directory) / "docroot", master.listen)
    filler.add_files(60)
    for _ in range(FILL_STEPS):
        filler.rewrite(2)
        result = next(r for r in check_pools(config) if r.pool.name == master.name)
        if result.verdict.restart_due:
            click.echo(f"{master.name}: {result.verdict.status.name}: {result.verdict.summary}")
            return
    raise LabError(f"{master.name} never needed a restart after {FILL_STEPS} deploy steps")


def _host_config(record: LabRecord, master: LabMaster) -> Path:
    return Path(record.directory) / HOSTS_DIR / f"{master.name}.toml"


def _start_agents(record: LabRecord) -> list[int]:
    pids = []
    for master in record.masters:
        argv = [sys.executable, "-m", "opcache_guard", "agent", "-c",
                str(_host_config(record, master))]
        log_path = Path(master.directory) / "agent.log"
        log_path.unlink(missing_ok=True)
        pids.append(procs.spawn(argv, log_path).pid)
    return pids


def _restarts_done(record: LabRecord, since: float) -> dict[str, int]:
    done = {}
    for master in record.masters:
        config = load_config(_host_config(record, master))
        runs = Journal(StateStore(config.state_file)).runs(master.name)
        done[master.name] = sum(1 for run in runs if run.state == State.DONE
                                and run.started >= since)
    return done


def _all_healthy(config: Config) -> bool:
    return all(result.verdict.status.name == "OK" for result in check_pools(config))


def guard_fleet(record: LabRecord) -> dict[str, int]:
    """Run act two and return its figures: restarts done, requests served and failed.

    Raises:
        LabError: the lab has no HAProxy, or the agents did not heal the fleet in time.
    """
    balancer = record.extra.get("haproxy")
    if not balancer:
        raise LabError("the demo's second act needs the lab's HAProxy")
    config = load_config(record.config_path)
    click.secho(f"\nAct two: wrk sends load through HAProxy ({balancer['url']}) for "
                f"{LOAD_SECONDS} s while the other pools fill up and one agent per host "
                "restarts whatever needs it, at most one host out at a time.", fg="cyan")
    started = time.time()
    load = WrkRun(balancer["url"] + "/", LOAD_SECONDS, Path(record.directory) / "wrk.log")
    agents: list[int] = []
    try:
        for master in record.masters[1:]:
            fill_until_restart_due(config, master)
        agents = _start_agents(record)
        healed = procs.wait_until(lambda: _all_healthy(config), AGENTS_DEADLINE, interval=0.5)
    finally:
        for pid in agents:
            procs.stop(pid, "agent", signal.SIGTERM)
        result = load.wait()
    for master in record.masters:
        log_path = Path(master.directory) / "agent.log"
        for line in log_path.read_text(errors="replace").splitlines():
            # Show each cycle's decision line, without the timestamp and logger name.
            decision = line.partition(" opcache_guard.agent: ")[2]
            if decision and not decision.startswith(("starting", "stopped")):
                click.echo(f"  agent of {master.name}: {decision[:150]}")
    done = _restarts_done(record, started)
    click.secho(f"\nRestarts done: {sum(done.values())} ("
                + ", ".join(f"{name} {count}" for name, count in done.items())
                + f"); requests served: {result.requests}; requests failed: {result.failed}",
                bold=True)
    if not healed:
        raise LabError(f"the agents did not bring every pool back to OK within "
                       f"{AGENTS_DEADLINE:g} s; see the agent.log files in {record.directory}")
    return {"restarts_done": sum(done.values()), "requests_served": result.requests,
            "requests_failed": result.failed,
            "guarded_check": run_cli("check", "-c", str(record.config_path))}
