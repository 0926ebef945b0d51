"""Bad input on the command line: one clear line and the documented exit status.

``check``, ``status`` and ``metrics`` exit 3 (UNKNOWN) on every failure, so that Nagios never
reads a traceback's status 1 as WARNING. Pool replies come from a fake FastCGI server on
127.0.0.1 that sends crafted JSON.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from opcache_guard import cliutil, config
from opcache_guard.cli import _exposure_warning, _listen_address, main
from opcache_guard.errors import ConfigError
from opcache_guard.fastcgi import RecordDecoder, RecordType, decode_params, encode_record

STATUS = {
    "memory_usage": {"used_memory": 10, "free_memory": 90, "wasted_memory": 0,
                     "current_wasted_percentage": 0.0},
    "opcache_statistics": {"num_cached_scripts": 1, "num_cached_keys": 1, "max_cached_keys": 100,
                           "hits": 1, "misses": 1, "opcache_hit_rate": 50.0, "start_time": 1,
                           "last_restart_time": 0, "oom_restarts": 0, "hash_restarts": 0,
                           "manual_restarts": 0},
}
SCRIPT_REPLY = {"opcache_loaded": True, "time": 1.0, "php_version": "8.2.0", "status": STATUS,
                "configuration": {"directives": {}}}
FPM_REPLY = {"pool": "www", "listen queue": 0, "total processes": 2}


def invoke(*args: str) -> Result:
    """Run the command line in this process, without the environment's configuration."""
    return CliRunner(env={"OPCACHE_GUARD_CONFIG": None}).invoke(main, list(args))


def _serve(conn: socket.socket, script_reply: bytes, fpm_reply: bytes) -> None:
    """Reply to each request on one connection, as the status page or the status script."""
    decoder = RecordDecoder()
    params = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        for record in decoder.feed(data):
            if record.type == RecordType.PARAMS:
                params += record.content
            elif record.type == RecordType.STDIN and not record.content:
                name = decode_params(params).get("SCRIPT_NAME", "")
                body = fpm_reply if name == "/fpm-status" else script_reply
                params = b""
                conn.sendall(encode_record(RecordType.STDOUT, record.request_id,
                                           b"Content-Type: application/json\r\n\r\n" + body)
                             + encode_record(RecordType.END_REQUEST, record.request_id,
                                             b"\0" * 8))


@pytest.fixture
def fake_pool(tmp_path: Path, fpm_dir: Path,
              fake_server: Callable[[Callable[[socket.socket], None]], str],
              ) -> Callable[[Any, Any], Path]:
    """Start a fake pool replying with the given JSON; return a configuration file for it."""

    def start(script_reply: Any, fpm_reply: Any = FPM_REPLY) -> Path:
        script_bytes = json.dumps(script_reply).encode()
        fpm_bytes = json.dumps(fpm_reply).encode()
        address = fake_server(lambda conn: _serve(conn, script_bytes, fpm_bytes))
        path = tmp_path / "guard.toml"
        path.write_text(f'[probe]\nscript_dir = "{fpm_dir / "probe"}"\nread_timeout = 5\n'
                        f'[pools.bad]\naddress = "{address}"\n'
                        f'[pools.good]\naddress = "{address}"\n'
                        f'status_path = "/fpm-status-good"\n')
        return path

    return start


@pytest.mark.parametrize("command", ["check", "status", "metrics"])
@pytest.mark.parametrize("text, expected", [
    ("probe = 5\n", "probe = 5 must be a table"),
    ('[pools.a]\naddress = "127.0.0.1:1"\nchroot = 5\n', "[pools.a] chroot = 5 must be a "),
    ("[probe]\nconnect_timeout = -1.0\n", "connect_timeout = -1.0 is out of range"),
    ('state_file = "state.db"\n', "state_file = 'state.db' must be an absolute path"),
    ("[thresholds]\nfree_warning_percent = nan\n", "free_warning_percent = nan must be"),
    ("[exporter]\nlisten = 1\n", "unknown key 'exporter'"),
])
def test_config_error_exits_unknown(tmp_path: Path, command: str, text: str,
                                    expected: str) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(text)
    result = invoke(command, "--no-state", "-c", str(path))
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith(f"opcache-guard: error: {path}: ")
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1


