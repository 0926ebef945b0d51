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
from opcache_guard.slots import create
from opcache_guard.slots.etcd import EtcdSlot


def section(etcd_server, prefix="/test", ttl=10, **groups):
    return {"backend": "etcd", "endpoints": [etcd_server.url], "prefix": prefix, "ttl": ttl,
            "timeout": 5, "groups": groups or {"web": {"limit": 1}}}


@pytest.mark.parametrize("limit", [1, 2])
def test_etcd_limit_holds_under_contention(etcd_server, tmp_path, limit):
    config = section(etcd_server, prefix=f"/contention{limit}", web={"limit": limit})
    counter = contend(config, "web", tmp_path / "counter.json")
    assert counter["total"] == 24
    assert counter["max"] <= limit
    assert counter["max"] == limit


def test_etcd_percentage_and_min_pooled(etcd_server):
    check_percentage_limits(create(section(etcd_server, **PERCENTAGE_GROUPS)))


def test_etcd_waits_at_most_timeout(etcd_server):
    check_bounded_wait(create(section(etcd_server)))


def test_etcd_retake_returns_held_slot(etcd_server):
    backend = create(section(etcd_server, web={"limit": 2}))
    first = backend.acquire("web", "a", "first", 0)
    again = backend.acquire("web", "a", "again", 0)
    assert isinstance(first, EtcdSlot) and isinstance(again, EtcdSlot)
    assert again.lease_id == first.lease_id
    assert again.token == first.token
    assert len(backend.holders("web")) == 1
    other = create(section(etcd_server, web={"limit": 2}))
    assert other.acquire("web", "a", "another holder", 0) is None
    assert other.acquire("web", "a", "same holder", 0, holder=first.holder) is not None


def test_etcd_crashed_holder_expires_with_lease(etcd_server):
    config = section(etcd_server, ttl=2)
    holder = start_holder(config, "web", "crashed")
    kill(holder)
    backend = create(config)
    assert backend.acquire("web", "b", "test", 0) is None
    assert [h.host for h in backend.holders("web")] == ["crashed"]
    started = time.monotonic()
    slot = backend.acquire("web", "b", "test", 6)
    assert slot is not None
    assert time.monotonic() - started < 4.5
    assert [h.host for h in backend.holders("web")] == ["b"]


def test_etcd_refresh_keeps_slot_past_ttl(etcd_server):
    backend = create(section(etcd_server, ttl=2))
    slot = backend.acquire("web", "a", "test", 0)
    assert slot is not None
    for _ in range(3):
        time.sleep(1.0)
        slot.refresh()
    assert [h.host for h in backend.holders("web")] == ["a"]
    slot.release()
    with pytest.raises(SlotError, match="lost"):
        slot.refresh()


def test_etcd_release_idempotent(etcd_server):
    backend = create(section(etcd_server))
    slot = backend.acquire("web", "a", "test", 0)
    assert slot is not None
    slot.release()
    slot.release()
    assert backend.holders("web") == []


def test_etcd_dry_run_takes_nothing(etcd_server):
    backend = create(section(etcd_server), dry_run=True)
    assert backend.acquire("web", "a", "test", 0) is not None
    assert backend.holders("web") == []


def test_etcd_config_errors(etcd_server):
    with pytest.raises(ConfigError, match="minimum lease of 2 s"):
        create(section(etcd_server, ttl=1))
    with pytest.raises(ConfigError, match="endpoint"):
        create({"backend": "etcd", "endpoints": "127.0.0.1:2379"})
    with pytest.raises(ConfigError, match="unknown key 'path'"):
        create({"backend": "etcd", "path": "/tmp/x"})


def test_etcd_unreachable_raises_slot_error(etcd_server):
    backend = create({"backend": "etcd", "endpoints": ["http://127.0.0.1:9"], "timeout": 1,
                      "groups": {"web": {"limit": 1}}})
    with pytest.raises(SlotError, match="no etcd endpoint responded"):
        backend.acquire("web", "a", "test", 0)


def test_etcd_fails_over_to_next_endpoint(etcd_server):
    config = section(etcd_server)
    config["endpoints"] = ["http://127.0.0.1:9", etcd_server.url]
    backend = create(config)
    assert backend.acquire("web", "a", "test", 0) is not None


def test_etcd_txn_rejects_key_added_after_read(etcd_server):
    config = section(etcd_server, prefix="/race")
    slow = create(config)
    fast = create(config)
    read_group = slow._read_group
    fast_slots = []

    def read_then_let_fast_take(group):
        result = read_group(group)
        if not fast_slots:
            fast_slots.append(fast.acquire(group, "fast", "test", 0))
        return result

    slow._read_group = read_then_let_fast_take
    assert slow.acquire("web", "slow", "test", 0) is None
    assert fast_slots[0] is not None
    assert [h.host for h in fast.holders("web")] == ["fast"]


def test_etcd_pinned_slot_outlives_lease(etcd_server):
    config = {"backend": "etcd", "endpoints": [etcd_server.url], "ttl": 2,
              "groups": {"web": {"limit": 1}}}
    backend = create(config)
    slot = backend.acquire("web", "failed", "restart", 0)
    assert slot is not None
    assert slot.pin()
    time.sleep(3)
    other = create(config)
    assert other.acquire("web", "b", "test", 0) is None
    assert [h.host for h in other.holders("web")] == ["failed"]
    assert other.release_stale("web", "failed")
    assert other.acquire("web", "b", "test", 0) is not None
