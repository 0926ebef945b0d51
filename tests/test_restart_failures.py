import sqlite3

import pytest
from restart_support import lb_of, master_pid, open_host, write_host_config

from opcache_guard.errors import RestartError
from opcache_guard.fpm import local
from opcache_guard.lb.base import LbState
from opcache_guard.restart import (
    TRANSITIONS,
    Journal,
    SafeRestart,
    State,
    check_transition,
    repair,
    unresolved_runs,
)


@pytest.mark.parametrize("current, new", [
    (State.DONE, State.POOLING),
    (State.ACQUIRING, State.VERIFYING),
    (State.DRAINING, State.RESTARTING),
    (State.VERIFYING, State.ABORTING),
    (State.FAILED, State.DONE),
])
def test_transitions_reject_illegal_moves(current, new):
    with pytest.raises(RestartError, match=f"{current.name} -> {new.name}"):
        check_transition(current, new)


def test_transitions_reach_every_state():
    reached = {State.ACQUIRING}
    frontier = [State.ACQUIRING]
    while frontier:
        for new in TRANSITIONS[frontier.pop()]:
            if new not in reached:
                reached.add(new)
                frontier.append(new)
    assert reached == set(State)


def test_broken_config_fails_and_stays_depooled(fpm_master, fpm_dir):
    spec = fpm_master()
    host, backends = open_host(write_host_config(fpm_dir, spec))
    spec.fpm_conf.write_text("[global]\nthis is not a php-fpm configuration\n")

    outcome = SafeRestart(host, backends).run()

    assert outcome.state == State.FAILED
    assert "stays out of the load balancer" in outcome.message
    assert lb_of(backends).state() == LbState.DEPOOLED
    assert "pool" not in lb_of(backends).calls()
    assert [run.state for run in unresolved_runs(backends.store)] == [State.FAILED]
    assert backends.slots.holders("web") == []

    local.write_files(spec)
    assert repair(host, backends)[0].state == State.FAILED
    outcomes = repair(host, backends, pool_failed=True)

    assert [outcome.state for outcome in outcomes] == [State.DONE]
    assert lb_of(backends).state() == LbState.POOLED
    assert master_pid(spec) is not None
    assert unresolved_runs(backends.store) == []


def test_failing_health_script_fails(fpm_master, fpm_dir):
    spec = fpm_master()
    script = spec.docroot / "health.php"
    script.write_text("<?php http_response_code(503); echo 'down';\n")
    script.chmod(0o644)
    config = write_host_config(fpm_dir, spec, restart={"health_script": str(script),
                                                        "verify_timeout": 1})
    host, backends = open_host(config)

    outcome = SafeRestart(host, backends).run()

    assert outcome.state == State.FAILED
    assert "returned 503, expected 200" in outcome.message
    assert lb_of(backends).state() == LbState.DEPOOLED
    assert len(unresolved_runs(backends.store)) == 1


def test_drain_timeout_pools_back(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    host, backends = open_host(write_host_config(fpm_dir, spec,
                                                 restart={"drain_timeout": 0.3}))
    lb_of(backends).set(in_flight=3)

    outcome = SafeRestart(host, backends).run()

    assert outcome.state == State.ABORTED
    assert "load balancer reports 3 in flight" in outcome.message
    assert master_pid(spec) == old_pid
    assert lb_of(backends).state() == LbState.POOLED
    assert lb_of(backends).calls() == ["depool", "pool"]
    assert backends.slots.holders("web") == []
    assert unresolved_runs(backends.store) == []


def test_no_slot_changes_nothing(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    host, backends = open_host(write_host_config(fpm_dir, spec))
    other = backends.slots.acquire("web", "app2", "restart", 0)
    assert other is not None

    outcome = SafeRestart(host, backends, slot_timeout=0.2).run()

    assert outcome.state == State.SKIPPED
    assert "1/1 held by app2 (restart" in outcome.message
    assert master_pid(spec) == old_pid
    assert lb_of(backends).calls() == []
    other.release()


def test_depool_failure_aborts(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    host, backends = open_host(write_host_config(fpm_dir, spec))
    lb_of(backends).set(fail=["depool"])

    outcome = SafeRestart(host, backends).run()

    assert outcome.state == State.ABORTED
    assert master_pid(spec) == old_pid
    assert backends.slots.holders("web") == []


def test_unfinished_run_blocks_new_restart(fpm_master, fpm_dir):
    spec = fpm_master()
    host, backends = open_host(write_host_config(fpm_dir, spec))
    run = Journal(backends.store).create("app1", "web", "crashed", False)
    Journal(backends.store).record(run, State.DEPOOLING, "test", owner="1:0")

    with pytest.raises(RestartError, match="run 'opcache-guard repair'"):
        SafeRestart(host, backends).run()


def test_missing_fpm_program_aborts(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    command = [str(fpm_dir / "no-such-php-fpm"), *spec.command()[1:]]
    host, backends = open_host(write_host_config(fpm_dir, spec, fpm={"command": command}))

    outcome = SafeRestart(host, backends).run()

    assert outcome.state == State.ABORTED
    assert "not an executable file" in outcome.message
    assert master_pid(spec) == old_pid
    assert lb_of(backends).state() == LbState.POOLED
    assert backends.slots.holders("web") == []
    assert unresolved_runs(backends.store) == []


def test_lost_slot_aborts_before_restart(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    slots_db = fpm_dir / "slots.db"
    host, backends = open_host(write_host_config(
        fpm_dir, spec, slots={"backend": "sqlite", "path": str(slots_db)}))

    def lose_slot(state: State) -> None:
        # Another run freed the slot while this one drained, as an expired lease would.
        if state == State.DISABLING:
            with sqlite3.connect(slots_db) as conn:
                conn.execute("DELETE FROM slots")

    outcome = SafeRestart(host, backends, on_enter=lose_slot).run()

    assert outcome.state == State.ABORTED
    assert "lost" in outcome.message
    assert master_pid(spec) == old_pid
    assert lb_of(backends).state() == LbState.POOLED


def test_failed_run_keeps_its_slot(fpm_master, fpm_dir):
    spec = fpm_master()
    slots_db = fpm_dir / "slots.db"
    health = spec.docroot / "health.php"
    health.write_text("<?php http_response_code(503);")
    host, backends = open_host(write_host_config(
        fpm_dir, spec, slots={"backend": "sqlite", "path": str(slots_db)},
        restart={"health_script": str(health), "verify_timeout": 2}))

    outcome = SafeRestart(host, backends).run()

    assert outcome.state == State.FAILED
    assert [holder.host for holder in backends.slots.holders("web")] == ["app1"]
    assert backends.slots.acquire("web", "app2", "test", 0) is None
