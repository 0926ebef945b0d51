"""PoolCounter slot tests. poolcounterd always binds port 7531, so these never run in parallel."""

import threading
import time

import pytest
from slots_helpers import (
    PERCENTAGE_GROUPS,
    check_bounded_wait,
    check_percentage_limits,
    contend,
    kill,
    start_holder,
)

from opcache_guard.errors import ConfigError, SlotError
from opcache_guard.servers.poolcounter import PORT, PoolCounterServer, port_taken
from opcache_guard.slots import create
from opcache_guard.slots.render import status_dict

pytestmark = pytest.mark.poolcounter


@pytest.fixture(scope="module")
def poolcounter(tmp_path_factory):
    if port_taken():
        pytest.skip(f"port {PORT} is already taken by another program, and poolcounterd "
                    "cannot listen anywhere else")
    server = PoolCounterServer(tmp_path_factory.mktemp("poolcounter")).start()
    yield server
    server.stop()


def section(server, **groups):
    return {"backend": "poolcounter", "address": server.address, "timeout": 2,
            "groups": groups or {"web": {"limit": 1}}}


@pytest.mark.parametrize("limit", [1, 2])
def test_poolcounter_limit_holds_under_contention(poolcounter, tmp_path, limit):
    config = section(poolcounter, **{f"web{limit}": {"limit": limit}})
    counter = contend(config, f"web{limit}", tmp_path / "counter.json")
    assert counter["total"] == 24
    assert counter["max"] <= limit
    assert counter["max"] == limit


def test_poolcounter_percentage_and_min_pooled(poolcounter):
    backend = create(section(poolcounter, closed={"limit": 1, "size": 2, "min_pooled": 2},
                             **PERCENTAGE_GROUPS))
    try:
        check_percentage_limits(backend)
        assert backend.acquire("closed", "a", "test", 0) is None
    finally:
        backend.close()


def test_poolcounter_waits_at_most_timeout(poolcounter):
    backend = create(section(poolcounter))
    try:
        check_bounded_wait(backend)
    finally:
        backend.close()


def test_poolcounter_waiter_gets_released_slot(poolcounter):
    holder = create(section(poolcounter))
    waiter = create(section(poolcounter))
    try:
        slot = holder.acquire("web", "a", "test", 0)
        assert slot is not None
        threading.Timer(0.3, slot.release).start()
        started = time.monotonic()
        assert waiter.acquire("web", "b", "test", 3) is not None
        assert 0.2 < time.monotonic() - started < 1.0
    finally:
        holder.close()
        waiter.close()


def test_poolcounter_retake_returns_held_slot(poolcounter):
    backend = create(section(poolcounter, web={"limit": 2}))
    other = create(section(poolcounter, web={"limit": 2}))
    try:
        first = backend.acquire("web", "a", "first", 0)
        assert first is not None
        assert backend.acquire("web", "a", "again", 0) is first
        assert backend.acquire("web", "a", "another holder", 0, holder="x:1:2") is None
        assert len(backend.holders("web")) == 1
        assert other.acquire("web", "a", "same host elsewhere", 0) is None
        assert other.acquire("web", "b", "second slot", 0) is not None
    finally:
        backend.close()
        other.close()


def test_poolcounter_crashed_holder_freed_at_once(poolcounter):
    config = section(poolcounter)
    holder = start_holder(config, "web", "crashed")
    backend = create(config)
    try:
        assert backend.acquire("web", "b", "test", 0) is None
        kill(holder)
        started = time.monotonic()
        assert backend.acquire("web", "b", "test", 1.0) is not None
        assert time.monotonic() - started < 0.5
    finally:
        backend.close()


def test_poolcounter_release_idempotent(poolcounter):
    backend = create(section(poolcounter))
    try:
        slot = backend.acquire("web", "a", "test", 0)
        assert slot is not None
        slot.release()
        slot.release()
        assert backend.holders("web") == []
        assert backend.acquire("web", "b", "test", 0) is not None
    finally:
        backend.close()


def test_poolcounter_status_marks_holders_partial(poolcounter):
    backend = create(section(poolcounter))
    try:
        assert backend.acquire("web", "a", "test", 0) is not None
        groups = status_dict(backend.status(), backend.name)["groups"]
        assert groups[0]["holders_complete"] is False
        assert [h["host"] for h in groups[0]["holders"]] == ["a"]
    finally:
        backend.close()


def test_poolcounter_unreachable_and_bad_config(poolcounter):
    backend = create({"backend": "poolcounter", "address": "127.0.0.1:9", "timeout": 1,
                      "groups": {"web": {"limit": 1}}})
    with pytest.raises(SlotError, match="cannot connect to PoolCounter"):
        backend.acquire("web", "a", "test", 0)
    with pytest.raises(ConfigError, match="address"):
        create({"backend": "poolcounter", "address": "localhost"})
    with pytest.raises(ConfigError, match="maxqueue"):
        create({"backend": "poolcounter", "maxqueue": 0})
