"""The command backend, driving a small load balancer script that keeps its state in a file."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from opcache_guard.errors import ConfigError, LoadBalancerError
from opcache_guard.lb import base
from opcache_guard.lb.base import LbState
from opcache_guard.lb.command import CommandLoadBalancer, render

# A stand-in load balancer: "lbctl.py STATE_DIR ACTION POOL HOST" keeps one file per host.
LBCTL = """\
import pathlib, sys
state_dir, action, pool, host = sys.argv[1:5]
path = pathlib.Path(state_dir) / f"{pool}--{host}"
with open(pathlib.Path(state_dir) / "calls.log", "a") as log:
    log.write(" ".join(sys.argv[2:]) + "\\n")
if action == "state":
    print(path.read_text() if path.exists() else "pooled", "since a while")
elif action == "depool":
    path.write_text("depooled")
elif action == "pool":
    path.write_text("pooled")
elif action == "count":
    print(3)
else:
    sys.exit(f"unknown action {action}")
"""


@pytest.fixture
def lbctl(tmp_path: Path) -> list[str]:
    script = tmp_path / "lbctl.py"
    script.write_text(LBCTL)
    return [sys.executable, str(script), str(tmp_path)]


def _section(lbctl: list[str], **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "backend": "command", "pool_name": "web",
        "depool": [*lbctl, "depool", "{pool}", "{host}"],
        "pool": [*lbctl, "pool", "{pool}", "{host}"],
        "state": [*lbctl, "state", "{pool}", "{host}"],
        "timeout": 5.0,
    }
    section.update(overrides)
    return section


def _balancer(lbctl: list[str], dry_run: bool = False, **overrides: Any) -> CommandLoadBalancer:
    balancer = base.create("app1", _section(lbctl, **overrides), dry_run)
    assert isinstance(balancer, CommandLoadBalancer)
    return balancer


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_depool_and_pool_run_templated_commands(lbctl: list[str], tmp_path: Path) -> None:
    balancer = _balancer(lbctl)
    assert balancer.state() is LbState.POOLED

    balancer.depool()
    assert (tmp_path / "web--app1").read_text() == "depooled"
    assert balancer.state() is LbState.DEPOOLED

    balancer.pool()
    assert balancer.state() is LbState.POOLED
    assert _calls(tmp_path) == ["state web app1", "state web app1", "depool web app1",
                                "state web app1", "state web app1", "state web app1",
                                "pool web app1", "state web app1", "state web app1"]


def test_change_skipped_when_state_matches(lbctl: list[str], tmp_path: Path) -> None:
    balancer = _balancer(lbctl)
    balancer.pool()
    assert "pool web app1" not in _calls(tmp_path)


def test_templating_keeps_each_argument_whole(tmp_path: Path) -> None:
    argv = render(["echo", "{host}", "--pool={pool}", "{{literal}}", "a b; rm -rf /"],
                  {"host": "app1 ; reboot", "pool": "web"})
    assert argv == ["echo", "app1 ; reboot", "--pool=web", "{literal}", "a b; rm -rf /"]


@pytest.mark.parametrize("argument", ["{hostname}", "{0}", "{host", "}"])
def test_templating_rejects_bad_fields(argument: str) -> None:
    with pytest.raises(ConfigError, match="not a valid template.*use \\{host\\}, \\{pool\\}"):
        render(["echo", argument], {"host": "app1", "pool": "web"})


def test_in_flight_reads_integer(lbctl: list[str]) -> None:
    assert _balancer(lbctl).in_flight() is None
    counting = _balancer(lbctl, in_flight=[*lbctl, "count", "{pool}", "{host}"])
    assert counting.in_flight() == 3


def test_in_flight_rejects_non_integer(lbctl: list[str]) -> None:
    balancer = _balancer(lbctl, in_flight=["echo", "many"])
    with pytest.raises(LoadBalancerError, match="printed 'many', not an integer"):
        balancer.in_flight()


def test_bad_state_output_is_clear(lbctl: list[str]) -> None:
    balancer = _balancer(lbctl, state=["echo", "UP", "1/2"])
    with pytest.raises(LoadBalancerError, match="printed 'UP 1/2'; its first word must be one "
                                                "of pooled, draining, depooled, inactive"):
        balancer.state()
    with pytest.raises(LoadBalancerError, match="first word"):
        _balancer(lbctl, state=["true"]).state()


def test_state_words_are_case_insensitive(lbctl: list[str]) -> None:
    assert _balancer(lbctl, state=["echo", "Draining"]).state() is LbState.DRAINING


def test_inactive_is_never_changed(lbctl: list[str], tmp_path: Path) -> None:
    balancer = _balancer(lbctl, state=["echo", "inactive"])
    with pytest.raises(LoadBalancerError, match="is inactive.*operator must depool it"):
        balancer.depool()
    with pytest.raises(LoadBalancerError, match="operator must pool it"):
        balancer.pool()
    assert not (tmp_path / "web--app1").exists()


def test_nonzero_exit_quotes_stderr(lbctl: list[str]) -> None:
    balancer = _balancer(lbctl, depool=[*lbctl, "explode", "{pool}", "{host}"])
    with pytest.raises(LoadBalancerError) as caught:
        balancer.depool()
    message = str(caught.value)
    assert "depool command" in message
    assert "'explode'" in message
    assert "exited with status 1" in message
    assert "stderr: unknown action explode" in message


def test_timeout_kills_command(lbctl: list[str], tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    slow = [sys.executable, "-c",
            ("import sys, time; print('waiting', file=sys.stderr, flush=True); time.sleep(30); "
            f"open({str(marker)!r}, 'w')")]
    balancer = _balancer(lbctl, state=slow, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(LoadBalancerError, match="state command .* timed out after 0.5 s; "
                                                "stderr: waiting"):
        balancer.state()
    assert time.monotonic() - started < 5
    assert not marker.exists()


def test_timeout_kills_grandchildren(lbctl: list[str]) -> None:
    # The shell's child keeps the pipes open; only killing the whole group ends the wait.
    balancer = _balancer(lbctl, state=["sh", "-c", "sleep 30 & sleep 30"], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(LoadBalancerError, match="timed out"):
        balancer.state()
    assert time.monotonic() - started < 5


def test_missing_program_is_clear(lbctl: list[str]) -> None:
    balancer = _balancer(lbctl, state=["/nonexistent/lbctl", "state"])
    with pytest.raises(LoadBalancerError, match="could not start"):
        balancer.state()


def test_change_not_confirmed_raises(lbctl: list[str]) -> None:
    balancer = _balancer(lbctl, depool=["true"])
    with pytest.raises(LoadBalancerError, match="state is pooled after the depool command"):
        balancer.depool()


def test_disable_is_optional(lbctl: list[str], tmp_path: Path) -> None:
    balancer = _balancer(lbctl)
    balancer.disable()
    assert _calls(tmp_path) == []


def test_dry_run_changes_nothing(lbctl: list[str], tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    balancer = _balancer(lbctl, dry_run=True)
    with caplog.at_level(logging.INFO, logger="opcache_guard.lb.command"):
        balancer.depool()
    assert not (tmp_path / "web--app1").exists()
    assert "depool" not in " ".join(_calls(tmp_path)).replace("state", "")
    assert "would run" in caplog.text


@pytest.mark.parametrize(("overrides", "message"), [
    ({"depool": None}, "depool is missing"),
    ({"state": "lbctl state {host}"}, ("must be a list of arguments, not one string; write "
                                      "\\['lbctl', 'state', '\\{host\\}'\\]")),
    ({"pool": []}, "non-empty list"),
    ({"pool": ["ok", 3]}, "non-empty list"),
    ({"depools": ["x"]}, "depools: unknown key for backend command"),
    ({"timeout": -1}, "positive number"),
])
def test_config_errors(lbctl: list[str], overrides: dict[str, Any], message: str) -> None:
    section = _section(lbctl, **overrides)
    section = {key: value for key, value in section.items() if value is not None}
    with pytest.raises(ConfigError, match=message):
        base.create("app1", section)
