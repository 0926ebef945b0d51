"""Per-host configuration of the lab, and the coordination server its slots use.

Each lab master stands for one host. ``hosts/NAME.toml`` is the configuration an agent or a
safe restart of that host reads: its pool, the lab's HAProxy server of the same name, the
lab's slot backend with one group ``lab``, and the ``master`` php-fpm backend that restarts
it with the same command the lab used. Every host keeps its own state file (journal and
previous samples), as real hosts do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from opcache_guard.errors import LabError
from opcache_guard.fpm import local
from opcache_guard.servers.etcd import EtcdServer
from opcache_guard.servers.poolcounter import PoolCounterServer

SLOT_BACKENDS = ("sqlite", "etcd", "poolcounter")
GROUP = "lab"
HOSTS_DIR = "hosts"


def start_slot_server(directory: Path, backend: str) -> dict[str, Any]:
    """Start the coordination server a slot backend needs; return its record and [slots] keys.

    Raises:
        LabError: the backend is unknown or its server failed to start.
    """
    if backend == "sqlite":
        return {"section": {"backend": "sqlite", "path": str(directory / "slots.db")}}
    if backend == "etcd":
        etcd = EtcdServer(directory / "etcd").start()
        return {"pid": etcd.pid, "marker": str(etcd.directory / "data"),
                "section": {"backend": "etcd", "endpoints": [etcd.url], "ttl": 10}}
    if backend == "poolcounter":
        poolcounter = PoolCounterServer(directory / "poolcounter").start()
        return {"pid": poolcounter.pid, "marker": "poolcounterd",
                "section": {"backend": "poolcounter", "address": poolcounter.address}}
    raise LabError(f"--slots {backend!r} is not a slot backend; use one of: "
                   f"{', '.join(SLOT_BACKENDS)}")


def host_document(directory: Path, spec: local.MasterSpec, slots_section: dict[str, Any],
                  limit: int, admin_socket: str | None) -> dict[str, Any]:
    """Return the configuration of one lab host, as a TOML-ready document."""
    document: dict[str, Any] = {
        "state_file": str(spec.directory / "state.db"),
        "host": {"name": spec.name, "group": GROUP},
        "probe": {"script_dir": str(directory / "probe"), "connect_timeout": 1.0,
                  "read_timeout": 5.0},
        "pools": {spec.name: {"address": spec.listen, "status_listen": spec.status_listen}},
        "slots": {**slots_section, "groups": {GROUP: {"limit": limit}}},
        "fpm": {"backend": "master", "pid_file": str(spec.pid_file),
                "command": spec.command(), "env": {"PHP_INI_SCAN_DIR": ""},
                "log_file": str(spec.directory / "php-fpm.stdout"),
                "check_command": [*spec.command(), "-t"]},
        "restart": {"drain_timeout": 30.0, "verify_timeout": 15.0, "slot_timeout": 120.0},
        "agent": {"interval": 2.0, "jitter": 0.5, "slot_timeout": 1.0},
    }
    if admin_socket:
        document["lb"] = {"backend": "haproxy", "socket": f"unix:{admin_socket}",
                          "haproxy_backend": "php", "server": spec.name}
    return document


def write_host_configs(directory: Path, specs: list[local.MasterSpec],
                       slots_section: dict[str, Any], limit: int,
                       admin_socket: str | None) -> list[Path]:
    """Write hosts/NAME.toml for every master; return their paths."""
    hosts = directory / HOSTS_DIR
    hosts.mkdir(mode=0o755, exist_ok=True)
    paths = []
    for spec in specs:
        path = hosts / f"{spec.name}.toml"
        document = host_document(directory, spec, slots_section, limit, admin_socket)
        path.write_text("# Written by 'opcache-guard lab up': the configuration of lab host "
                        f"{spec.name}.\n" + tomli_w.dumps(document))
        paths.append(path)
    return paths
