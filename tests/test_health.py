"""The health policy, as a table of samples and expected verdicts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from opcache_guard.errors import ConfigError
from opcache_guard.health import Status, Thresholds, judge, worst
from opcache_guard.sample import FpmState, OpcacheState, Sample

MB = 1024 * 1024


def make_sample(**opcache: Any) -> Sample:
    """A healthy 128 MB cache, with the given OPcache fields changed."""
    fpm_fields = {k: opcache.pop(k) for k in list(opcache) if k == "listen_queue"}
    state = OpcacheState(
        enabled=True, cache_full=False, restart_pending=False, restart_in_progress=False,
        memory_size=128 * MB, used_memory=60 * MB, free_memory=68 * MB, wasted_memory=0,
        current_wasted_percentage=0.0, max_wasted_percentage=5.0, num_cached_scripts=1000,
        num_cached_keys=1200, max_cached_keys=16229, max_accelerated_files=10000,
        interned_strings_buffer_size=8 * MB, interned_strings_used_memory=2 * MB,
        interned_strings_free_memory=6 * MB, number_of_strings=40000, hits=10**6, misses=1000,
        hit_rate=99.9, start_time=1_700_000_000, last_restart_time=0, oom_restarts=0,
        hash_restarts=0, manual_restarts=0, validate_timestamps=True, revalidate_freq=2)
    state = dataclasses.replace(state, **opcache)
    fpm = FpmState(pool="www", process_manager="static", start_time=1_700_000_000,
                   accepted_conn=100, listen_queue=fpm_fields.get("listen_queue", 0),
                   max_listen_queue=0, listen_queue_len=511, idle_processes=3,
                   active_processes=1, total_processes=4, max_active_processes=4,
                   max_children_reached=0, slow_requests=0)
    return Sample(pool="www", address="127.0.0.1:9000", time=1_700_000_100.0, duration=0.001,
                  php_version="8.2.0", opcache=state, fpm=fpm)


def full(free_mb: float, wasted_percent: float, **extra: Any) -> dict[str, Any]:
    """Fields of a cache with free_mb free and wasted_percent wasted."""
    return {"free_memory": int(free_mb * MB), "used_memory": int((128 - free_mb) * MB),
            "wasted_memory": int(128 * MB * wasted_percent / 100),
            "current_wasted_percentage": wasted_percent, **extra}


CASES = [
    # name, opcache fields, thresholds, expected status, expected codes, restart due
    ("healthy", {}, {}, Status.OK, set(), False),
    ("free memory low", full(15, 0.5), {}, Status.WARNING, {"free_memory"}, False),
    ("free memory very low", full(4, 0.5), {}, Status.CRITICAL, {"free_memory"}, False),
    ("free memory absolute", full(30, 0.5), {"free_warning_mb": 32}, Status.WARNING,
     {"free_memory"}, False),
    ("waste half of limit", full(60, 2.6), {}, Status.WARNING, {"wasted_memory"}, False),
    ("waste near limit, room left", full(60, 4.5), {}, Status.WARNING, {"wasted_memory"}, False),
    ("waste near limit, nearly full", full(10, 4.5), {}, Status.CRITICAL,
     {"wasted_memory", "free_memory"}, True),
    ("waste near limit, cache_full flag", full(60, 4.5, cache_full=True), {}, Status.CRITICAL,
     {"wasted_memory", "cache_full"}, True),
    ("waste with a 10% limit", full(10, 4.5, max_wasted_percentage=10.0), {}, Status.WARNING,
     {"free_memory"}, False),
    ("keys high", {"num_cached_keys": 13500}, {}, Status.WARNING, {"cached_keys"}, False),
    ("keys nearly full", {"num_cached_keys": 15800}, {}, Status.CRITICAL, {"cached_keys"}, True),
    ("interned strings low", {"interned_strings_free_memory": MB // 2}, {}, Status.WARNING,
     {"interned_strings"}, False),
    ("interned strings empty, critical enabled", {"interned_strings_free_memory": 0},
     {"interned_free_critical_percent": 2.0}, Status.CRITICAL, {"interned_strings"}, False),
    ("restart pending", {"restart_pending": True}, {}, Status.CRITICAL, {"restart_pending"}, True),
    ("restart in progress", {"restart_in_progress": True}, {}, Status.CRITICAL,
     {"restart_pending"}, True),
    ("oom restart earlier", {"oom_restarts": 1, "last_restart_time": 1_700_000_050}, {},
     Status.CRITICAL, {"restarted"}, True),
    ("hash restart earlier", {"hash_restarts": 2}, {}, Status.CRITICAL, {"restarted"}, True),
    ("manual restart counted", {"manual_restarts": 1}, {}, Status.CRITICAL, {"restarted"}, True),
    ("manual restart ignored", {"manual_restarts": 1}, {"count_manual_restarts": False},
     Status.OK, set(), False),
    ("listen queue", {"listen_queue": 3}, {}, Status.WARNING, {"listen_queue"}, False),
    ("threshold disabled", full(4, 0.5), {"free_warning_percent": 0, "free_critical_percent": 0},
     Status.OK, set(), False),
]


@pytest.mark.parametrize("name, fields, limits, status, codes, restart_due", CASES,
                         ids=[case[0] for case in CASES])
def test_policy_table(name: str, fields: dict[str, Any], limits: dict[str, Any], status: Status,
                      codes: set[str], restart_due: bool) -> None:
    verdict = judge(make_sample(**fields), None, Thresholds(**limits))
    assert verdict.status == status
    assert {finding.code for finding in verdict.findings} == codes
    assert verdict.restart_due == restart_due


@pytest.mark.parametrize("before, after, detail", [
    ({}, {"oom_restarts": 1}, "oom_restarts 1"),
    ({"oom_restarts": 1}, {"oom_restarts": 1, "hash_restarts": 1}, "hash_restarts 1"),
    ({}, {"last_restart_time": 1_700_000_050}, "last_restart_time moved"),
])
def test_restart_since_previous_sample(before: dict[str, Any], after: dict[str, Any],
                                       detail: str) -> None:
    verdict = judge(make_sample(**after), make_sample(**before), Thresholds())
    assert verdict.status == Status.CRITICAL
    assert verdict.restart_due
    assert verdict.findings[0].code == "restarted_since_last_sample"
    assert detail in verdict.findings[0].message


def test_previous_sample_of_other_master_ignored() -> None:
    previous = make_sample(oom_restarts=3, start_time=1_600_000_000)
    verdict = judge(make_sample(), previous, Thresholds())
    assert verdict.status == Status.OK


def test_self_restart_stays_critical_after_first_report() -> None:
    first = make_sample(oom_restarts=1, last_restart_time=1_700_000_050)
    verdict = judge(make_sample(oom_restarts=1, last_restart_time=1_700_000_050), first,
                    Thresholds())
    assert verdict.status == Status.CRITICAL
    assert [finding.code for finding in verdict.findings] == ["restarted"]


def test_reasons_name_values() -> None:
    verdict = judge(make_sample(**full(10, 4.5)), None, Thresholds())
    assert "4.5%" in verdict.summary
    assert "max_wasted_percentage 5%" in verdict.summary


def test_worst_ranks_critical_over_unknown() -> None:
    assert worst([Status.OK, Status.WARNING, Status.UNKNOWN]) == Status.UNKNOWN
    assert worst([Status.UNKNOWN, Status.CRITICAL]) == Status.CRITICAL
    assert worst([]) == Status.OK


@pytest.mark.parametrize("limits", [
    {"free_warning_percent": 5, "free_critical_percent": 15},
    {"keys_warning_percent": 99, "keys_critical_percent": 90},
    {"waste_warning_ratio": -1},
])
def test_thresholds_validate(limits: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Thresholds(**limits).validate()
