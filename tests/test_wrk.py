"""Parsing wrk's summary and refusing non-loopback targets."""

from pathlib import Path

import pytest

from opcache_guard.errors import ConfigError, LabError
from opcache_guard.wrk import WrkRun, parse_output

CLEAN = """Running 5s test @ http://127.0.0.1:8080/
  2 threads and 8 connections
  11333 requests in 8.01s, 1.58MB read
Requests/sec:   1415.22
"""

FAILED = """Running 5s test @ http://127.0.0.1:8080/
  2 threads and 8 connections
  9000 requests in 5.00s, 1.00MB read
  Socket errors: connect 0, read 3, write 1, timeout 0
  Non-2xx or 3xx responses: 7
Requests/sec:   1800.00
"""


def test_parse_clean_run() -> None:
    result = parse_output(CLEAN)
    assert result.requests == 11333
    assert result.seconds == pytest.approx(8.01)
    assert result.failed == 0


def test_parse_failures() -> None:
    result = parse_output(FAILED)
    assert result.non_2xx == 7
    assert result.socket_errors == 4
    assert result.failed == 11


def test_parse_without_summary() -> None:
    with pytest.raises(LabError, match="no summary"):
        parse_output("unable to connect to 127.0.0.1:1 Connection refused")


def test_rejects_non_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not on loopback"):
        WrkRun("http://192.0.2.1/", 1, tmp_path / "wrk.log")
