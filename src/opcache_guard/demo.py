"""The demo behind the README's first command: watch OPcache fill up, then guard the fleet.

Act one starts a lab of three masters behind HAProxy and shows healthy pools. It deploys
generated code into app1 and rewrites it until OPcache fills and waste grows. At each new
finding it runs the real ``check`` command, which goes from OK to WARNING to CRITICAL with a
restart due. It keeps rewriting until OPcache restarts itself and ``check`` reports that.

Act two runs wrk load through HAProxy, fills app2 and app3 until a restart is due, and
starts one agent per host. The agents restart every host that needs it, one at a time (the
lab's slot limit is 1), while the load runs. The demo ends with a summary of restarts done,
requests served and requests failed, and stops the lab.
"""

from __future__ import annotations

from pathlib import Path

import click

from opcache_guard.checks import check_pools
from opcache_guard.cliutil import guarded
from opcache_guard.config import load_config
from opcache_guard.errors import LabError
from opcache_guard.fpm import local
from opcache_guard.health import Status
from opcache_guard.lab import LabMaster, LabRecord, lab_directory, lab_down, lab_up
from opcache_guard.labfill import Filler
from opcache_guard.labguard import guard_fleet, run_cli

MAX_STEPS = 400


def run_demo(directory: Path, pools: int) -> dict[str, int]:
    """Run the demo and return the exit status of check at each stage, by stage name.

    Raises:
        LabError: the lab could not start, or OPcache never reached the expected state.
    """
    opcache = local.OpcacheSettings(memory_consumption=8, max_wasted_percentage=5)
    record = lab_up(directory, pools, opcache)
    try:
        stages = _stages(record)
        stages.update(guard_fleet(record))
        return stages
    finally:
        for line in lab_down(directory):
            click.echo(f"stopped {line}")


def _stages(record: LabRecord) -> dict[str, int]:
    config_path = str(record.config_path)
    stages = {"fresh": run_cli("status", "-c", config_path)}
    stages["fresh_check"] = run_cli("check", "-c", config_path)

    target = record.masters[0]
    click.secho(f"\nDeploying generated code into {target.name} and rewriting it in place, "
                "as an rsync deploy does...", fg="cyan")
    _fill_until_self_restart(record, target, stages)

    run_cli("status", "-c", config_path)
    return stages


def _fill_until_self_restart(record: LabRecord, target: LabMaster,
                             stages: dict[str, int]) -> None:
    """Deploy into target, running check at each new finding, until OPcache restarts itself.

    Raises:
        LabError: the pool could not be read, or OPcache never restarted itself.
    """
    config_path = str(record.config_path)
    config = load_config(record.config_path)
    filler = Filler(Path(target.directory) / "docroot", target.listen)
    seen: set[tuple[Status, str]] = set()
    restarts_before = None

    for step in range(MAX_STEPS):
        if step < 12:
            filler.add_files(6)
        else:
            filler.rewrite(2)

        result = next(r for r in check_pools(config) if r.pool.name == target.name)
        if result.sample is None:
            raise LabError(f"lost the lab pool {target.name}: {result.error}")
        restarts = result.sample.opcache.oom_restarts + result.sample.opcache.hash_restarts
        if restarts_before is None:
            restarts_before = restarts
        if restarts > restarts_before:
            click.secho(f"\nOPcache of {target.name} restarted itself after {step + 1} deploy "
                        "steps.", fg="red")
            stages["self_restart"] = run_cli("check", "-c", config_path)
            return

        new = {(finding.status, finding.code) for finding in result.verdict.findings} - seen
        if not new:
            continue
        seen |= new
        code = run_cli("check", "-c", config_path)
        stages.setdefault(result.verdict.status.name.lower(), code)
        if result.verdict.restart_due and "restart_due" not in stages:
            stages["restart_due"] = int(result.verdict.status)
            click.secho("\nA guarded fleet would restart this master now. The demo keeps "
                        "deploying to show what happens otherwise...", fg="cyan")

    raise LabError(f"OPcache of {target.name} did not restart itself within {MAX_STEPS} steps")


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Lab directory for the demo (default: the lab directory).")
@click.option("--pools", default=3, show_default=True, type=click.IntRange(2, 8),
              help="Masters to start.")
@guarded()
def demo_command(directory: Path | None, pools: int) -> None:
    """Start a lab, fill one pool's OPcache until it restarts itself, and stop the lab."""
    stages = run_demo(lab_directory(directory), pools)
    click.secho("\nSummary: " + ", ".join(f"{name} {code}" for name, code in stages.items()),
                bold=True)
    expected = {"fresh_check": 0, "critical": 2, "self_restart": 2, "requests_failed": 0,
                "guarded_check": 0}
    wrong = {name: stages.get(name) for name, code in expected.items() if stages.get(name) != code}
    if wrong:
        raise LabError(f"the demo did not see the expected verdicts: {wrong}")
