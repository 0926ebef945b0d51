import signal

import pytest
from conftest import pool_of
from restart_support import (
    lb_of,
    master_pid,
    open_host,
    probe_start_time,
    run_child,
    write_host_config,
)

from opcache_guard.lb.base import LbState
from opcache_guard.probe import Prober
from opcache_guard.restart import Journal, State, repair, unresolved_runs

KILL_STATES = ["ACQUIRING", "DEPOOLING", "DRAINING", "DISABLING", "RESTARTING", "VERIFYING",
               "POOLING", "RELEASING"]


@pytest.mark.parametrize("state", KILL_STATES)
def test_repair_after_kill(state, fpm_master, fpm_dir, probe_settings):
    spec = fpm_master()
    start_before = probe_start_time(probe_settings, spec)
    config = write_host_config(fpm_dir, spec)

    assert run_child(config, state) == -signal.SIGKILL
    host, backends = open_host(config)
    runs = unresolved_runs(backends.store)
    assert [run.state.name for run in runs] == [state]

    outcomes = repair(host, backends)

    expected = State.ABORTED if state == "ACQUIRING" else State.DONE
    assert [outcome.state for outcome in outcomes] == [expected]
    assert unresolved_runs(backends.store) == []
    assert lb_of(backends).state() == LbState.POOLED
    assert backends.slots.holders("web") == []
    assert master_pid(spec) is not None
    assert Prober(probe_settings).ping(pool_of(spec))
    if state not in ("ACQUIRING",):
        start_after = probe_start_time(probe_settings, spec)
        assert start_after > start_before
    transitions = Journal(backends.store).transitions(runs[0].id)
    assert any("repair took over" in note for *_, note in transitions) or state == "ACQUIRING"
