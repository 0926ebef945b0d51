"""The ``opcache-guard slots`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from opcache_guard import cliutil
from opcache_guard.errors import ConfigError
from opcache_guard.slots.base import create_from
from opcache_guard.slots.render import status_dict, status_table


@click.group("slots")
def slots() -> None:
    """Inspect the slots that bound how many hosts of a group are out at once."""


@slots.command("status")
@cliutil.config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@cliutil.guarded()
def status(config_path: Path | None, as_json: bool) -> None:
    """Show each group's limit and the hosts out of service with its slots. Reads only."""
    config = cliutil.load(config_path)
    if not config.extra.get("slots", {}).get("groups"):
        raise ConfigError("no slot groups configured; add [slots.groups.NAME] sections with "
                          "limit = N to the file given with --config")
    backend = create_from(config, dry_run=True)
    try:
        groups = backend.status()
    finally:
        backend.close()
    if as_json:
        click.echo(json.dumps(status_dict(groups, backend.name), indent=2))
    else:
        Console().print(status_table(groups, backend.name))
