"""The demo behind the README's first command: watch a lab pool's OPcache fill up.

It starts a lab, shows healthy pools, deploys generated code into one pool and rewrites it
until OPcache fills and waste grows, runs the real ``check`` command at each change of
verdict (OK, then WARNING, then CRITICAL with a restart due), keeps rewriting until OPcache
restarts itself and ``check`` reports that, and stops the lab.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from opcache_guard.checks import check_pools
from opcache_guard.cliutil import guarded
from opcache_guard.config import load_config
from opcache_guard.errors import LabError
from opcache_guard.fpm import local
from opcache_guard.health import Status
from opcache_guard.lab import LabRecord, default_lab_dir, lab_down, lab_up
from opcache_guard.labfill import Filler

MAX_STEPS = 400


def _run_cli(*args: str) -> int:
    """Run a real opcache-guard command, echoing it and its output; return its exit status."""
    argv = [sys.executable, "-m", "opcache_guard", *args]
    click.secho(f"\n$ opcache-guard {' '.join(args)}", bold=True)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    click.echo(result.stdout.rstrip())
    if result.stderr.strip():
        click.echo(result.stderr.rstrip(), err=True)
    click.secho(f"(exit status {result.returncode})", dim=True)
    return result.returncode


def run_demo(directory: Path, pools: int) -> dict[str, int]:
    """Run the demo and return the exit status of check at each stage, by stage name.

    Raises:
        LabError: the lab could not start, or OPcache never reached the expected state.
    """
    opcache = local.OpcacheSettings(memory_consumption=8, max_wasted_percentage=5)
    record = lab_up(directory, pools, opcache)
    try:
        return _stages(record)
    finally:
        for line in lab_down(directory):
            click.echo(f"stopped {line}")


def _stages(record: LabRecord) -> dict[str, int]:
    config_path = str(record.config_path)
    config = load_config(record.config_path)
    target = record.masters[0]
    stages = {"fresh": _run_cli("status", "-c", config_path)}
    stages["fresh_check"] = _run_cli("check", "-c", config_path)
    click.secho(f"\nDeploying generated code into {target.name} and rewriting it in place, "
                "as an rsync deploy does...", fg="cyan")
    filler = Filler(Path(target.directory) / "docroot", target.listen)
    seen: set[tuple[Status, str]] = set()
    restarts_before = None
    for step in range(MAX_STEPS):
        if step < 12:
            filler.add_files(6)
        else:
            filler.rewrite(2)
        result = next(r for r in check_pools(config) if r.pool.name == target.name)
        sample = result.sample
        if sample is None:
            raise LabError(f"lost the lab pool {target.name}: {result.error}")
        restarts = sample.opcache.oom_restarts + sample.opcache.hash_restarts
        if restarts_before is None:
            restarts_before = restarts
        status = result.verdict.status
        if restarts > restarts_before:
            click.secho(f"\nOPcache of {target.name} restarted itself after {step + 1} deploy "
                        "steps.", fg="red")
            stages["self_restart"] = _run_cli("check", "-c", config_path)
            break
        new = {(f.status, f.code) for f in result.verdict.findings} - seen
        if new:
            seen |= new
            stages.setdefault(status.name.lower(), _run_cli("check", "-c", config_path))
            if result.verdict.restart_due and "restart_due" not in stages:
                stages["restart_due"] = int(status)
                click.secho("\nA guarded fleet would restart this master now. The demo keeps "
                            "deploying to show what happens otherwise...", fg="cyan")
    else:
        raise LabError(f"OPcache of {target.name} did not restart itself within {MAX_STEPS} "
                       "steps")
    _run_cli("status", "-c", config_path)
    return stages


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Lab directory for the demo (default: the lab directory).")
@click.option("--pools", default=2, show_default=True, help="Masters to start.")
@guarded()
def demo_command(directory: Path | None, pools: int) -> None:
    """Start a lab, fill one pool's OPcache until it restarts itself, and stop the lab."""
    stages = run_demo(directory or default_lab_dir(), pools)
    click.secho("\nSummary of check exit statuses: "
                + ", ".join(f"{name} {code}" for name, code in stages.items()), bold=True)
    expected = {"fresh_check": 0, "critical": 2, "self_restart": 2}
    wrong = {name: stages.get(name) for name, code in expected.items() if stages.get(name) != code}
    if wrong:
        raise LabError(f"the demo did not see the expected verdicts: {wrong}")
