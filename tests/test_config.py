"""Configuration validation: wrong types, out-of-range values and unusable paths."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from opcache_guard.config import load_config, parse_config
from opcache_guard.errors import ConfigError
from opcache_guard.fastcgi import parse_address
from opcache_guard.health import Thresholds
from opcache_guard.slots.base import parse_groups

POOL = '[pools.a]\naddress = "127.0.0.1:9000"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "guard.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    ("probe = 5\n" + POOL, "probe = 5 must be a table"),
    ('thresholds = "x"\n' + POOL, "thresholds = 'x' must be a table"),
    ('[thresholds]\nthresholds = "x"\n' + POOL, "unknown key 'thresholds' in [thresholds]"),
    ("slots = 5\n" + POOL, "slots = 5 must be a table"),
    ("lb = 5\n" + POOL, "lb = 5 must be a table"),
    ("pools = 5\n", "pools = 5 must be a table"),
    ("[exporter]\nx = 1\n" + POOL, "unknown key 'exporter' in the top level"),
    ("[lab]\nx = 1\n" + POOL, "unknown key 'lab' in the top level"),
    (POOL + "script_path = 5\n", ("[pools.a] script_path = 5 must be a string; write for "
                                 "example script_path = \"/")),
    (POOL + "chroot = 5\n", "[pools.a] chroot = 5 must be a string"),
    (POOL + "status_path = 5\n", "[pools.a] status_path = 5 must be a string"),
    ("[pools.a]\naddress = 9000\n", "[pools.a] address = 9000 must be a string"),
    (POOL + 'script_path = "status.php"\n', "script_path = 'status.php' must be an absolute"),
    (POOL + 'chroot = "srv"\n', "chroot = 'srv' must be an absolute path"),
    ("[probe]\nconnect_timeout = -1.0\n" + POOL, "connect_timeout = -1.0 is out of range"),
    ("[probe]\nread_timeout = 0\n" + POOL, "read_timeout = 0.0 is out of range"),
    ("[probe]\nread_timeout = 1e308\n" + POOL, "read_timeout = 1e+308 is out of range"),
    ("[probe]\nread_timeout = 3601\n" + POOL, "at most 3600"),
    ("[probe]\nread_timeout = nan\n" + POOL, "read_timeout = nan must be a finite number"),
    ("[probe]\nread_timeout = inf\n" + POOL, "read_timeout = inf must be a finite number"),
    ('[probe]\nread_timeout = "5"\n' + POOL, "read_timeout = '5' must be a number"),
    ("[probe]\nread_timeout = true\n" + POOL, "read_timeout = True must be a number"),
    ('[probe]\nscript_dir = ""\n' + POOL, "script_dir = '' must be an absolute path"),
    ('[probe]\nscript_dir = "probe"\n' + POOL, "script_dir = 'probe' must be an absolute"),
    ("[probe]\nscript_dir = 5\n" + POOL, "script_dir = 5 must be a string"),
    ("state_file = 5\n" + POOL, "state_file = 5 must be an absolute path"),
    ('state_file = "state.db"\n' + POOL, "state_file = 'state.db' must be an absolute path"),
    ("[thresholds]\nlisten_queue_warning = -3\n" + POOL, "listen_queue_warning = -3 is invalid"),
    ("[thresholds]\nfree_warning_percent = nan\n" + POOL, "free_warning_percent = nan must be"),
    ("[thresholds]\nfree_warning_percent = 150\n" + POOL, "is a percentage; use 0 to 100"),
    ("[thresholds]\nwaste_critical_ratio = 80\n" + POOL, "is a ratio"),
])
def test_config_rejects_value(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message
    assert "\n" not in message


def test_config_accepts_valid_file(tmp_path: Path) -> None:
    text = ('state_file = "/var/lib/opcache-guard/state.db"\n'
            "[probe]\nread_timeout = 3600\nconnect_timeout = 1\n"
            'script_dir = "/var/lib/opcache-guard/probe"\n'
            "[thresholds]\nfree_warning_percent = 100\nwaste_critical_ratio = 10\n"
            "listen_queue_warning = 0\n"
            "[slots.groups.web]\nlimit = 1\n"
            + POOL + 'script_path = "/srv/www/status.php"\nchroot = "/srv/www"\n')
    config = load_config(write(tmp_path, text))
    assert config.probe.read_timeout == 3600.0
    assert config.probe.connect_timeout == 1.0
    assert config.state_file == Path("/var/lib/opcache-guard/state.db")
    assert config.pools[0].chroot == "/srv/www"
    assert config.extra == {"slots": {"groups": {"web": {"limit": 1}}}}


def test_config_rejects_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_bytes(b"\xff\xfe[pools]\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(path)


def test_config_rejects_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file .*: Is a directory"):
        load_config(tmp_path)


@pytest.mark.parametrize("limits, expected", [
    ({"free_warning_percent": math.nan}, "free_warning_percent = nan is invalid"),
    ({"free_critical_mb": math.inf}, "free_critical_mb = inf is invalid"),
    ({"listen_queue_warning": -3}, "listen_queue_warning = -3 is invalid"),
    ({"keys_critical_percent": 100.5}, "keys_critical_percent = 100.5 is a percentage"),
    ({"waste_warning_ratio": -0.1}, "waste_warning_ratio = -0.1 is invalid"),
    ({"waste_critical_ratio": 10.5}, "waste_critical_ratio = 10.5 is a ratio"),
])
def test_thresholds_reject_range(limits: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Thresholds(**limits).validate()
    assert expected in str(raised.value)


def test_thresholds_accept_edges() -> None:
    Thresholds(free_warning_percent=100, free_critical_percent=0, waste_warning_ratio=0,
               waste_critical_ratio=10, listen_queue_warning=0).validate()


@pytest.mark.parametrize("section, expected", [
    ({"groups": 5}, "[slots] groups = 5 must be a table"),
    ({"groups": {"web": 5}}, "[slots.groups] web = 5 must be a table"),
    ({"groups": {"web": {"size": "eight"}}}, "size = 'eight' must be a whole number"),
    ({"groups": {"web": {"size": -1}}}, "size = -1 must be a whole number of 0 or more"),
    ({"groups": {"web": {"min_pooled": 1.5}}}, "min_pooled = 1.5 must be a whole number"),
    ({"groups": {"web": {"limit": True}}}, "limit = True is invalid"),
    ({"groups": {"web": {"limit": [1]}}}, "limit = [1] is invalid"),
    ({"groups": {"web": {"limit": "10%"}}}, "needs size = NUMBER_OF_HOSTS"),
])
def test_parse_groups_rejects(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_groups(section, "host.toml")
    assert str(raised.value).startswith("host.toml: ")
    assert expected in str(raised.value)


def test_parse_groups_accepts_count_and_percentage() -> None:
    groups = parse_groups({"groups": {"web": {"limit": 2}, "api": {"limit": "10%", "size": 20}}})
    assert groups["web"].max_out() == 2
    assert groups["api"].max_out() == 2


@pytest.mark.parametrize("text, expected", [
    ("[zz]:9000", "'zz' in brackets is not an IPv6 address"),
    ("[127.0.0.1]:9000", "not an IPv6 address"),
    ("127.0.0.1:\u0669\u0660\u0660\u0660", "use unix:/path"),
    ("[::1]:\uff19\uff10", "use unix:/path"),
    ("localhost", "use unix:/path"),
])
def test_parse_address_rejects(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="invalid address") as raised:
        parse_address(text)
    assert expected in str(raised.value)


@pytest.mark.parametrize("text, host", [
    ("[::1]:9000", "::1"),
    ("[fe80::1%lo]:9000", "fe80::1%lo"),
    ("127.0.0.1:9000", "127.0.0.1"),
    ("tcp://app1.example:9000", "app1.example"),
])
def test_parse_address_accepts(text: str, host: str) -> None:
    address = parse_address(text)
    assert address.host == host
    assert address.port == 9000


def test_parse_config_keeps_passthrough_tables() -> None:
    data = {"lb": {"backend": "memory"}, "restart": {}, "pools": {}}
    config = parse_config(data, "host.toml")
    assert config.extra == {"lb": {"backend": "memory"}, "restart": {}}
