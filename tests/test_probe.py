"""The probe against real php-fpm masters: readings, transports and every failure it names."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from conftest import MasterFactory, pool_of

from opcache_guard import procs
from opcache_guard.config import ProbeSettings
from opcache_guard.errors import ConfigError, FastCGIError, ProbeError
from opcache_guard.fastcgi import FastCGIClient, parse_address
from opcache_guard.fpm.local import OpcacheSettings
from opcache_guard.probe import SCRIPT_PREFIX, Prober


def test_probe_reads_opcache_and_fpm(fpm_master: MasterFactory,
                                     probe_settings: ProbeSettings) -> None:
    spec = fpm_master(opcache=OpcacheSettings(memory_consumption=16, max_accelerated_files=200,
                                              max_wasted_percentage=7))
    sample = Prober(probe_settings).probe(pool_of(spec))
    opcache = sample.opcache
    assert opcache.enabled
    assert opcache.memory_size == 16 * 1024 * 1024
    assert opcache.max_wasted_percentage == pytest.approx(7.0)
    assert opcache.max_accelerated_files == 200
    assert opcache.max_cached_keys == 223
    assert opcache.interned_strings_buffer_size == 1024 * 1024
    assert opcache.oom_restarts == 0
    assert sample.php_version.startswith("8.")
    assert sample.fpm is not None
    assert sample.fpm.pool == spec.name
    assert sample.fpm.total_processes == spec.max_children


def test_probe_script_is_removed_and_private(fpm_master: MasterFactory,
                                             probe_settings: ProbeSettings) -> None:
    spec = fpm_master()
    Prober(probe_settings).probe(pool_of(spec))
    directory = probe_settings.script_dir
    assert not [p for p in directory.iterdir() if p.name.startswith(SCRIPT_PREFIX)]
    mode = stat.S_IMODE(directory.stat().st_mode)
    assert mode & 0o022 == 0


def test_probe_never_fills_the_cache(fpm_master: MasterFactory,
                                     probe_settings: ProbeSettings) -> None:
    spec = fpm_master()
    prober = Prober(probe_settings)
    for _ in range(5):
        sample = prober.probe(pool_of(spec))
    assert sample.opcache.num_cached_scripts == 0


def test_probe_rejects_writable_script_dir(fpm_master: MasterFactory,
                                           probe_settings: ProbeSettings) -> None:
    spec = fpm_master()
    probe_settings.script_dir.mkdir(mode=0o755)
    os.chmod(probe_settings.script_dir, 0o777)
    with pytest.raises(ConfigError, match="writable by others"):
        Prober(probe_settings).probe(pool_of(spec))


def test_probe_installed_script(fpm_master: MasterFactory, probe_settings: ProbeSettings) -> None:
    from opcache_guard.probe import status_script_source

    spec = fpm_master()
    installed = spec.docroot / "opcache-status.php"
    installed.write_bytes(status_script_source())
    pool = pool_of(spec)
    pool.script_path = str(installed)
    sample = Prober(probe_settings).probe(pool)
    assert sample.opcache.enabled


def test_probe_chroot_maps_path(fpm_master: MasterFactory, probe_settings: ProbeSettings) -> None:
    spec = fpm_master()
    pool = pool_of(spec)
    pool.script_path = "/elsewhere/status.php"
    pool.chroot = str(spec.directory)
    with pytest.raises(ConfigError, match="outside the pool's chroot"):
        Prober(probe_settings).probe(pool)


def test_probe_status_listen_same_opcache(fpm_master: MasterFactory,
                                          probe_settings: ProbeSettings) -> None:
    spec = fpm_master(status_listen=f"127.0.0.1:{procs.free_port()}")
    prober = Prober(probe_settings)
    via_status = prober.probe(pool_of(spec))
    direct_pool = pool_of(spec)
    direct_pool.status_listen = None
    direct = prober.probe(direct_pool)
    assert via_status.opcache.start_time == direct.opcache.start_time
    assert via_status.fpm is not None
    assert via_status.fpm.pool == spec.name


def _saturate(spec_docroot: Path, address: str, seconds: float, count: int) -> list[threading.Thread]:
    script = spec_docroot / "sleep.php"
    script.write_text(f"<?php usleep({int(seconds * 1e6)}); echo 'done';")
    threads = []
    for _ in range(count):
        def run() -> None:
            # These requests only keep the workers busy; how each one ends does not matter.
            with contextlib.suppress(FastCGIError):
                FastCGIClient(address, read_timeout=seconds + 5).get(str(script), "/sleep.php")
        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
    return threads


def test_probe_saturated_pool_reports_saturation(fpm_master: MasterFactory,
                                                 probe_settings: ProbeSettings) -> None:
    spec = fpm_master(max_children=1)
    threads = _saturate(spec.docroot, spec.listen, 2.5, 1)
    procs.wait_until(lambda: False, 0.3)
    probe_settings.read_timeout = 1.0
    try:
        with pytest.raises(ProbeError, match="saturated.*pm.status_listen"):
            Prober(probe_settings).probe(pool_of(spec))
    finally:
        for thread in threads:
            thread.join()


def test_probe_saturated_pool_readable_on_status_listen(fpm_master: MasterFactory,
                                                        probe_settings: ProbeSettings) -> None:
    spec = fpm_master(max_children=1, status_listen=f"127.0.0.1:{procs.free_port()}")
    threads = _saturate(spec.docroot, spec.listen, 2.5, 3)
    procs.wait_until(lambda: False, 0.5)
    probe_settings.read_timeout = 1.0
    try:
        sample = Prober(probe_settings).probe(pool_of(spec))
    finally:
        for thread in threads:
            thread.join()
    assert sample.fpm is not None
    assert sample.fpm.active_processes == 1
    assert sample.fpm.idle_processes == 0


def test_probe_unix_socket(fpm_master: MasterFactory, probe_settings: ProbeSettings,
                           fpm_dir: Path) -> None:
    spec = fpm_master(listen=str(fpm_dir / "www.sock"))
    sample = Prober(probe_settings).probe(pool_of(spec))
    assert sample.address == f"unix:{fpm_dir / 'www.sock'}"
    assert sample.opcache.enabled


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_probe_ipv6(fpm_master: MasterFactory, probe_settings: ProbeSettings) -> None:
    spec = fpm_master(listen=f"[::1]:{procs.free_port('::1')}")
    sample = Prober(probe_settings).probe(pool_of(spec))
    assert sample.address.startswith("[::1]:")


def test_probe_unreachable(probe_settings: ProbeSettings) -> None:
    from opcache_guard.config import pool_from_address

    pool = pool_from_address(f"127.0.0.1:{procs.free_port()}", "www")
    with pytest.raises(ProbeError, match=r"pool www at 127\.0\.0\.1:\d+: unreachable"):
        Prober(probe_settings).probe(pool)


def test_probe_status_page_not_configured(fpm_master: MasterFactory,
                                          probe_settings: ProbeSettings) -> None:
    spec = fpm_master(status_listen=f"127.0.0.1:{procs.free_port()}")
    pool = pool_of(spec)
    pool.status_path = "/missing-status"
    with pytest.raises(ProbeError, match="pm.status_path = /missing-status"):
        Prober(probe_settings).probe(pool)


def test_probe_opcache_not_loaded(fpm_master: MasterFactory,
                                  probe_settings: ProbeSettings) -> None:
    spec = fpm_master(opcache=OpcacheSettings(load_extension=False))
    with pytest.raises(ProbeError, match="zend_extension=opcache.so"):
        Prober(probe_settings).probe(pool_of(spec))


def test_probe_opcache_disabled(fpm_master: MasterFactory,
                                probe_settings: ProbeSettings) -> None:
    spec = fpm_master(opcache=OpcacheSettings(enable=False))
    with pytest.raises(ProbeError, match="opcache.enable=1"):
        Prober(probe_settings).probe(pool_of(spec))


def test_probe_php_output_instead_of_json(fpm_master: MasterFactory,
                                          probe_settings: ProbeSettings) -> None:
    spec = fpm_master()
    broken = spec.docroot / "broken.php"
    broken.write_text("<?php echo 'Warning: something went wrong';")
    pool = pool_of(spec)
    pool.script_path = str(broken)
    with pytest.raises(ProbeError, match="PHP output instead of JSON.*something went wrong"):
        Prober(probe_settings).probe(pool)


def test_probe_script_not_found(fpm_master: MasterFactory,
                                probe_settings: ProbeSettings) -> None:
    spec = fpm_master()
    pool = pool_of(spec)
    pool.script_path = str(spec.docroot / "absent.php")
    with pytest.raises(ProbeError, match="not found by the pool"):
        Prober(probe_settings).probe(pool)


def test_ping(fpm_master: MasterFactory, probe_settings: ProbeSettings) -> None:
    spec = fpm_master()
    prober = Prober(probe_settings)
    assert prober.ping(pool_of(spec))
    wrong = pool_of(spec)
    wrong.ping_response = "something else"
    assert not prober.ping(wrong)


def test_address_parse_of_spec(fpm_master: MasterFactory) -> None:
    spec = fpm_master()
    assert parse_address(spec.listen).port > 0


def test_probe_fpm_state_from_function(fpm_master: MasterFactory,
                                       probe_settings: ProbeSettings) -> None:
    spec = fpm_master()
    pool = pool_of(spec)
    pool.fpm_status = "function"
    sample = Prober(probe_settings).probe(pool)
    assert sample.fpm is not None
    assert sample.fpm.pool == spec.name
    assert sample.fpm.total_processes == spec.max_children
