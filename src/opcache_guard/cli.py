"""The opcache-guard command line."""

from __future__ import annotations

import click

from opcache_guard import __version__
from opcache_guard.cliutil import setup_logging
from opcache_guard.restart_command import agent, pool, repair_command, restart


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="opcache-guard")
@click.option("-v", "--verbose", count=True, help="Log more: -v for INFO, -vv for DEBUG.")
def main(verbose: int) -> None:
    """Watch PHP-FPM OPcache and restart servers before OPcache restarts itself."""
    setup_logging(verbose)


main.add_command(restart)
main.add_command(repair_command)
main.add_command(agent)
main.add_command(pool)
