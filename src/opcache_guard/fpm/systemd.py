"""Restart php-fpm with ``systemctl restart UNIT``.

Configuration::

    [fpm]
    backend = "systemd"
    unit = "php8.2-fpm.service"
    timeout = 90          # seconds systemctl may take
    systemctl = "systemctl"

``identity`` is the unit's ``MainPID``, so the caller can tell the new master from the old.
"""

from __future__ import annotations

import logging
from typing import Any

from opcache_guard.errors import ConfigError, FpmControlError
from opcache_guard.fpm.base import FpmControl, check_keys, number_setting, register, run_command

log = logging.getLogger(__name__)


@register
class SystemdControl(FpmControl):
    """A php-fpm master run by a systemd unit."""

    name = "systemd"

    def __init__(self, host: str, unit: str, timeout: float = 90.0,
                 systemctl: str = "systemctl", dry_run: bool = False) -> None:
        super().__init__(host, dry_run)
        self.unit = unit
        self.timeout = timeout
        self.systemctl = systemctl

    @classmethod
    def from_config(cls, host: str, section: dict[str, Any], dry_run: bool) -> FpmControl:
        check_keys(section, {"unit", "timeout", "systemctl"})
        unit = section.get("unit")
        if not isinstance(unit, str) or not unit:
            raise ConfigError("[fpm] unit is missing; set for example unit = "
                              "\"php8.2-fpm.service\"")
        return cls(host, unit, number_setting(section, "timeout", 90.0),
                   str(section.get("systemctl", "systemctl")), dry_run)

    def describe(self) -> str:
        return f"systemd unit {self.unit} on {self.host}"

    def _systemctl(self, *args: str) -> str:
        return run_command([self.systemctl, *args], self.timeout,
                           f"{self.host}: systemctl {args[0]} {self.unit}")

    def identity(self) -> str | None:
        try:
            output = self._systemctl("show", "--property=MainPID", "--value", self.unit)
        except FpmControlError as exc:
            log.warning("failed to read the main pid of %s: %s", self.describe(), exc)
            return None
        pid = output.strip()
        return f"pid {pid}" if pid.isdigit() and pid != "0" else None

    def is_running(self) -> bool:
        try:
            self._systemctl("is-active", "--quiet", self.unit)
        except FpmControlError:
            return False
        return True

    def restart(self) -> None:
        if self.dry_run:
            log.info("would run systemctl restart %s on %s", self.unit, self.host)
            return
        log.info("restarting %s", self.describe())
        self._systemctl("restart", self.unit)

    def start(self) -> None:
        if self.dry_run:
            log.info("would run systemctl start %s on %s", self.unit, self.host)
            return
        self._systemctl("start", self.unit)
