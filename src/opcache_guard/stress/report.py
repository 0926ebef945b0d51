"""Report a stress session: a JSON file, a summary printed with rich, and a PNG chart.

The exit status follows the findings: 0 when nothing was found, 1 when corruption or
crashes were found (2, for usage errors, comes from the command line itself).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from opcache_guard.errors import StressError
from opcache_guard.stress.run import RESTART_KINDS, RunResult

EXIT_CLEAN = 0
EXIT_FINDINGS = 1


def exit_status(result: RunResult) -> int:
    """Return 1 when the session found corruption or crashes, else 0."""
    return EXIT_FINDINGS if result.detector.total_findings else EXIT_CLEAN


def build_report(result: RunResult, seed: int, command: str,
                 settings: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON form of a session's outcome."""
    detector = result.detector
    counts = detector.counts
    requests = counts["requests"]
    return {
        "format": 1,
        "seed": seed,
        "replay_command": command,
        "settings": settings,
        "elapsed": round(result.elapsed, 3),
        "requests": requests,
        "requests_per_second": round(requests / result.elapsed, 1) if result.elapsed else 0.0,
        "checks": counts["checks"],
        "checks_passed": counts["passed"],
        "files_gone": counts["gone"],
        "rounds_expired": counts["expired"],
        "dropped_during_reload": counts["dropped_during_reload"],
        "rounds": result.rounds,
        "opcache_resets_requested": result.resets,
        "reloads": result.reloads,
        "restarts": dict(result.timeline.restarts),
        "probe_errors": result.timeline.probe_errors,
        "findings": {
            "total": detector.total_findings,
            "by_kind": dict(sorted(detector.by_kind.items())),
            "examples": {kind: [dataclasses.asdict(f) for f in findings]
                         for kind, findings in sorted(detector.examples.items())},
        },
        "exit_status": exit_status(result),
        "timeline": result.timeline.points,
        "finding_times": detector.finding_times,
    }


def write_report(report: dict[str, Any], directory: Path) -> tuple[Path, Path | None]:
    """Write report.json and, when there are samples, chart.png into directory.

    Raises:
        StressError: the directory cannot be written.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        json_path = directory / "report.json"
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise StressError(f"cannot write the report into {directory}: {exc.strerror or exc}; "
                          "pass a writable --report-dir") from exc
    chart_path = directory / "chart.png" if report["timeline"] else None
    if chart_path is not None:
        draw_chart(report, chart_path)
    return json_path, chart_path


def draw_chart(report: dict[str, Any], path: Path) -> None:
    """Draw OPcache memory, keys, restarts and findings over time into a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    points = report["timeline"]
    times = [point["t"] for point in points]
    megabyte = 1024 * 1024
    figure, (memory_axes, keys_axes, events_axes) = pyplot.subplots(
        3, 1, sharex=True, figsize=(10, 8))
    for key, label in (("used_memory", "used"), ("free_memory", "free"),
                       ("wasted_memory", "wasted")):
        memory_axes.plot(times, [point[key] / megabyte for point in points], label=label)
    memory_axes.set_ylabel("OPcache memory (MB)")
    memory_axes.legend(loc="upper right")

    keys_axes.plot(times, [point["num_cached_keys"] for point in points], label="cached keys")
    keys_axes.plot(times, [point["num_cached_scripts"] for point in points],
                   label="cached scripts")
    keys_axes.set_ylabel("count")
    keys_axes.legend(loc="upper right")

    events_axes.step(times, [point["restarts"] for point in points], where="post",
                     label="OPcache restarts")
    finding_times = sorted(moment for moment, _ in report["finding_times"])
    if finding_times:
        events_axes.step(finding_times, range(1, len(finding_times) + 1), where="post",
                         label="findings", color="red")
    events_axes.set_ylabel("cumulative")
    events_axes.set_xlabel("seconds into the run")
    events_axes.legend(loc="upper left")
    figure.suptitle(f"opcache-guard stress, seed {report['seed']}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the readable summary of a report."""
    console = console or Console()
    table = Table(title=f"opcache-guard stress, seed {report['seed']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("requests", (f"{report['requests']} in {report['elapsed']:.1f} s "
                     f"({report['requests_per_second']:.0f}/s)")),
        ("checks passed", f"{report['checks_passed']} of {report['checks']}"),
        ("deploy rounds", str(report["rounds"])),
        ("opcache_reset() requests", str(report["opcache_resets_requested"])),
        ("master reloads", str(report["reloads"])),
        ("dropped during reloads", str(report["dropped_during_reload"])),
        ("files gone, rounds expired",
         f"{report['files_gone']}, {report['rounds_expired']}"),
        ("probe errors", str(report["probe_errors"])),
    ]
    rows += [(f"OPcache {kind.replace('_', ' ')}", str(report["restarts"][kind]))
             for kind in RESTART_KINDS]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)

    findings = report["findings"]
    if not findings["total"]:
        console.print("[green]no corruption or crash found[/green]")
    else:
        console.print(f"[red]{findings['total']} findings[/red]")
        for kind, count in findings["by_kind"].items():
            console.print(f"  {kind}: {count}")
            for example in findings["examples"].get(kind, [])[:3]:
                console.print(f"    at {example['time']:.2f} s, round {example['round']}, "
                              f"file {example['file'] or '-'}, pid {example['pid']}: "
                              f"{example['detail'][:160]}", markup=False, highlight=False)
    console.print(f"replay: {report['replay_command']}", markup=False, highlight=False,
                  soft_wrap=True)
