from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from restart_support import fill_keys, lb_of, master_pid, open_host, write_host_config

from opcache_guard.agent import Agent, agent_collector, agent_state
from opcache_guard.cli import main
from opcache_guard.fpm.local import OpcacheSettings
from opcache_guard.lb.base import LbState
from opcache_guard.restart import Journal, State

SMALL = OpcacheSettings(max_accelerated_files=200, file_update_protection=0)


def test_agent_once_healthy_does_nothing(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    host, backends = open_host(write_host_config(fpm_dir, spec))

    decision = Agent(host, backends).cycle()

    assert decision.action == "none"
    assert decision.message == "no action on app1: 1 pools healthy"
    assert master_pid(spec) == old_pid
    assert lb_of(backends).calls() == []
    assert agent_state(backends.store)[0]["cycles"] == 1


def test_agent_once_full_cache_restarts(fpm_master, fpm_dir):
    spec = fpm_master(opcache=SMALL)
    fill_keys(spec, 230)
    old_pid = master_pid(spec)
    host, backends = open_host(write_host_config(fpm_dir, spec))

    decision = Agent(host, backends).cycle()

    assert decision.action == "restart", decision.message
    assert decision.message.startswith(f"restarted app1/{spec.name}: {spec.name}: cached keys")
    assert master_pid(spec) not in (None, old_pid)
    assert lb_of(backends).state() == LbState.POOLED
    assert [run.state for run in Journal(backends.store).runs()] == [State.DONE]
    assert Agent(host, backends).cycle().action == "none"
    state = agent_state(backends.store)[0]
    assert state["restarts_done"] == 1
    assert state["cycles"] == 2


def test_agent_waits_for_slot(fpm_master, fpm_dir):
    spec = fpm_master(opcache=SMALL)
    fill_keys(spec, 230)
    host, backends = open_host(write_host_config(fpm_dir, spec))
    other = backends.slots.acquire("web", "app2", "deploy", 0)

    decision = Agent(host, backends).cycle()

    assert decision.action == "wait"
    assert "waiting for a slot of group web: 1/1 held by app2 (deploy" in decision.message
    registry = CollectorRegistry()
    registry.register(agent_collector(backends.store))
    text = generate_latest(registry).decode()
    assert 'opcache_guard_agent_slot_waits_total{host="app1"} 1.0' in text
    assert 'opcache_guard_agent_last_action{action="wait",host="app1"} 1.0' in text
    other.release()


def test_agent_holds_failed_host(fpm_master, fpm_dir):
    spec = fpm_master()
    host, backends = open_host(write_host_config(fpm_dir, spec))
    journal = Journal(backends.store)
    run = journal.create("app1", "web", "earlier", False)
    journal.record(run, State.FAILED, "test", error="verification failed")

    decision = Agent(host, backends).cycle()

    assert decision.action == "hold"
    assert "is FAILED: verification failed" in decision.message


def test_cli_agent_once_and_restart_dry_run(fpm_master, fpm_dir):
    spec = fpm_master()
    old_pid = master_pid(spec)
    config = str(write_host_config(fpm_dir, spec))
    runner = CliRunner()

    once = runner.invoke(main, ["agent", "-c", config, "--once"])
    dry = runner.invoke(main, ["restart", "-c", config, "--dry-run"])

    assert once.exit_code == 0, once.output
    assert "no action on app1" in once.output
    assert dry.exit_code == 0, dry.output
    assert "dry run: DONE" in dry.output
    assert master_pid(spec) == old_pid


def test_cli_restart_and_pool(fpm_master, fpm_dir):
    spec = fpm_master()
    config = write_host_config(fpm_dir, spec)
    runner = CliRunner()

    restarted = runner.invoke(main, ["restart", "-c", str(config), "--reason", "cli test"])
    spec.fpm_conf.write_text("[global]\nbroken\n")
    failed = runner.invoke(main, ["restart", "-c", str(config)])
    refused = runner.invoke(main, ["pool", "-c", str(config)])

    assert restarted.exit_code == 0, restarted.output
    assert failed.exit_code == 2
    assert "FAILED" in failed.output
    assert refused.exit_code == 2
    assert "do not answer their ping" in refused.output


def test_cli_rejects_unknown_key(fpm_master, fpm_dir):
    spec = fpm_master()
    config = write_host_config(fpm_dir, spec, restart={"drain_timeot": 3})

    result = CliRunner().invoke(main, ["restart", "-c", str(config)])

    assert result.exit_code == 2
    assert "unknown key 'drain_timeot' in [restart]" in result.output
    assert "drain_timeout" in result.output
