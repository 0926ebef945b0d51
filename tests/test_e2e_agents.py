"""Two agents that both need a restart share one slot: HAProxy never has both out at once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from e2e_support import Lab, running_lab, skip_unless_poolcounter_port_free

from opcache_guard import procs
from opcache_guard.errors import LoadBalancerError
from opcache_guard.lb.base import LbState

HOSTS = ("app1", "app2")
DEADLINE = 40.0
SAMPLE_INTERVAL = 0.01
HOLD_MS = 4000


class Sampler(threading.Thread):
    """Read every server's HAProxy state about every 10 ms until stopped."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.samples: list[dict[str, LbState]] = []
        self.errors = 0
        self.stop = threading.Event()
        self.elapsed = 0.0

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            try:
                self.samples.append(self.lab.lb_states())
            except LoadBalancerError:
                self.errors += 1
            self.stop.wait(SAMPLE_INTERVAL)
        self.elapsed = time.monotonic() - started


def start_agent(lab: Lab, name: str) -> subprocess.Popen[bytes]:
    log = open(lab.directory / f"agent-{name}.log", "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "opcache_guard", "-v", "agent", "-c",
                             str(lab.host_config(name))], stdout=log, stderr=log)


def agent_log(lab: Lab, name: str) -> str:
    return (lab.directory / f"agent-{name}.log").read_text()


def restarted(lab: Lab, name: str, pid: int | None, start: int) -> bool:
    now = lab.pid(name)
    return (now not in (None, pid) and lab.opcache_start(name) > start
            and lab.lb_states()[name] == LbState.POOLED)


@pytest.mark.parametrize("slots", [
    "sqlite", "etcd", pytest.param("poolcounter", marks=pytest.mark.poolcounter)])
def test_two_agents_one_slot(slots: str) -> None:
    skip_unless_poolcounter_port_free(slots)
    with running_lab(pools=2, slots=slots, limit=1) as lab:
        pids = {name: lab.pid(name) for name in HOSTS}
        starts = {name: lab.opcache_start(name) for name in HOSTS}
        for name in HOSTS:
            lab.set_host_option(name, "jitter = 0.5", "jitter = 0.0")

        sampler = Sampler(lab)
        sampler.start()
        agents = [start_agent(lab, name) for name in HOSTS]
        started = procs.wait_until(lambda: all("no action on" in agent_log(lab, name)
                                               for name in HOSTS), 40)
        assert started, {name: agent_log(lab, name)[-2000:] for name in HOSTS}
        # Both agents now check every 2 s. A request held in flight for longer than that
        # keeps whichever takes the slot first draining while the other one requests it.
        for name in HOSTS:
            lab.hold_request(name, HOLD_MS)
            lab.reset_opcache(name)
            assert lab.check(name).returncode == 2
        try:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                if all(restarted(lab, name, pids[name], starts[name]) for name in HOSTS):
                    break
                time.sleep(0.2)
            # A few more samples after the second pool, so its return is seen too.
            time.sleep(0.2)
        finally:
            sampler.stop.set()
            sampler.join()
            for agent in agents:
                agent.terminate()
            for agent in agents:
                agent.wait(timeout=20)

        logs = [agent_log(lab, name) for name in HOSTS]
        print(f"{slots}: {len(sampler.samples)} HAProxy samples in {sampler.elapsed:.1f} s, "
              f"{sampler.errors} errors")
        for name in HOSTS:
            assert restarted(lab, name, pids[name], starts[name]), name
            check = lab.check(name)
            assert check.returncode == 0, check.stdout
        both_out = [sample for sample in sampler.samples
                    if all(sample[name] != LbState.POOLED for name in HOSTS)]
        assert both_out == []
        for name in HOSTS:
            assert any(sample[name] != LbState.POOLED for sample in sampler.samples), name
        assert len(sampler.samples) > 100
        waits = [line for log in logs for line in log.splitlines()
                 if "agent: waiting for a slot of group lab" in line]
        assert waits, logs
        # The one line that explains the wait must not claim a held slot is free.
        assert not any("held by nobody" in line for line in waits), waits
