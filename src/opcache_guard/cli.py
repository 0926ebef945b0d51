"""The opcache-guard command line."""

from __future__ import annotations

import ipaddress
import json
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import click
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from rich.console import Console

from opcache_guard import __version__, output
from opcache_guard.agent import agent_collector
from opcache_guard.checks import PoolResult, check_pools, restart_findings
from opcache_guard.cliutil import (
    config_option,
    fail,
    fpm_option,
    guarded,
    load,
    require_pools,
    setup_logging,
)
from opcache_guard.config import Config
from opcache_guard.demo import demo_command
from opcache_guard.errors import ConfigError, GuardError
from opcache_guard.fastcgi import parse_address
from opcache_guard.health import Status
from opcache_guard.lab import lab_group
from opcache_guard.restart_command import agent, pool, repair_command, restart
from opcache_guard.slots import command as slots_command
from opcache_guard.store import StateStore
from opcache_guard.stress.command import stress_command

UNKNOWN = int(Status.UNKNOWN)
no_state_option = click.option(
    "--no-state", is_flag=True,
    help="Do not read or write the state file; self-restarts between checks go unnoticed.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="opcache-guard")
@click.option("-v", "--verbose", count=True, help="Log more: -v for INFO, -vv for DEBUG.")
def main(verbose: int) -> None:
    """Watch PHP-FPM OPcache and restart servers before OPcache restarts itself."""
    setup_logging(verbose)
    # Turn SIGTERM (from Nagios, timeout or systemd) into an exception, so cleanup such as
    # removing the probe's status script still runs.
    signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _results(config_path: Path | None, addresses: tuple[str, ...],
             no_state: bool) -> tuple[Config, list[PoolResult]]:
    config = require_pools(load(config_path, addresses))
    return config, check_pools(config, remember=not no_state)


def _report_failures(results: list[PoolResult]) -> None:
    for result in results:
        if result.error:
            click.echo(f"opcache-guard: error: {result.error}", err=True)


@main.command()
@config_option
@fpm_option
@click.option("--json", "as_json", is_flag=True, help="Print the documented JSON form.")
@no_state_option
@guarded(status=UNKNOWN)
def status(config_path: Path | None, addresses: tuple[str, ...], as_json: bool,
           no_state: bool) -> None:
    """Show each pool's OPcache and FPM state.

    Exits 0 when every pool was read, 3 when a pool could not be read.
    """
    config, results = _results(config_path, addresses, no_state)
    host_findings = restart_findings(config)
    if as_json:
        document = output.to_json(results)
        document["restarts"] = [{"status": f.status.name, "code": f.code, "message": f.message}
                                for f in host_findings]
        click.echo(json.dumps(document, indent=2))
    else:
        console = Console(width=None if sys.stdout.isatty() else 160)
        console.print(output.status_table(results))
        for line in output.findings_lines(results):
            if line.split(": ", 2)[1] != "UNKNOWN":
                console.print(line, highlight=False)
    _report_failures(results)
    sys.exit(UNKNOWN if any(not r.up for r in results) else 0)


@main.command()
@config_option
@fpm_option
@no_state_option
@guarded(status=UNKNOWN, plugin=True)
def check(config_path: Path | None, addresses: tuple[str, ...], no_state: bool) -> None:
    """Run as a Nagios/Icinga plugin: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

    The worst pool decides; CRITICAL outranks UNKNOWN, which outranks WARNING.
    """
    config, results = _results(config_path, addresses, no_state)
    code, text = output.nagios(results, restart_findings(config))
    click.echo(text)
    sys.exit(code)


@main.command()
@config_option
@fpm_option
@no_state_option
@guarded(status=UNKNOWN)
def metrics(config_path: Path | None, addresses: tuple[str, ...], no_state: bool) -> None:
    """Print Prometheus metrics for every pool to stdout (for the textfile collector).

    A pool that cannot be read is reported as opcache_guard_up 0 and on stderr. The exit
    status stays 0, because the metrics themselves carry the failure.
    """
    started = time.monotonic()
    config, results = _results(config_path, addresses, no_state)
    sys.stdout.buffer.write(output.prometheus_text(results, time.monotonic() - started,
                                                   _agent_collectors(config)))
    _report_failures(results)


def _agent_collectors(config: Config) -> list[Collector]:
    """Return the collector of the agent's state when this host's state file has one."""
    if not config.state_file.exists():
        return []
    return [agent_collector(StateStore(config.state_file))]


class _ScrapeCollector(Collector):
    """Probes every pool on each scrape; one scrape at a time."""

    def __init__(self, config: Config, remember: bool) -> None:
        self.config = config
        self.remember = remember
        self.lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            started = time.monotonic()
            try:
                results = check_pools(self.config, remember=self.remember)
            except GuardError as exc:
                click.echo(f"opcache-guard: error: {exc}", err=True)
                results = []
            collectors: list[Collector] = [output.PoolCollector(results),
                                           *_agent_collectors(self.config)]
            for collector in collectors:
                yield from collector.collect()
            yield from output.scrape_duration(time.monotonic() - started)


def _listen_address(text: str) -> tuple[str, int]:
    """Return the host and port of --listen.

    Raises:
        ConfigError: the text is not HOST:PORT.
    """
    try:
        address = parse_address(text)
    except ConfigError:
        address = None
    if address is None or address.is_unix:
        raise ConfigError(f"--listen {text!r} is invalid: the exporter listens on TCP; use "
                          "HOST:PORT, for example 127.0.0.1:9253")
    return address.host, address.port


def _exposure_warning(host: str, port: int) -> str | None:
    """Return a warning when the exporter would serve beyond this host's loopback."""
    if host == "localhost":
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        return None
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if ip is not None and ip.is_unspecified:
        reach = "serving metrics on all interfaces"
    else:
        reach = "serving metrics beyond loopback"
    return (f"opcache-guard: warning: --listen {shown}: {reach}; anyone who reaches this host "
            "can read pool names and figures")


@main.command()
@config_option
@fpm_option
@click.option("--listen", default="127.0.0.1:9253", show_default=True, metavar="HOST:PORT",
              help="Address and port to serve /metrics on. The default is loopback only; "
                   "any other address prints a warning.")
@no_state_option
@guarded(status=2)
def exporter(config_path: Path | None, addresses: tuple[str, ...], listen: str,
             no_state: bool) -> None:
    """Serve Prometheus metrics over HTTP; every scrape probes every pool."""
    config = require_pools(load(config_path, addresses))
    host, port = _listen_address(listen)
    warning = _exposure_warning(host, port)
    if warning:
        click.echo(warning, err=True)
    registry = CollectorRegistry()
    registry.register(_ScrapeCollector(config, remember=not no_state))
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror}; choose another --listen", 2)
    click.echo(f"serving metrics of {len(config.pools)} pools on http://{listen}/metrics",
               err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


main.add_command(lab_group)
lab_group.add_command(demo_command)
main.add_command(slots_command.slots)
main.add_command(stress_command)
main.add_command(restart)
main.add_command(repair_command)
main.add_command(agent)
main.add_command(pool)
