"""The ``opcache-guard stress`` command: reproduce OPcache corruption, or show its absence.

Exit status: 0 when nothing was found, 1 when corruption or crashes were found, 2 for
invalid options, 3 when the harness itself could not run.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from opcache_guard.cliutil import fail, guarded
from opcache_guard.config import ProbeSettings
from opcache_guard.errors import ConfigError, StressError
from opcache_guard.fpm.local import OpcacheSettings
from opcache_guard.stress.codegen import FAULTS
from opcache_guard.stress.deploy import Deployer, DeployPlan
from opcache_guard.stress.load import CLIENTS, LoadSettings
from opcache_guard.stress.report import build_report, print_summary, write_report
from opcache_guard.stress.run import Storms, StressRun
from opcache_guard.stress.target import Target, existing_target, start_lab, stop_lab

EXIT_HARNESS_FAILED = 3
STRESS_DIR = "opcache-guard-stress"
_OPCACHE_OPTIONS = ("memory", "interned_strings", "max_files", "max_wasted",
                    "validate_timestamps", "revalidate_freq", "protect_memory", "file_cache")
_POSITIVE = click.FloatRange(min=0.0, min_open=True)


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """Reject nan, which passes click's range checks because it compares false."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


class _OneLineErrors(click.Command):
    """A command whose invalid options end as one error line and exit status 2."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            fail(exc.format_message(), 2)
            raise


@click.command("stress", cls=_OneLineErrors)
@click.option("--lab/--no-lab", default=True, show_default=True,
              help="Start a dedicated php-fpm master with the OPcache options below.")
@click.option("--fpm", "address", metavar="ADDRESS",
              help="Stress an existing pool at this address instead of a lab master.")
@click.option("--docroot", type=click.Path(path_type=Path),
              help="With --fpm: the pool's document root; rounds are written below it.")
@click.option("--pid-file", type=click.Path(path_type=Path),
              help="With --fpm: the master's pid file, needed for --reload-interval.")
@click.option("--fpm-log", type=click.Path(path_type=Path),
              help="With --fpm: the FPM log to watch for crashed workers.")
@click.option("--duration", type=click.FloatRange(0, 3600, min_open=True), default=20.0,
              show_default=True, callback=_finite, help="Seconds of load, at most an hour.")
@click.option("--max-requests", type=click.IntRange(min=1), default=1_000_000,
              show_default=True, help="Requests after which the load stops.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Requests in flight at once.")
@click.option("--client", type=click.Choice(CLIENTS), default="asyncio", show_default=True,
              help="How the load is sent: one event loop, or one thread per connection.")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed of the generated code (default: random, printed in the report).")
@click.option("--files", type=click.IntRange(1, 5000), default=40, show_default=True,
              help="Files in the first round, and the size the deployed tree keeps around.")
@click.option("--round-interval", type=_POSITIVE, default=0.2, show_default=True,
              help="Seconds between deploy rounds.")
@click.option("--rewrite", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Fraction of files rewritten in place per round.")
@click.option("--add", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="New files per round, as a fraction of --files.")
@click.option("--remove", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Fraction of files removed per round.")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Lab: pm.max_children of the lab pool.")
@click.option("--memory", type=click.IntRange(min=8), default=8, show_default=True,
              help="Lab: opcache.memory_consumption in MB.")
@click.option("--interned-strings", type=click.IntRange(min=1), default=1, show_default=True,
              help="Lab: opcache.interned_strings_buffer in MB.")
@click.option("--max-files", type=click.IntRange(min=200), default=200, show_default=True,
              help="Lab: opcache.max_accelerated_files.")
@click.option("--max-wasted", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Lab: opcache.max_wasted_percentage, in percent.")
@click.option("--validate-timestamps/--no-validate-timestamps", default=True,
              show_default=True, help="Lab: opcache.validate_timestamps.")
@click.option("--revalidate-freq", type=click.IntRange(min=0), default=0, show_default=True,
              help="Lab: opcache.revalidate_freq in seconds.")
@click.option("--protect-memory/--no-protect-memory", default=False, show_default=True,
              help="Lab: opcache.protect_memory.")
@click.option("--file-cache", type=click.Path(path_type=Path), default=None,
              help="Lab: opcache.file_cache directory (default: none).")
@click.option("--reset-rate", type=click.FloatRange(0, 1000), default=0.0, show_default=True,
              help="opcache_reset() requests per second during the load.")
@click.option("--reload-interval", type=click.FloatRange(0, 3600), default=0.0,
              show_default=True, help="Seconds between USR2 reloads of the master; 0 for none.")
@click.option("--report-dir", type=click.Path(path_type=Path), default=Path("stress-report"),
              show_default=True, help="Where report.json and chart.png are written.")
@click.option("--inject-fault", type=click.Choice(FAULTS), default=None, hidden=True,
              help="Test only: add one deliberately broken file in round 1.")
@click.option("--dry-run", is_flag=True, help="Print the plan and the files' paths; change nothing.")
@click.pass_context
@guarded()
def stress_command(ctx: click.Context, /, **options: Any) -> None:
    """Deploy self-validating PHP code under load and report any OPcache corruption."""
    if options["seed"] is None:
        options["seed"] = secrets.randbelow(2**31)
    _check_options(ctx, options)
    plan = DeployPlan(files=options["files"], rewrite=options["rewrite"], add=options["add"],
                      remove=options["remove"])
    plan.validate()
    opcache = _opcache_settings(options)
    if options["dry_run"]:
        _print_plan(options, plan, opcache)
        return
    try:
        report = _run(options, plan, opcache)
    except StressError as exc:
        fail(str(exc), EXIT_HARNESS_FAILED)
        return
    json_path, chart_path = write_report(report, options["report_dir"])
    print_summary(report)
    click.echo(f"report: {json_path}" + (f", chart: {chart_path}" if chart_path else ""))
    sys.exit(report["exit_status"])


def _check_options(ctx: click.Context, options: dict[str, Any]) -> None:
    if options["address"] is None:
        if not options["lab"]:
            raise ConfigError("--no-lab needs --fpm ADDRESS and --docroot DIR")
        for name in ("docroot", "pid_file", "fpm_log"):
            if options[name] is not None:
                raise ConfigError(f"--{name.replace('_', '-')} only applies with --fpm ADDRESS")
        return
    if options["docroot"] is None:
        raise ConfigError("--fpm needs --docroot DIR, the pool's document root")
    changed = [name for name in _OPCACHE_OPTIONS
               if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if changed:
        flags = ", ".join("--" + name.replace("_", "-") for name in changed)
        raise ConfigError(f"{flags} cannot change the OPcache settings of an existing pool; "
                          "drop them, or run without --fpm to use a lab master")
    if options["reload_interval"] and options["pid_file"] is None:
        raise ConfigError("--reload-interval with --fpm needs --pid-file, the master's pid file")


def _opcache_settings(options: dict[str, Any]) -> OpcacheSettings:
    settings = OpcacheSettings(
        memory_consumption=options["memory"],
        interned_strings_buffer=options["interned_strings"],
        max_accelerated_files=options["max_files"],
        max_wasted_percentage=options["max_wasted"],
        validate_timestamps=options["validate_timestamps"],
        revalidate_freq=options["revalidate_freq"],
        protect_memory=options["protect_memory"],
        file_cache=str(options["file_cache"] or ""))
    settings.validate()
    return settings


def replay_command(options: dict[str, Any]) -> str:
    """Return the command line that repeats a run with the same seed and settings."""
    argv = ["opcache-guard", "stress"]
    if options["address"]:
        argv += ["--fpm", options["address"], "--docroot", str(options["docroot"])]
    skip = {"lab", "address", "docroot", "dry_run", "report_dir"}
    for name, value in sorted(options.items()):
        if name in skip or value is None or (name in _OPCACHE_OPTIONS and options["address"]):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            argv += [flag, str(value)]
    return shlex.join(argv)


def _settings_record(options: dict[str, Any], plan: DeployPlan,
                     opcache: OpcacheSettings) -> dict[str, Any]:
    record = {name: (str(value) if isinstance(value, Path) else value)
              for name, value in sorted(options.items())}
    record["plan"] = dataclasses.asdict(plan)
    record["opcache"] = dataclasses.asdict(opcache) if not options["address"] else None
    return record


def _open_target(options: dict[str, Any], opcache: OpcacheSettings) -> Target:
    if options["address"] is None:
        return start_lab(opcache, options["workers"])
    return existing_target(options["address"], options["docroot"], options["pid_file"],
                           options["fpm_log"])


def _run(options: dict[str, Any], plan: DeployPlan, opcache: OpcacheSettings) -> dict[str, Any]:
    target = _open_target(options, opcache)
    root = target.docroot / f"{STRESS_DIR}-{options['seed']}"
    deployer: Deployer | None = None
    try:
        if root.exists():
            raise StressError(f"stress directory {root} exists already, perhaps from an "
                              "interrupted run; remove it or pick another --seed")
        deployer = Deployer(root, options["seed"], plan, fault=options["inject_fault"] or "")
        deployer.setup()
        deployer.deploy()
        load = LoadSettings(concurrency=options["concurrency"], duration=options["duration"],
                            max_requests=options["max_requests"], client=options["client"])
        storms = Storms(round_interval=options["round_interval"],
                        reset_rate=options["reset_rate"],
                        reload_interval=options["reload_interval"])
        session = StressRun(target, deployer, load, storms, ProbeSettings(
            connect_timeout=1.0, read_timeout=5.0, script_dir=root / "probe"))
        result = session.run()
    finally:
        if deployer is not None:
            deployer.remove_tree()
        stop_lab(target)
    return build_report(result, options["seed"], replay_command(options),
                        _settings_record(options, plan, opcache))


def _print_plan(options: dict[str, Any], plan: DeployPlan, opcache: OpcacheSettings) -> None:
    if options["address"]:
        click.echo(f"pool: {options['address']} (existing), docroot {options['docroot']}")
        docroot = Path(options["docroot"])
    else:
        click.echo(f"lab master: {options['workers']} workers, OPcache {opcache.ini_lines()[1:]}")
        docroot = Path("/tmp/opcache-guard-stress-XXXXXXXX/fpm/docroot")
    root = docroot / f"{STRESS_DIR}-{options['seed']}"
    click.echo(f"load: {options['concurrency']} in flight for {options['duration']:g} s or "
               f"{options['max_requests']} requests; a round every "
               f"{options['round_interval']:g} s")
    deployer = Deployer(root, options["seed"], plan, fault=options["inject_fault"] or "",
                        dry_run=True)
    first = deployer.deploy()
    click.echo(f"entry script: {deployer.entry_path}")
    click.echo(f"round 0 writes {len(first.added)} files and {deployer.manifest_path(0)}:")
    for name in first.added:
        click.echo(f"  {deployer.live_dir / name}")
    for _ in range(2):
        info = deployer.deploy()
        click.echo(f"round {info.round}: rewrite {len(info.written)}, add {len(info.added)}, "
                   f"remove {len(info.removed)}")
    click.echo(f"replay: {replay_command(options)}")
    click.echo("dry run: nothing was started or written")
