"""Shared fixtures: real php-fpm masters and etcd on loopback, in temporary directories.

Also a fake TCP server on 127.0.0.1 for fault injection.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opcache_guard import procs
from opcache_guard.config import PoolConfig, ProbeSettings, pool_from_address
from opcache_guard.fpm import local
from opcache_guard.servers.etcd import EtcdServer

_names = itertools.count(1)

MasterFactory = Callable[..., local.MasterSpec]


def new_fpm_dir() -> Path:
    """Create a fresh directory that php-fpm workers can read; the caller removes it.

    pytest's own tmp_path sits below a mode 0700 directory, which workers running as nobody
    (when the tests run as root) cannot enter. This one is mode 0755 and writable only by us.
    """
    directory = Path(tempfile.mkdtemp(prefix="opcache-guard-test-"))
    os.chmod(directory, 0o755)
    return directory


@pytest.fixture
def fpm_dir() -> Iterator[Path]:
    """A fresh directory that php-fpm workers can read, removed after the test."""
    directory = new_fpm_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fpm_master(fpm_dir: Path) -> Iterator[MasterFactory]:
    """Start real php-fpm masters on free loopback ports; all are stopped at teardown.

    Call it with MasterSpec keyword arguments; ``opcache`` takes an OpcacheSettings.
    """
    started: list[tuple[local.MasterSpec, int]] = []

    def start(**overrides: object) -> local.MasterSpec:
        name = str(overrides.pop("name", f"pool{next(_names)}"))
        listen = str(overrides.pop("listen", f"127.0.0.1:{procs.free_port()}"))
        spec = local.MasterSpec(name=name, directory=fpm_dir / name, listen=listen,
                                **overrides)  # type: ignore[arg-type]
        local.write_files(spec)
        pid = local.start(spec)
        started.append((spec, pid))
        return spec

    yield start
    for spec, pid in started:
        local.stop(spec, pid)
        # A restart test replaces the master, so also stop whichever master the pid file names.
        local.stop(spec)


@pytest.fixture
def probe_settings(fpm_dir: Path) -> ProbeSettings:
    """Probe settings with a private script directory the pools' workers can read."""
    script_dir = fpm_dir / "probe-scripts"
    return ProbeSettings(connect_timeout=1.0, read_timeout=3.0, script_dir=script_dir)


def pool_of(spec: local.MasterSpec) -> PoolConfig:
    """Return the PoolConfig that reaches a started master."""
    pool = pool_from_address(spec.listen, spec.name)
    if spec.status_listen:
        pool.status_listen = pool_from_address(spec.status_listen).address
    return pool


@pytest.fixture
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real single-node etcd on 127.0.0.1, stopped by pid at teardown."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()


ConnectionHandler = Callable[[socket.socket], None]


@pytest.fixture
def fake_server() -> Iterator[Callable[[ConnectionHandler], str]]:
    """A loopback server that runs a handler per connection, for fault injection."""
    servers: list[socket.socket] = []

    def start(handler: ConnectionHandler) -> str:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        servers.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    handler(conn)

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
