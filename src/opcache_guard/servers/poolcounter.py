"""Run a PoolCounter daemon on loopback and stop it by pid.

``poolcounterd`` takes only ``-l ADDRESS`` and always listens on port 7531, so one network
namespace runs at most one of them; ``start`` fails when the port is already taken.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from opcache_guard import procs
from opcache_guard.errors import GuardError

PORT = 7531


def port_taken(host: str = "127.0.0.1") -> bool:
    """Return whether something already accepts connections on PoolCounter's port."""
    return procs.port_open(host, PORT)


@dataclasses.dataclass
class PoolCounterServer:
    """One poolcounterd listening on ``host``:7531; its output goes to ``directory``."""

    directory: Path
    host: str = "127.0.0.1"
    pid: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{PORT}"

    def start(self, timeout: float = 5.0) -> PoolCounterServer:
        """Start poolcounterd and wait until it accepts connections.

        Raises:
            GuardError: poolcounterd is not installed, the port is taken, or it exited or
                did not listen in time.
        """
        program = procs.require_program(["poolcounterd"], "poolcounter")
        if port_taken(self.host):
            raise GuardError(f"port {PORT} on {self.host} is already taken, and poolcounterd "
                             "cannot use another port; stop whatever listens there")
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / "poolcounterd.log"
        self.pid = procs.launch([program, "-l", self.host], log_path,
                                lambda: port_taken(self.host),
                                name=f"poolcounterd on {self.address}", marker="poolcounterd",
                                timeout=timeout, cwd=self.directory)
        return self

    def stop(self) -> None:
        """Stop the poolcounterd process this object started."""
        if self.pid:
            procs.stop(self.pid, "poolcounterd")
            self.pid = 0
