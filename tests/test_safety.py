"""Files and processes the tool touches: never loosened, never left behind."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import MasterFactory, pool_of

from opcache_guard import phpfiles, procs
from opcache_guard.config import ProbeSettings
from opcache_guard.errors import ConfigError, LabError, StateError
from opcache_guard.fastcgi import FastCGIClient
from opcache_guard.fpm.local import OpcacheSettings
from opcache_guard.health import Thresholds, judge
from opcache_guard.lab import LabRecord, lab_down, lab_up
from opcache_guard.probe import SCRIPT_PREFIX, Prober
from opcache_guard.store import StateStore


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_existing_private_dir_not_loosened(fpm_dir: Path) -> None:
    private = fpm_dir / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    with pytest.raises(ConfigError, match="cannot be read by other users"):
        phpfiles.prepare_directory(private, "probe script directory")
    assert mode_of(private) == 0o700


def test_sticky_world_writable_dir_rejected(fpm_dir: Path) -> None:
    shared = fpm_dir / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(LabError, match="writable by others"):
        lab_up(shared, 1, OpcacheSettings(), haproxy=False)
    assert mode_of(shared) == 0o1777


def test_parent_writable_by_others_rejected(fpm_dir: Path) -> None:
    open_parent = fpm_dir / "open"
    open_parent.mkdir()
    os.chmod(open_parent, 0o777)
    with pytest.raises(ConfigError, match="which others can write"):
        phpfiles.prepare_directory(open_parent / "child", "probe script directory")
    assert not (open_parent / "child").exists()


def test_relative_dir_rejected() -> None:
    with pytest.raises(ConfigError, match="relative"):
        phpfiles.prepare_directory(Path("relative/dir"), "probe script directory")


def test_created_dirs_are_0755(fpm_dir: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        phpfiles.prepare_directory(fpm_dir / "a" / "b", "probe script directory")
    finally:
        os.umask(old_umask)
    assert mode_of(fpm_dir / "a") == 0o755
    assert mode_of(fpm_dir / "a" / "b") == 0o755


def test_stale_status_scripts_removed(fpm_master: MasterFactory,
                                      probe_settings: ProbeSettings) -> None:
    spec = fpm_master()
    phpfiles.prepare_directory(probe_settings.script_dir, "probe script directory")
    stale = probe_settings.script_dir / f"{SCRIPT_PREFIX}left-behind.php"
    stale.write_text("<?php echo 'stale';")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    Prober(probe_settings).probe(pool_of(spec))
    assert not stale.exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_state_file_must_be_regular(fpm_dir: Path, kind: str) -> None:
    path = fpm_dir / "state.db"
    target = fpm_dir / "target"
    if kind == "symlink":
        path.symlink_to(target)
    else:
        os.mkfifo(path, 0o666)
    before = os.lstat(path)
    with pytest.raises(StateError, match="state file"):
        StateStore(path)
    after = os.lstat(path)
    assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(before.st_mode)
    assert not target.exists()


def test_state_file_created_private(fpm_dir: Path) -> None:
    path = fpm_dir / "new" / "state.db"
    StateStore(path)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o755


def test_damaged_state_file_reported(fpm_dir: Path) -> None:
    path = fpm_dir / "state.db"
    path.write_text("not a database")
    with pytest.raises(StateError, match="move the damaged file away"):
        StateStore(path)


def test_probe_warns_when_it_fills_the_cache(fpm_master: MasterFactory,
                                             probe_settings: ProbeSettings) -> None:
    spec = fpm_master(opcache=OpcacheSettings(file_update_protection=0))
    sample = Prober(probe_settings).probe(pool_of(spec))
    verdict = judge(sample, None, Thresholds())
    codes = [finding.code for finding in verdict.findings]
    assert "probe" in codes
    assert "script_path" in verdict.summary


def test_sigterm_during_probe_removes_script(fpm_master: MasterFactory, fpm_dir: Path) -> None:
    spec = fpm_master(max_children=1)
    script_dir = fpm_dir / "probe-sigterm"
    config = fpm_dir / "sigterm.toml"
    config.write_text(f'state_file = "{fpm_dir}/sigterm.db"\n[probe]\nscript_dir = "{script_dir}"\n'
                      f'read_timeout = 10.0\n[pools.www]\naddress = "{spec.listen}"\n')
    sleeper = spec.docroot / "sleep.php"
    sleeper.write_text("<?php usleep(4000000);")
    busy = threading.Thread(target=lambda: FastCGIClient(spec.listen, read_timeout=10).get(
        str(sleeper), "/sleep.php"))
    busy.start()
    time.sleep(0.3)
    check = subprocess.Popen([sys.executable, "-m", "opcache_guard", "check", "-c", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert procs.wait_until(lambda: any(script_dir.glob(f"{SCRIPT_PREFIX}*")), 5)
    check.send_signal(signal.SIGTERM)
    check.wait(10)
    busy.join()
    assert check.returncode != 0
    assert not list(script_dir.glob(f"{SCRIPT_PREFIX}*"))


def test_lab_down_stops_workers_of_dead_master(fpm_dir: Path) -> None:
    directory = fpm_dir / "lab-dead"
    record = lab_up(directory, 1, OpcacheSettings(), haproxy=False)
    master = record.masters[0]
    workers = procs.group_members(master.pid, "php-fpm: pool")
    assert workers
    os.kill(master.pid, signal.SIGKILL)
    assert procs.wait_until(lambda: not procs.is_alive(master.pid), 5)
    stopped = lab_down(directory)
    assert any("worker" in line for line in stopped)
    assert not any(procs.is_alive(pid) for pid in workers)


def test_lab_up_refuses_while_haproxy_runs(fpm_dir: Path) -> None:
    directory = fpm_dir / "lab-half"
    record = lab_up(directory, 1, OpcacheSettings())
    try:
        for master in record.masters:
            os.kill(master.pid, signal.SIGKILL)
        procs.wait_until(lambda: not procs.is_alive(record.masters[0].pid), 5)
        with pytest.raises(LabError, match="HAProxy"):
            lab_up(directory, 1, OpcacheSettings())
    finally:
        lab_down(directory)
    assert LabRecord.load(directory) is None


def test_concurrent_directory_creation(fpm_dir: Path) -> None:
    target = fpm_dir / "race" / "probe"
    errors: list[BaseException] = []

    def create() -> None:
        try:
            phpfiles.prepare_directory(target, "probe script directory")
        except BaseException as exc:  # noqa: BLE001 - collected for the assert below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert mode_of(target) == 0o755
