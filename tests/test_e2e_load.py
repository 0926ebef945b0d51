"""Safe restarts under load through a real HAProxy drop no request; a plain restart does."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from e2e_support import Lab, cli, running_lab, wrk_load

from opcache_guard import procs
from opcache_guard.fpm import local

HOSTS = ("app1", "app2", "app3")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with running_lab(pools=3) as running:
        yield running


def test_safe_restarts_drop_nothing(lab: Lab) -> None:
    pids = {name: lab.pid(name) for name in HOSTS}
    starts = {name: lab.opcache_start(name) for name in HOSTS}

    with wrk_load(lab.url + "/", seconds=10) as results:
        for name in HOSTS:
            restarted = cli("restart", "-c", str(lab.host_config(name)))
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            assert "DONE" in restarted.stdout

    load = results[0]
    print(f"wrk during three safe restarts: {load.requests} requests, {load.failed} failed")
    assert load.requests > 5000, load.output
    assert "Non-2xx or 3xx responses" not in load.output
    assert "Socket errors" not in load.output
    for name in HOSTS:
        assert lab.pid(name) not in (None, pids[name])
        assert lab.opcache_start(name) > starts[name]
        assert lab.wait_up(name) == "UP"


def test_plain_restart_drops_requests(lab: Lab) -> None:
    """The control: TERM and start again, as systemctl restart does, without depooling."""
    with wrk_load(lab.url + "/slow.php?ms=50", seconds=4) as results:
        for name in HOSTS:
            spec = lab.master(name).spec()
            pid = lab.pid(name)
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            assert procs.wait_until(lambda pid=pid: not procs.is_alive(pid), 10)
            local.start(spec)

    load = results[0]
    print(f"wrk during three plain restarts: {load.requests} requests, {load.failed} failed")
    assert load.requests > 100, load.output
    assert load.failed > 0, load.output
