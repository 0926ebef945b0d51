"""Restart a php-fpm master known by its pid file, with signals.

Configuration::

    [fpm]
    backend = "master"
    pid_file = "/run/php/php8.2-fpm.pid"
    command = ["/usr/sbin/php-fpm8.2", "-F", "-y", "/etc/php/8.2/fpm/php-fpm.conf"]
    env = { PHP_INI_SCAN_DIR = "" }
    log_file = "/var/log/php8.2-fpm.stdout"   # default: the pid file's path + ".stdout"
    stop_timeout = 30                          # seconds QUIT may take before TERM
    start_timeout = 10                         # seconds until the new pid file appears
    check_command = ["/usr/sbin/php-fpm8.2", "-t", "-y", "..."]   # optional, run first
    process_name = "php-fpm"                   # the pid's command line must contain it

A restart sends QUIT, which lets running requests finish within php-fpm's own
``process_control_timeout``. A master still alive after ``stop_timeout`` gets TERM, and five
seconds later KILL, each with a warning. The new master runs ``command`` in the foreground
(``-F``) in its own session, so it outlives the process that started it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from opcache_guard import procs
from opcache_guard.errors import ConfigError, FpmCheckError, FpmControlError
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

TERM_GRACE = 5.0


@register
class MasterControl(FpmControl):
    """A php-fpm master started from a command and found by its pid file."""

    name = "master"

    def __init__(self, host: str, pid_file: Path, command: list[str], *,
                 env: dict[str, str] | None = None, log_file: Path | None = None,
                 stop_timeout: float = 30.0, start_timeout: float = 10.0,
                 check_command: list[str] | None = None, process_name: str = "php-fpm",
                 dry_run: bool = False) -> None:
        super().__init__(host, dry_run)
        self.pid_file = pid_file
        self.command = command
        self.env = env or {}
        self.log_file = log_file or Path(f"{pid_file}.stdout")
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.check_command = check_command or []
        self.process_name = process_name

    @classmethod
    def from_config(cls, host: str, section: dict[str, Any], dry_run: bool) -> FpmControl:
        check_keys(section, {"pid_file", "command", "env", "log_file", "stop_timeout",
                             "start_timeout", "check_command", "process_name"})
        if not section.get("pid_file"):
            raise ConfigError("[fpm] pid_file is missing; set it to the pid file that the "
                              "master's php-fpm.conf names in its pid = ... setting")
        log_file = Path(str(section["log_file"])) if section.get("log_file") else None
        return cls(host, Path(str(section["pid_file"])), argv_setting(section, "command"),
                   env=env_setting(section), log_file=log_file,
                   stop_timeout=number_setting(section, "stop_timeout", 30.0),
                   start_timeout=number_setting(section, "start_timeout", 10.0),
                   check_command=argv_setting(section, "check_command", required=False),
                   process_name=str(section.get("process_name", "php-fpm")), dry_run=dry_run)

    def describe(self) -> str:
        return f"php-fpm master of {self.pid_file} on {self.host}"

    def pid(self) -> int | None:
        """Return the pid of the running master, or None when none runs."""
        pid = procs.read_pid(self.pid_file)
        if pid is None or not procs.is_alive(pid) or not procs.owns(pid, self.process_name):
            return None
        return pid

    def identity(self) -> str | None:
        pid = self.pid()
        return f"pid {pid}" if pid is not None else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def restart(self) -> None:
        pid = self.pid()
        if self.dry_run:
            running = f"stop pid {pid} with QUIT and " if pid else ""
            log.info("would %sstart %s on %s", running, " ".join(self.command), self.host)
            return
        self._check_before_stop()
        if pid is None:
            log.warning("found no master running for %s; starting one", self.pid_file)
        else:
            self._stop(pid)
        self._spawn()

    def _check_before_stop(self) -> None:
        """Raise FpmCheckError, with the running master untouched, if a new one cannot start."""
        program = self.command[0]
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise FpmCheckError(f"{self.host}: [fpm] command program {program!r} is not an "
                                "executable file; the running master was left alone")
        if self.check_command:
            try:
                run_command(self.check_command, self.start_timeout,
                            f"{self.host}: configuration check", self.env)
            except FpmControlError as exc:
                raise FpmCheckError(f"{exc}; the running master was left alone") from exc

    def start(self) -> None:
        if self.is_running():
            return
        if self.dry_run:
            log.info("would start %s on %s", " ".join(self.command), self.host)
            return
        self._spawn()

    def _stop(self, pid: int) -> None:
        log.info("stopping php-fpm master pid %d on %s with QUIT", pid, self.host)
        # NOTE: workers of a KILLed master can keep the listening socket open for a while.
        # The new master may then fail to bind, and the restart ends FAILED.
        for sig, wait in ((signal.SIGQUIT, self.stop_timeout), (signal.SIGTERM, TERM_GRACE),
                          (signal.SIGKILL, TERM_GRACE)):
            if sig != signal.SIGQUIT:
                log.warning("sending %s to php-fpm master pid %d on %s: it did not exit in "
                            "time", sig.name, pid, self.host)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if procs.wait_until(lambda: not procs.is_alive(pid), wait, interval=0.01):
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
                return
        raise FpmControlError(f"{self.host}: php-fpm master pid {pid} survived KILL; "
                              "check the process state (uninterruptible sleep?)")

    def _spawn(self) -> None:
        try:
            process = procs.spawn(self.command, self.log_file, env=self.env)
        except OSError as exc:
            raise FpmControlError(f"{self.host}: failed to start {self.command[0]}: "
                                  f"{exc.strerror}; check [fpm] command") from exc
        log.info("started php-fpm master pid %d on %s", process.pid, self.host)

        def ready() -> bool:
            return process.poll() is not None or procs.read_pid(self.pid_file) == process.pid

        procs.wait_until(ready, self.start_timeout)
        if process.poll() is not None:
            raise FpmControlError(f"{self.host}: php-fpm exited at once with status "
                                  f"{process.returncode}; see {self.log_file} and the "
                                  "master's error_log")
        if procs.read_pid(self.pid_file) != process.pid:
            raise FpmControlError(f"{self.host}: php-fpm pid {process.pid} did not write "
                                  f"{self.pid_file} within {self.start_timeout:g} s; check "
                                  "that the configuration's pid = ... names that file")
