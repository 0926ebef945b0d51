"""Restart php-fpm with commands the operator gives.

Configuration::

    [fpm]
    backend = "command"
    restart_command = ["/usr/local/bin/fpm-restart", "www"]
    start_command = ["/usr/local/bin/fpm-start", "www"]   # default: restart_command
    status_command = ["/usr/local/bin/fpm-running", "www"] # exit 0 when the master runs
    pid_file = "/run/php/php8.2-fpm.pid"                   # optional, gives ``identity``
    timeout = 60
    env = { LANG = "C" }

Without ``status_command`` the master counts as running when ``pid_file`` names a live
process, or, without ``pid_file`` either, always.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from opcache_guard import procs
from opcache_guard.errors import FpmControlError
from opcache_guard.fpm.base import (
    FpmControl,
    argv_setting,
    check_keys,
    env_setting,
    number_setting,
    register,
    run_command,
)

log = logging.getLogger(__name__)


@register
class CommandControl(FpmControl):
    """A php-fpm master restarted by the operator's commands."""

    name = "command"

    def __init__(self, host: str, restart_command: list[str], start_command: list[str],
                 status_command: list[str], pid_file: Path | None, timeout: float,
                 env: dict[str, str], dry_run: bool = False) -> None:
        super().__init__(host, dry_run)
        self.restart_command = restart_command
        self.start_command = start_command or restart_command
        self.status_command = status_command
        self.pid_file = pid_file
        self.timeout = timeout
        self.env = env

    @classmethod
    def from_config(cls, host: str, section: dict[str, Any], dry_run: bool) -> FpmControl:
        check_keys(section, {"restart_command", "start_command", "status_command", "pid_file",
                             "timeout", "env"})
        pid_file = Path(str(section["pid_file"])) if section.get("pid_file") else None
        return cls(host, argv_setting(section, "restart_command"),
                   argv_setting(section, "start_command", required=False),
                   argv_setting(section, "status_command", required=False), pid_file,
                   number_setting(section, "timeout", 60.0), env_setting(section), dry_run)

    def describe(self) -> str:
        return f"command {self.restart_command[0]} on {self.host}"

    def _pid(self) -> int | None:
        if self.pid_file is None:
            return None
        pid = procs.read_pid(self.pid_file)
        return pid if pid is not None and procs.is_alive(pid) else None

    def identity(self) -> str | None:
        pid = self._pid()
        return f"pid {pid}" if pid is not None else None

    def is_running(self) -> bool:
        if self.status_command:
            try:
                run_command(self.status_command, self.timeout, f"{self.host}: status command",
                            self.env)
            except FpmControlError:
                return False
            return True
        if self.pid_file is not None:
            return self._pid() is not None
        return True

    def restart(self) -> None:
        if self.dry_run:
            log.info("would run %s on %s", " ".join(self.restart_command), self.host)
            return
        log.info("restarting php-fpm on %s: running %s", self.host, " ".join(self.restart_command))
        run_command(self.restart_command, self.timeout, f"{self.host}: restart command", self.env)

    def start(self) -> None:
        if self.is_running():
            return
        if self.dry_run:
            log.info("would run %s on %s", " ".join(self.start_command), self.host)
            return
        log.info("starting php-fpm on %s: running %s", self.host, " ".join(self.start_command))
        run_command(self.start_command, self.timeout, f"{self.host}: start command", self.env)
