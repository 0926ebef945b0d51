"""Helpers every command-line command shares: loading configuration, reporting errors.

A command wraps its body in ``guarded`` so that every ``GuardError`` ends as one line on
stderr and a chosen exit status, never a traceback. Setting the environment variable
OPCACHE_GUARD_DEBUG=1 shows the traceback instead, for developers.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from opcache_guard.config import Config, load_config, pool_from_address
from opcache_guard.errors import ConfigError, GuardError

P = ParamSpec("P")
R = TypeVar("R")

ENV_CONFIG = "OPCACHE_GUARD_CONFIG"


def load(config_path: Path | None, addresses: Sequence[str] = ()) -> Config:
    """Build the configuration from --config and --fpm options.

    --fpm addresses replace the file's pools; with neither, OPCACHE_GUARD_CONFIG is read.

    Raises:
        ConfigError: no pools were given, or the file or an address is invalid.
    """
    path = config_path or (Path(os.environ[ENV_CONFIG]) if os.environ.get(ENV_CONFIG) else None)
    config = load_config(path) if path else Config(pools=[])
    if addresses:
        config.pools = [pool_from_address(address) for address in addresses]
    return config


def require_pools(config: Config) -> Config:
    """Raise ConfigError unless the configuration names at least one pool."""
    if not config.pools:
        raise ConfigError("no pools to check; pass --fpm ADDRESS (for example "
                          "--fpm unix:/run/php/php8.2-fpm.sock) or --config FILE with "
                          "[pools.NAME] sections")
    return config


def fail(message: str, status: int) -> None:
    """Print an error line to stderr and exit with status."""
    click.echo(f"opcache-guard: error: {message}", err=True)
    sys.exit(status)


def guarded(status: int = 1,
            plugin: bool = False) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a command so GuardError prints one line and exits with status.

    Configuration errors exit with status 2 unless the command asked for another status,
    as Nagios plugins must exit 3 for every failure. With ``plugin``, the error is also
    printed on stdout as a plugin status line, which is all Nagios and Icinga read.
    """
    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return function(*args, **kwargs)
            except GuardError as exc:
                if os.environ.get("OPCACHE_GUARD_DEBUG"):
                    raise
                code = 2 if isinstance(exc, ConfigError) and status == 1 else status
                if plugin:
                    click.echo(f"OPCACHE UNKNOWN - {exc}")
                fail(str(exc), code)
                raise AssertionError("unreachable") from exc
        return wrapper
    return decorate


def setup_logging(verbose: int) -> None:
    """Log to stderr: warnings by default, INFO with -v, DEBUG with -vv."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# click checks nothing about the file: load_config reports a missing or unreadable file
# itself, with the exit status each command documents (click's usage errors exit 2).
config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(readable=False, path_type=Path),
    default=None,
    help=f"TOML configuration file (default: ${ENV_CONFIG}).")
fpm_option = click.option(
    "--fpm", "addresses", multiple=True, metavar="ADDRESS",
    help="Pool address: unix:/path, /path, tcp://host:port, host:port or [::1]:port. "
         "Repeat for several pools; replaces the pools of --config.")
