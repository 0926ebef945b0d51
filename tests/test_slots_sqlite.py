import time
from pathlib import Path

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
from opcache_guard.slots.sqlite import SqliteBackend


def section(path: Path, **groups: dict[str, object]) -> dict[str, object]:
    return {"backend": "sqlite", "path": str(path / "slots.db"),
            "groups": groups or {"web": {"limit": 1}}}


@pytest.mark.parametrize("limit", [1, 2])
def test_sqlite_limit_holds_under_contention(tmp_path, limit):
    config = section(tmp_path, web={"limit": limit})
    counter = contend(config, "web", tmp_path / "counter.json")
    assert counter["total"] == 24
    assert counter["max"] <= limit
    assert counter["max"] == limit


def test_sqlite_percentage_and_min_pooled(tmp_path):
    check_percentage_limits(create(section(tmp_path, **PERCENTAGE_GROUPS)))


def test_sqlite_waits_at_most_timeout(tmp_path):
    check_bounded_wait(create(section(tmp_path)))


def test_sqlite_retake_returns_held_slot(tmp_path):
    backend = create(section(tmp_path, web={"limit": 2}))
    first = backend.acquire("web", "a", "first", 0)
    again = backend.acquire("web", "a", "again", 0)
    assert first is not None and again is not None
    assert again.token == first.token
    assert len(backend.holders("web")) == 1
    other = create(section(tmp_path, web={"limit": 2}))
    assert other.acquire("web", "a", "another holder", 0) is None
    assert other.acquire("web", "a", "same holder", 0, holder=first.holder) is not None


def test_sqlite_crashed_holder_kept_until_own_repair(tmp_path):
    config = section(tmp_path)
    holder = start_holder(config, "web", "crashed")
    backend = create(config)
    assert backend.acquire("web", "b", "test", 0) is None
    kill(holder)
    # The crashed holder's host may still be out of service: other hosts must wait.
    assert backend.acquire("web", "b", "test", 0) is None
    assert [h.host for h in backend.holders("web")] == ["crashed"]
    assert backend.release_stale("web", "crashed")
    assert backend.acquire("web", "b", "test", 0) is not None
    assert [h.host for h in backend.holders("web")] == ["b"]


def test_sqlite_crashed_holder_freed_when_lease_ends(tmp_path):
    config = section(tmp_path)
    config["ttl"] = 1
    holder = start_holder(config, "web", "crashed")
    kill(holder)
    backend = create(config)
    assert backend.acquire("web", "b", "test", 3) is not None


def test_sqlite_pinned_slot_outlives_holder(tmp_path):
    config = section(tmp_path)
    backend = create(config)
    slot = backend.acquire("web", "failed", "restart", 0)
    assert slot is not None
    assert slot.pin()
    other = create(config)
    assert other.acquire("web", "b", "test", 0) is None
    assert [h.host for h in other.holders("web")] == ["failed"]
    assert other.release_stale("web", "failed")
    assert other.acquire("web", "b", "test", 0) is not None


def test_sqlite_release_stale_frees_dead_holder_only(tmp_path):
    config = section(tmp_path, web={"limit": 2})
    holder = start_holder(config, "web", "crashed")
    backend = create(config)
    assert backend.acquire("web", "alive", "test", 0) is not None
    assert not backend.release_stale("web", "alive")
    assert not backend.release_stale("web", "crashed")
    kill(holder)
    assert backend.release_stale("web", "crashed")
    assert [h.host for h in backend.holders("web")] == ["alive"]


def test_sqlite_release_idempotent(tmp_path):
    backend = create(section(tmp_path))
    slot = backend.acquire("web", "a", "test", 0)
    assert slot is not None
    slot.release()
    slot.release()
    assert backend.holders("web") == []


def test_sqlite_lease_expiry_and_refresh(tmp_path):
    config = section(tmp_path) | {"ttl": 1}
    holder_backend = create(config)
    slot = holder_backend.acquire("web", "a", "test", 0)
    assert slot is not None
    time.sleep(0.6)
    slot.refresh()
    time.sleep(0.6)
    other = create(config)
    assert other.acquire("web", "b", "test", 0) is None
    time.sleep(0.5)
    assert other.acquire("web", "b", "test", 0) is not None
    with pytest.raises(SlotError, match="lost"):
        slot.refresh()


def test_sqlite_dry_run_takes_nothing(tmp_path):
    backend = create(section(tmp_path), dry_run=True)
    slot = backend.acquire("web", "a", "test", 0)
    assert slot is not None
    assert backend.holders("web") == []


def test_sqlite_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'pth'"):
        create({"backend": "sqlite", "pth": "x"})
    with pytest.raises(ConfigError, match="not a known slot backend"):
        create({"backend": "zookeeper"})
    backend = create(section(tmp_path))
    with pytest.raises(ConfigError, match="not configured"):
        backend.acquire("db", "a", "test", 0)
    with pytest.raises(ConfigError, match="host name"):
        backend.acquire("web", "bad host", "test", 0)
    assert isinstance(backend, SqliteBackend)
