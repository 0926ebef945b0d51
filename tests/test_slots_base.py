import time

import pytest

from opcache_guard.errors import ConfigError
from opcache_guard.slots.base import parse_groups, poll, split_token


def test_poll_tries_once_with_zero_timeout():
    calls = []
    assert poll(lambda: calls.append(1), 0) is None
    assert calls == [1]


def test_poll_returns_first_result_before_deadline():
    started = time.monotonic()
    results = iter([None, None, "slot"])
    assert poll(lambda: next(results), 5) == "slot"
    assert time.monotonic() - started < 1


def test_split_token_round_trip():
    assert split_token("web/app1/host:12:ab") == ("web", "app1", "host:12:ab")
    with pytest.raises(ConfigError, match="GROUP/HOST/HOLDER"):
        split_token("web/app1")


def test_group_names_are_checked():
    with pytest.raises(ConfigError, match="group name is invalid"):
        parse_groups({"groups": {"web site": {"limit": 1}}})
