"""SIGKILL in each state of a safe restart, then repair, with real HAProxy and slot servers."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest
from e2e_support import Lab, cli, running_lab, skip_unless_poolcounter_port_free
from restart_support import run_child

from opcache_guard.lb.base import LbState
from opcache_guard.restart import State, check_transition


def happy_path() -> list[State]:
    """Return the states a restart that goes well passes through, DONE excluded."""
    path = [State.ACQUIRING, State.DEPOOLING, State.DRAINING, State.DISABLING,
            State.RESTARTING, State.VERIFYING, State.POOLING, State.RELEASING]
    for current, following in zip(path, [*path[1:], State.DONE], strict=True):
        check_transition(current, following)
    return path


PATH = [state.name for state in happy_path()]
HOST = "app1"


@pytest.fixture(scope="module")
def sqlite_lab() -> Iterator[Lab]:
    with running_lab(pools=2) as lab:
        yield lab


@pytest.fixture(scope="module", params=[
    "etcd", pytest.param("poolcounter", marks=pytest.mark.poolcounter)])
def coordinated_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    skip_unless_poolcounter_port_free(request.param)
    with running_lab(pools=2, slots=request.param) as lab:
        if request.param == "etcd":
            # etcd's minimum lease, so a killed holder's slot expires soon.
            lab.set_host_option(HOST, "ttl = 10", "ttl = 2")
        yield lab


def kill_and_repair(lab: Lab, state: str, after_kill: Callable[[], None]) -> None:
    """Kill a restart on entering state, repair it, and check the host is back and healthy.

    after_kill checks the slot the killed run left behind, before the repair.
    """
    config = str(lab.host_config(HOST))
    start_before = lab.opcache_start(HOST)

    assert run_child(lab.host_config(HOST), state) == -signal.SIGKILL
    after_kill()

    repaired = cli("repair", "-c", config)
    expected = "ABORTED" if state == "ACQUIRING" else "DONE"
    assert f": {expected}:" in repaired.stdout, repaired.stdout + repaired.stderr
    assert repaired.returncode == (1 if state == "ACQUIRING" else 0), repaired.stdout
    assert lab.lb_states()[HOST] == LbState.POOLED
    assert lab.stat_status(HOST).startswith("UP")
    check = lab.check(HOST)
    assert check.returncode == 0, check.stdout
    if state != "ACQUIRING":
        assert lab.opcache_start(HOST) > start_before
    assert cli("repair", "-c", config).stdout.strip() == "nothing to do"


def held_slots(state: str) -> int:
    """Return how many slots a run killed on entering state holds: none before it took one."""
    return 0 if state == "ACQUIRING" else 1


def slot_free_at_once(lab: Lab) -> None:
    """Check that a fresh process takes the group's only slot without waiting."""
    slot = lab.slots(HOST).acquire("lab", "app9", "test: is the slot free", timeout=0)
    assert slot is not None
    slot.release()


@pytest.mark.parametrize("state", PATH)
def test_kill_then_repair_sqlite(sqlite_lab: Lab, state: str) -> None:
    def after_kill() -> None:
        assert len(sqlite_lab.slots(HOST).holders("lab")) == held_slots(state)

    kill_and_repair(sqlite_lab, state, after_kill)

    assert sqlite_lab.slots(HOST).holders("lab") == []


@pytest.mark.parametrize("state", ["DRAINING", "RESTARTING"])
def test_kill_then_repair_coordinated(coordinated_lab: Lab, state: str) -> None:
    lab = coordinated_lab
    if lab.slots(HOST).name == "etcd":
        def key_left() -> None:
            # The killed run's key stays until its lease expires; repair waits for that.
            assert len(lab.etcd_slot_keys(HOST)) == held_slots(state)

        kill_and_repair(lab, state, key_left)
        assert lab.etcd_slot_keys(HOST) == []
    else:
        # PoolCounter frees the slot of a killed holder when its connection closes.
        kill_and_repair(lab, state, lambda: slot_free_at_once(lab))
        slot_free_at_once(lab)
