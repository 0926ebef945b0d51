"""The command line against a real lab: status, check, metrics, exporter and lab itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from opcache_guard import procs
from opcache_guard.lab import LabRecord, lab_down
from opcache_guard.labfill import Filler


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("OPCACHE_GUARD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "opcache_guard", *args], capture_output=True,
                          text=True, timeout=120, env=full_env, check=False)


@pytest.fixture
def lab(fpm_dir: Path) -> Iterator[LabRecord]:
    """A lab of two masters started through the command line, stopped by lab down."""
    directory = fpm_dir / "lab"
    result = run("lab", "up", "--pools", "2", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    record = LabRecord.load(directory)
    assert record is not None
    yield record
    lab_down(directory)


def test_lab_status_json_and_check(lab: LabRecord) -> None:
    config = str(lab.config_path)
    result = run("status", "--json", "-c", config)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["format"] == 1
    assert [pool["name"] for pool in document["pools"]] == ["app1", "app2"]
    for pool in document["pools"]:
        opcache = pool["sample"]["opcache"]
        for key in ("used_memory", "free_memory", "wasted_memory", "num_cached_keys",
                    "max_cached_keys", "interned_strings_free_memory", "oom_restarts",
                    "hash_restarts", "manual_restarts"):
            assert key in opcache
        assert opcache["max_cached_keys"] == 3907
        assert pool["sample"]["fpm"]["total_processes"] == 4
        assert pool["verdict"]["status"] == "OK"
    result = run("check", "-c", config)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("OPCACHE OK - 2 pools healthy |")


def test_lab_status_table(lab: LabRecord) -> None:
    result = run("status", "-c", str(lab.config_path))
    assert result.returncode == 0
    assert "app1" in result.stdout
    assert "app2" in result.stdout
    result = run("lab", "status", "--dir", lab.directory)
    assert result.returncode == 0
    assert result.stdout.count("pong") == 2


def test_check_critical_on_waste_then_self_restart(lab: LabRecord) -> None:
    config = str(lab.config_path)
    master = lab.masters[0]
    filler = Filler(Path(master.directory) / "docroot", master.listen)
    filler.add_files(72)
    codes = []
    for _ in range(200):
        filler.rewrite(2)
        result = run("check", "-c", config)
        codes.append(result.returncode)
        if "restarted itself" in result.stdout:
            break
        if result.returncode == 2:
            assert "wasted memory" in result.stdout
            assert "app1" in result.stdout
    else:
        pytest.fail(f"OPcache never restarted itself; exit codes {codes}")
    assert 2 in codes[:-1], "check never went CRITICAL before the self-restart"
    assert result.returncode == 2
    assert "oom_restarts 1" in result.stdout
    again = run("check", "-c", config)
    assert again.returncode == 2
    assert "restarted itself since the master started" in again.stdout


@pytest.mark.parametrize("command", ["status", "check", "metrics"])
def test_unreachable_exits_unknown(command: str) -> None:
    address = f"127.0.0.1:{procs.free_port()}"
    result = run(command, "--no-state", "--fpm", address)
    assert result.returncode == (0 if command == "metrics" else 3)
    assert "Traceback" not in result.stderr + result.stdout
    # A Nagios plugin reports on stdout; the other commands print errors on stderr.
    stream = result.stdout if command == "check" else result.stderr
    errors = [line for line in stream.splitlines() if address in line]
    assert errors, result.stderr
    if command == "metrics":
        assert f'opcache_guard_up{{pool="{address}"}} 0.0' in result.stdout
        assert "opcache_memory_used_bytes" not in result.stdout


def test_check_without_pools_is_unknown() -> None:
    result = run("check")
    assert result.returncode == 3
    assert "--fpm ADDRESS" in result.stderr


@pytest.mark.parametrize("content, message", [
    ("[pools.www]\naddres = '127.0.0.1:9000'\n", "unknown key 'addres'"),
    ("[pools.www]\naddress = 'nowhere'\n", "invalid address 'nowhere'"),
    ("[thresholds]\nfree_warning_percent = 'x'\n", "must be a number"),
    ("[thresholds]\nfree_warning_percent = 1\nfree_critical_percent = 5\n", "wrong order"),
    ("pools = [\n", "not valid TOML"),
])
def test_bad_config_is_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    result = run("check", "-c", str(path))
    assert result.returncode == 3
    assert message in result.stderr
    assert str(path) in result.stderr or "TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("status", "-c", str(tmp_path / "absent.toml"))
    assert result.returncode == 3
    assert "absent.toml not found" in result.stderr


def test_metrics_from_lab(lab: LabRecord) -> None:
    result = run("metrics", "-c", str(lab.config_path))
    assert result.returncode == 0
    for line in ('opcache_guard_up{pool="app1"} 1.0', 'opcache_oom_restarts_total{pool="app2"}',
                 'opcache_max_cached_keys{pool="app1"} 3907.0', "opcache_guard_scrape_duration",
                 'phpfpm_total_processes{pool="app1"} 4.0'):
        assert line in result.stdout


def test_exporter_serves_metrics(lab: LabRecord, fpm_dir: Path) -> None:
    port = procs.free_port()
    argv = [sys.executable, "-m", "opcache_guard", "exporter", "-c", str(lab.config_path),
            "--listen", f"127.0.0.1:{port}"]
    process = procs.spawn(argv, fpm_dir / "exporter.log")
    try:
        assert procs.wait_until(lambda: procs.port_open("127.0.0.1", port), 10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
    finally:
        procs.stop(process.pid, "exporter")
    log = (fpm_dir / "exporter.log").read_text()
    assert 'opcache_guard_up{pool="app1"} 1.0' in body, log
    assert "opcache_memory_free_bytes" in body


def test_lab_up_without_php_fpm(fpm_dir: Path) -> None:
    result = run("lab", "up", "--dir", str(fpm_dir / "nolab"),
                 env={"OPCACHE_GUARD_PHP_FPM": str(fpm_dir / "no-such-php-fpm")})
    assert result.returncode != 0
    assert "apt-get install -y php8.2-fpm" in result.stderr
    assert "Traceback" not in result.stderr


def test_lab_up_twice_and_down(lab: LabRecord) -> None:
    again = run("lab", "up", "--dir", lab.directory)
    assert again.returncode != 0
    assert "lab down" in again.stderr
    pids = [master.pid for master in lab.masters]
    down = run("lab", "down", "--dir", lab.directory)
    assert down.returncode == 0
    assert down.stdout.count("stopped php-fpm master") == 2
    assert not any(procs.is_alive(pid) for pid in pids)


def test_lab_up_rejects_tiny_cache(fpm_dir: Path) -> None:
    result = run("lab", "up", "--dir", str(fpm_dir / "tiny"), "--memory", "4")
    assert result.returncode == 2
    assert "--memory" in result.stderr
    assert "8<=x<=1024" in result.stderr


def test_check_flags_invalid_host_config(lab: LabRecord, tmp_path: Path) -> None:
    host = Path(lab.directory) / "hosts" / "app1.toml"
    good = run("check", "-c", str(host))
    assert good.returncode == 0, good.stdout
    bad = tmp_path / "app1.toml"
    bad.write_text(host.read_text().replace("drain_timeout", "drain_timout"))
    result = run("check", "-c", str(bad))
    assert result.returncode == 2
    assert "restart and the agent cannot run" in result.stdout
    assert "drain_timout" in result.stdout


def test_agent_logs_decisions_without_verbose(lab: LabRecord, fpm_dir: Path) -> None:
    host = Path(lab.directory) / "hosts" / "app1.toml"
    log_path = fpm_dir / "agent.log"
    argv = [sys.executable, "-m", "opcache_guard", "agent", "-c", str(host), "--interval", "1"]
    process = procs.spawn(argv, log_path)
    try:
        assert procs.wait_until(lambda: "no action on app1" in log_path.read_text(), 20)
    finally:
        procs.stop(process.pid, "agent")
    assert "Traceback" not in log_path.read_text()


def test_metrics_show_zero_unresolved_runs(lab: LabRecord) -> None:
    host = str(Path(lab.directory) / "hosts" / "app1.toml")
    assert run("agent", "--once", "-c", host).returncode == 0
    result = run("metrics", "-c", host)
    assert result.returncode == 0
    assert 'opcache_guard_restart_runs_unresolved{host="app1"} 0.0' in result.stdout
    assert 'opcache_guard_agent_cycles_total{host="app1"} 1.0' in result.stdout