def test_binary_config_exits_unknown(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_bytes(b"\xff\xfe\x00binary")
    result = invoke("check", "-c", str(path))
    assert result.exit_code == 3
    assert "is not UTF-8 text" in result.stderr


def test_slots_status_bad_groups_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text('[slots.groups.web]\nsize = "eight"\nlimit = "10%"\n')
    result = invoke("slots", "status", "-c", str(path))
    assert result.exit_code == 2
    assert "[slots.groups.web] size = 'eight' must be a whole number" in result.stderr


def test_unreadable_config_exits_unknown(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "guard.toml"
    path.write_text('[pools.a]\naddress = "127.0.0.1:1"\n')
    # Root reads any file, so the test plays a user without permission: click's own
    # check (os.access) and the read both fail.
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(config, "open", denied, raising=False)
    result = invoke("check", "-c", str(path))
    assert result.exit_code == 3, result.output
    assert result.stderr == (f"opcache-guard: error: cannot read configuration file {path}: "
                             "Permission denied\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file of mode 000")
def test_unreadable_config_as_user(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text('[pools.a]\naddress = "127.0.0.1:1"\n')
    path.chmod(0)
    result = invoke("check", "-c", str(path))
    assert result.exit_code == 3
    assert "Permission denied" in result.stderr


@pytest.mark.parametrize("reply, expected", [
    ({**SCRIPT_REPLY, "time": None}, "unexpected reply layout"),
    ({key: value for key, value in SCRIPT_REPLY.items() if key != "time"},
     "unexpected reply layout: 'time' is missing"),
    ({**SCRIPT_REPLY, "status": {"opcache_statistics": {}}},
     "unexpected OPcache status layout: memory_usage is missing"),
    ({**SCRIPT_REPLY, "status": {**STATUS, "memory_usage": [1]}},
     "unexpected OPcache status layout: memory_usage is not an object"),
    ({**SCRIPT_REPLY, "status": {**STATUS, "memory_usage": {"used_memory": "x"}}},
     "unexpected OPcache status layout: used_memory = 'x' is not a number"),
    ({**SCRIPT_REPLY, "configuration": [1]}, None),
])
def test_odd_reply_makes_pool_unknown(fake_pool: Callable[[Any, Any], Path],
                                      reply: dict[str, Any], expected: str | None) -> None:
    path = fake_pool(reply, FPM_REPLY)
    result = invoke("check", "--no-state", "-c", str(path))
    if expected is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 3, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("OPCACHE UNKNOWN - pool bad at 127.0.0.1:")
    assert expected in first
    assert "missing invalid" not in first


def test_odd_fpm_reply_spares_other_pool(fake_pool: Callable[[Any, Any], Path]) -> None:
    path = fake_pool(SCRIPT_REPLY, {**FPM_REPLY, "listen-queue": "x"})
    result = invoke("status", "--json", "--no-state", "-c", str(path))
    assert result.exit_code == 3, result.output
    pools = {pool["name"]: pool for pool in json.loads(result.stdout)["pools"]}
    assert pools["bad"]["up"] is False
    assert pools["bad"]["error"].startswith("pool bad at 127.0.0.1:")
    assert ("unexpected FPM status layout: listen_queue = 'x' is not a number"
            in pools["bad"]["error"])
    # The pool "good" reads /fpm-status-good, for which the fake returns the script's reply.
    # That JSON object has no FPM counters, so every counter defaults to 0.
    assert pools["good"]["up"] is True


def test_unexpected_error_makes_pool_unknown(fake_pool: Callable[[Any, Any], Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = fake_pool(SCRIPT_REPLY, FPM_REPLY)

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("opcache_guard.checks.judge", broken)
    result = invoke("check", "--no-state", "-c", str(path))
    assert result.exit_code == 3, result.output
    assert "pool bad at 127.0.0.1:" in result.stdout
    assert "check failed unexpectedly: ZeroDivisionError('division by zero')" in result.stdout


def test_check_names_address_once() -> None:
    result = invoke("check", "--no-state", "--fpm", "127.0.0.1:1")
    assert result.exit_code == 3
    first = result.stdout.splitlines()[0]
    assert first.startswith("OPCACHE UNKNOWN - pool at 127.0.0.1:1: unreachable")
    assert not first.startswith("OPCACHE UNKNOWN - 127.0.0.1:1: ")


def test_check_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # The resolver is replaced, so the test sends no DNS query off this host.
    def fail_lookup(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail_lookup)
    result = invoke("check", "--no-state", "--fpm", "nonexistent.invalid:9000")
    assert result.exit_code == 3
    first = result.stdout.splitlines()[0]
    assert "cannot resolve host nonexistent.invalid" in first
    assert "check that php-fpm runs" not in first
    assert first.count("nonexistent.invalid:9000") == 1


@pytest.mark.parametrize("address", ["[zz]:9000", "127.0.0.1:\u0669\u0660\u0660\u0660"])
def test_check_rejects_bad_address(address: str) -> None:
    result = invoke("check", "--no-state", "--fpm", address)
    assert result.exit_code == 3
    assert result.stderr.startswith(f"opcache-guard: error: invalid address {address!r}")


@pytest.mark.parametrize("text", ["localhost", "unix:/run/guard.sock", "127.0.0.1:x"])
def test_listen_rejects_non_tcp(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _listen_address(text)
    assert "use HOST:PORT, for example 127.0.0.1:9253" in str(raised.value)
    assert "unix:/path" not in str(raised.value)


def test_exporter_listen_error_exits_2() -> None:
    result = invoke("exporter", "--fpm", "127.0.0.1:1", "--listen", "localhost")
    assert result.exit_code == 2
    assert "use HOST:PORT" in result.stderr


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", None),
    ("::1", None),
    ("localhost", None),
    ("0.0.0.0", "--listen 0.0.0.0:9253: serving metrics on all interfaces"),
    ("::", "--listen [::]:9253: serving metrics on all interfaces"),
    ("192.0.2.1", "--listen 192.0.2.1:9253: serving metrics beyond loopback"),
    ("metrics.example", "--listen metrics.example:9253: serving metrics beyond loopback"),
])
def test_exposure_warning(host: str, expected: str | None) -> None:
    warning = _exposure_warning(host, 9253)
    if expected is None:
        assert warning is None
        return
    assert warning is not None
    assert expected in warning
    assert "anyone who reaches this host can read pool names and figures" in warning


def test_cliutil_docstring_names_env_var() -> None:
    assert "--debug" not in (cliutil.__doc__ or "")
    assert "OPCACHE_GUARD_DEBUG=1" in (cliutil.__doc__ or "")


def test_check_error_is_a_plugin_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[pools.x]\naddres = '127.0.0.1:9000'\n")
    result = subprocess.run([sys.executable, "-m", "opcache_guard", "check", "-c", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3
    assert result.stdout.startswith("OPCACHE UNKNOWN - ")
    assert "addres" in result.stdout
