"""Run wrk against a loopback URL and read its summary: requests served and failed.

Failures are counted on the client side, as wrk reports them: non-2xx or 3xx responses plus
socket errors. HAProxy closes a client's connection without a status or a log line when a
server dies mid-request, so its own log would miss those.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import urllib.parse
from pathlib import Path

from opcache_guard import procs
from opcache_guard.errors import ConfigError, LabError

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclasses.dataclass
class WrkResult:
    """wrk's figures for one run."""

    requests: int
    non_2xx: int
    socket_errors: int
    seconds: float
    output: str

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors


def parse_output(text: str) -> WrkResult:
    """Read wrk's summary.

    Raises:
        LabError: the text has no "N requests in Ts" line.
    """
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s|m)\b", text)
    if total is None:
        raise LabError(f"wrk printed no summary: {text.strip()[-300:]!r}")
    seconds = float(total[2]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[total[3]]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    return WrkResult(
        requests=int(total[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        seconds=seconds,
        output=text,
    )


class WrkRun:
    """One wrk process running in the background for a bounded time."""

    def __init__(self, url: str, seconds: int, log_path: Path, connections: int = 8,
                 threads: int = 2) -> None:
        host = urllib.parse.urlsplit(url).hostname or ""
        if host not in LOOPBACK_HOSTS and f"[{host}]" not in LOOPBACK_HOSTS:
            raise ConfigError(f"wrk target {url} is not on loopback; load is only ever aimed "
                              "at 127.0.0.1 or ::1")
        if not 1 <= seconds <= 600:
            raise ConfigError(f"wrk duration {seconds} s is outside 1-600 s")
        program = procs.require_program(["wrk"], "wrk")
        self.log_path = log_path
        argv = [program, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", url]
        with open(log_path, "w") as log:
            # The child keeps its own copy of the file descriptor.
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        self.seconds = seconds

    def wait(self) -> WrkResult:
        """Wait for wrk to finish and return its figures."""
        try:
            self.process.wait(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return parse_output(self.log_path.read_text())
