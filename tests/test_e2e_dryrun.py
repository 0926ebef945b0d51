"""Dry runs of restart, repair and agent change nothing in HAProxy, etcd, php-fpm or the journal."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import Lab, cli, running_lab
from restart_support import run_child

from opcache_guard.config import load_config
from opcache_guard.restart import Journal
from opcache_guard.store import StateStore

HOST = "app1"
# HAProxy counts this column up every second, whatever happens to the server.


@dataclasses.dataclass
class Snapshot:
    """Everything a mutating command could change."""

    servers: list[dict[str, str]]
    slot_keys: list[str]
    pid: int | None
    opcache_start: int
    runs: list[tuple[int, str]]


CONTROLLED_COLUMNS = ("srv_name", "srv_admin_state", "srv_uweight", "srv_iweight")


def snapshot(lab: Lab) -> Snapshot:
    # Only what opcache-guard can change: health check columns move with HAProxy's checks.
    servers = [{key: row[key] for key in CONTROLLED_COLUMNS} for row in lab.servers_state()]
    store = StateStore(load_config(lab.host_config(HOST)).state_file)
    runs = [(run.id, run.state.name) for run in Journal(store).runs(HOST)]
    return Snapshot(servers, lab.etcd_slot_keys(HOST), lab.pid(HOST), lab.opcache_start(HOST),
                    runs)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with running_lab(pools=2, slots="etcd") as running:
        yield running


def dry_run(lab: Lab, *args: str) -> Any:
    """Run a command with --dry-run; check it succeeds and changes nothing; return its output."""
    before = snapshot(lab)
    result = cli(*args, "--dry-run", "-c", str(lab.host_config(HOST)))
    assert result.returncode == 0, result.stdout + result.stderr
    after = snapshot(lab)
    assert after.servers == before.servers
    assert after.slot_keys == before.slot_keys
    assert after.pid == before.pid
    assert after.opcache_start == before.opcache_start
    assert after.runs == before.runs
    return result.stdout + result.stderr


def test_dry_runs_change_nothing(lab: Lab) -> None:
    lab.reset_opcache(HOST)
    assert lab.check(HOST).returncode == 2

    restart = dry_run(lab, "restart")
    assert "dry run: DONE" in restart
    agent = dry_run(lab, "agent", "--once")
    assert f"restarted {HOST}/{HOST}" in agent
    assert dry_run(lab, "repair") == ""
    assert snapshot(lab).runs == []


def test_dry_repair_of_killed_run(lab: Lab) -> None:
    assert run_child(lab.host_config(HOST), "DISABLING") == -signal.SIGKILL
    before = snapshot(lab)
    assert before.runs == [(1, "DISABLING")]
    assert len(before.slot_keys) == 1

    repair = dry_run(lab, "repair")
    assert "would repair from DISABLING" in repair
    agent = dry_run(lab, "agent", "--once")
    assert "holding app1 out of restarts" in agent
