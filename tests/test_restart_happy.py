from restart_support import lb_of, master_pid, open_host, probe_start_time, write_host_config

from opcache_guard.lb.base import LbState
from opcache_guard.restart import Journal, SafeRestart, State, unresolved_runs


def test_restart_happy_path(fpm_master, fpm_dir, probe_settings):
    spec = fpm_master()
    before = probe_start_time(probe_settings, spec)
    old_pid = master_pid(spec)
    host, backends = open_host(write_host_config(fpm_dir, spec))

    outcome = SafeRestart(host, backends, reason="test").run()

    assert outcome.state == State.DONE
    assert master_pid(spec) not in (None, old_pid)
    after = probe_start_time(probe_settings, spec)
    assert after > before
    assert lb_of(backends).state() == LbState.POOLED
    assert lb_of(backends).calls() == ["depool", "disable", "pool"]
    assert backends.slots.holders("web") == []
    assert unresolved_runs(backends.store) == []
    states = [new for _, _, new, _ in Journal(backends.store).transitions(outcome.run_id)]
    assert states == ["acquiring", "depooling", "draining", "disabling", "restarting",
                      "verifying", "pooling", "releasing", "done"]


def test_restart_leaves_depooled_host_out(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    host, backends = open_host(write_host_config(fpm_dir, spec))
    lb_of(backends).set(state=LbState.DEPOOLED)

    outcome = SafeRestart(host, backends).run()

    assert outcome.state == State.DONE
    assert master_pid(spec) != old_pid
    assert lb_of(backends).state() == LbState.DEPOOLED
    assert lb_of(backends).calls() == []
    assert Journal(backends.store).get(outcome.run_id).was_pooled_before is False


def test_restart_forced_keeps_pooled(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    host, backends = open_host(write_host_config(fpm_dir, spec))

    outcome = SafeRestart(host, backends, force=True).run()

    assert outcome.state == State.DONE
    assert master_pid(spec) != old_pid
    assert lb_of(backends).calls() == ["pool"]
    assert lb_of(backends).state() == LbState.POOLED


def test_restart_dry_run_changes_nothing(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    host, backends = open_host(write_host_config(fpm_dir, spec), dry_run=True)

    outcome = SafeRestart(host, backends, dry_run=True).run()

    assert outcome.state == State.DONE
    assert outcome.run_id == 0
    assert master_pid(spec) == old_pid
    assert lb_of(backends).calls() == []
    assert lb_of(backends).state() == LbState.POOLED
    assert Journal(backends.store).runs() == []
    assert backends.slots.holders("web") == []
