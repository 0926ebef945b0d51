"""The FPM control axis: restart the php-fpm master (or masters) behind a host's pools.

A ``FpmControl`` object is bound to one restartable unit of one host: a systemd unit, a
master known by its pid file, or an operator's command. Every backend guarantees:

- ``identity`` and ``is_running`` only read (they are safe in a dry run) and return within
  the backend's timeout. ``identity`` names the running master (its pid, for example), so
  the caller can tell a new master from the old one. It is None when the backend cannot
  tell, or when nothing runs.
- ``restart`` stops the running master, starts a new one and returns once the new master
  runs; it raises ``FpmControlError`` when either step failed. It does not wait for the
  pools to answer: the safe restart verifies that itself.
- ``start`` starts the master when it does not run, and does nothing when it runs. Repair
  uses it to finish a restart that a crash interrupted between stop and start.
- With ``dry_run`` set, ``restart`` and ``start`` log what they would do and change nothing.

How the caller proves a master is new: a fresh probe must show an OPcache ``start_time``
later than the one read before the restart. ``start_time`` has a resolution of one second,
so ``wait_for_next_second`` holds a restart back until the clock has passed the old master's
start second. Where the backend knows the master's pid, the caller also requires a
different ``identity``.
"""

from __future__ import annotations

import abc
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from opcache_guard.errors import ConfigError, FpmControlError
from opcache_guard.registry import Registry

log = logging.getLogger(__name__)


class FpmControl(abc.ABC):
    """One restartable php-fpm unit of one host; see the module docstring for the contract."""

    #: The name that selects this backend in ``[fpm] backend = ...``.
    name: ClassVar[str]

    def __init__(self, host: str, dry_run: bool = False) -> None:
        self.host = host
        self.dry_run = dry_run

    @classmethod
    @abc.abstractmethod
    def from_config(cls, host: str, section: dict[str, Any], dry_run: bool) -> FpmControl:
        """Build the backend from its ``[fpm]`` configuration section.

        Raises:
            ConfigError: a key is missing or invalid, naming the key and the fix.
        """

    @abc.abstractmethod
    def identity(self) -> str | None:
        """Return what identifies the running master (such as its pid), or None."""

    @abc.abstractmethod
    def is_running(self) -> bool:
        """Return whether the master runs."""

    @abc.abstractmethod
    def restart(self) -> None:
        """Stop the running master and start a new one."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the master unless it runs already."""

    def describe(self) -> str:
        """Name the unit for log lines, for example ``systemd php8.2-fpm.service``."""
        return f"{self.name} on {self.host}"


BACKENDS: Registry[FpmControl] = Registry("fpm", "php-fpm backend", "opcache_guard.fpm")
register = BACKENDS.register


def create(host: str, section: dict[str, Any], dry_run: bool = False) -> FpmControl:
    """Build the FPM control backend that ``section['backend']`` names.

    Raises:
        ConfigError: the backend is missing or unknown; the message lists the known ones.
    """
    return BACKENDS.lookup(section.get("backend")).from_config(host, section, dry_run)


def check_keys(section: dict[str, Any], known: set[str]) -> None:
    """Raise ConfigError for a key of ``[fpm]`` that the backend does not read."""
    unknown = sorted(set(section) - known - {"backend"})
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in [fpm] for backend "
                          f"{section.get('backend')!r}; known keys: backend, "
                          f"{', '.join(sorted(known))}")


def argv_setting(section: dict[str, Any], key: str, required: bool = True) -> list[str]:
    """Read a command given as a list of strings.

    Raises:
        ConfigError: the key is missing (when required) or not a list of strings.
    """
    value = section.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[fpm] {key} must be a non-empty list of strings, for example "
                          f"{key} = [\"/usr/sbin/php-fpm8.2\", \"-F\"]")
    return value


def number_setting(section: dict[str, Any], key: str, default: float) -> float:
    """Read a positive number of seconds.

    Raises:
        ConfigError: the value is not a positive number.
    """
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"[fpm] {key} = {value!r} must be a positive number of seconds")
    return float(value)


def env_setting(section: dict[str, Any]) -> dict[str, str]:
    """Read the ``env`` table of extra environment variables for the started program.

    Raises:
        ConfigError: the table contains a value that is not a string.
    """
    value = section.get("env", {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError("[fpm] env must be a table of strings, for example "
                          "env = { PHP_INI_SCAN_DIR = \"\" }")
    return {str(key): str(item) for key, item in value.items()}


def run_command(argv: Sequence[str], timeout: float, what: str,
                env: Mapping[str, str] | None = None) -> str:
    """Run a command to completion and return its output.

    Raises:
        FpmControlError: the command is missing, timed out or exited with a failure status.
    """
    full_env = {**os.environ, **env} if env else None
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                env=full_env, check=False)
    except FileNotFoundError as exc:
        raise FpmControlError(f"{what}: program {argv[0]!r} not found; check the [fpm] "
                              "configuration") from exc
    except subprocess.TimeoutExpired as exc:
        raise FpmControlError(f"{what}: {' '.join(argv)} did not finish within "
                              f"{timeout:g} s; raise [fpm] timeout or check the unit") from exc
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().replace("\n", " | ")
        raise FpmControlError(f"{what}: {' '.join(argv)} exited with status "
                              f"{result.returncode}: {output[:300]}")
    return result.stdout


def wait_for_next_second(start_time: int) -> None:
    """Sleep until the wall clock is past the second start_time names.

    A master started within the same second as the old one would show the same OPcache
    start_time, and the caller could not tell the two apart.
    """
    remaining = start_time + 1 - time.time()
    if remaining > 0:
        time.sleep(remaining)
