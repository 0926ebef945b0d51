"""Helpers for the end-to-end tests: a lab behind real HAProxy, the CLI, wrk and probes."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import new_fpm_dir

from opcache_guard import procs
from opcache_guard.config import PoolConfig, load_config
from opcache_guard.errors import ProbeError
from opcache_guard.fastcgi import FastCGIClient
from opcache_guard.fpm import local
from opcache_guard.lab import APP_DIR, LabMaster, LabRecord, lab_down, lab_up
from opcache_guard.lb.base import LbState
from opcache_guard.lb.haproxy import state_of
from opcache_guard.lb.haproxy_api import RuntimeAPI, SocketAddress
from opcache_guard.probe import Prober
from opcache_guard.slots.base import SlotBackend, create_from
from opcache_guard.slots.etcd import EtcdBackend

POOLCOUNTER_PORT = 7531
BACKEND = "php"


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess and return its result."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("OPCACHE_GUARD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "opcache_guard", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, check=False)


def skip_unless_poolcounter_port_free(slots: str) -> None:
    """Skip a PoolCounter case when another process has bound its fixed port."""
    if slots == "poolcounter" and procs.port_open("127.0.0.1", POOLCOUNTER_PORT):
        pytest.skip(f"port {POOLCOUNTER_PORT} is taken, and poolcounterd binds only that port")


@dataclasses.dataclass
class Lab:
    """A running lab, with read-only views of its HAProxy and its masters."""

    record: LabRecord

    @property
    def directory(self) -> Path:
        return Path(self.record.directory)

    @property
    def url(self) -> str:
        return str(self.record.extra["haproxy"]["url"])

    def host_config(self, name: str) -> Path:
        return self.directory / "hosts" / f"{name}.toml"

    def api(self) -> RuntimeAPI:
        return RuntimeAPI(SocketAddress(path=self.record.extra["haproxy"]["admin_socket"]),
                          timeout=2.0)

    def master(self, name: str) -> LabMaster:
        return next(master for master in self.record.masters if master.name == name)

    def servers_state(self) -> list[dict[str, str]]:
        """Return HAProxy's ``show servers state`` rows of the lab backend."""
        return self.api().show_servers_state(BACKEND)

    def lb_states(self) -> dict[str, LbState]:
        """Return every server's load balancer state, by server name."""
        return {row["srv_name"]: state_of(int(row["srv_admin_state"]), int(row["srv_uweight"]))
                for row in self.servers_state()}

    def stat_status(self, name: str) -> str:
        """Return a server's ``show stat`` status column, such as ``UP`` or ``MAINT``."""
        rows = self.api().show_stat(BACKEND)
        return next(row["status"] for row in rows if row["svname"] == name)

    def wait_up(self, name: str, timeout: float = 5.0) -> str:
        """Wait until HAProxy shows a server fully UP (after ``UP 1/2``); return its status."""
        procs.wait_until(lambda: self.stat_status(name) == "UP", timeout, interval=0.05)
        return self.stat_status(name)

    def pid(self, name: str) -> int | None:
        """Return the pid of a lab master as its pid file names it, if it runs."""
        pid = procs.read_pid(self.master(name).spec().pid_file)
        return pid if pid is not None and procs.is_alive(pid) else None

    def pool(self, name: str) -> PoolConfig:
        return next(pool for pool in load_config(self.host_config(name)).pools)

    def opcache_start(self, name: str) -> int:
        """Return a master's OPcache start_time, probing up to three times.

        NOTE: the first status-script request to a fresh master is sometimes reset by the
        peer, so a probe that fails is tried again.
        """
        config = load_config(self.host_config(name))
        for attempt in range(3):
            try:
                return Prober(config.probe).probe(config.pools[0]).opcache.start_time
            except ProbeError:
                if attempt == 2:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def request_script(self, name: str, script: str, source: str) -> int:
        """Write a PHP script into a master's docroot (O_EXCL), request it; return the status."""
        spec = self.master(name).spec()
        path = spec.docroot / script
        spec.docroot.mkdir(mode=0o755, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(source)
        with FastCGIClient(spec.listen_address()) as client:
            return client.get(str(path), f"/{script}").status

    def reset_opcache(self, name: str) -> None:
        """Reset a master's OPcache from a request, so its verdict sets restart_due."""
        status = self.request_script(name, f"reset-{time.monotonic_ns()}.php",
                                     "<?php var_dump(opcache_reset());\n")
        assert status == 200

    def hold_request(self, name: str, milliseconds: int) -> threading.Thread:
        """Keep one request running on a master for a while, from a thread; return it."""
        spec = self.master(name).spec()
        script = self.directory / APP_DIR / "slow.php"

        def request() -> None:
            with FastCGIClient(spec.listen_address(), read_timeout=milliseconds / 1000 + 10
                               ) as client:
                client.get(str(script), "/slow.php", f"ms={milliseconds}")

        thread = threading.Thread(target=request, daemon=True)
        thread.start()
        return thread

    def slots(self, name: str) -> SlotBackend:
        """Return the slot backend a host's configuration names."""
        return create_from(load_config(self.host_config(name)))

    def etcd_slot_keys(self, name: str) -> list[str]:
        """Return every etcd key under the slots prefix of a host's configuration."""
        backend = self.slots(name)
        assert isinstance(backend, EtcdBackend)
        prefix = f"{backend.prefix}/slots/"
        # The range end is the prefix with its final "/" raised by one, to "0".
        reply = backend.call("/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix[:-1] + "0"),
                                           "keys_only": True})
        return [base64.b64decode(kv["key"]).decode() for kv in reply.get("kvs", [])]

    def set_host_option(self, name: str, line: str, replacement: str) -> None:
        """Replace one line of a host configuration, which must contain it."""
        path = self.host_config(name)
        text = path.read_text()
        assert f"\n{line}\n" in text, f"{line!r} not in {path}"
        path.write_text(text.replace(f"\n{line}\n", f"\n{replacement}\n"))

    def check(self, name: str) -> subprocess.CompletedProcess[str]:
        return cli("check", "-c", str(self.host_config(name)))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@contextlib.contextmanager
def running_lab(pools: int = 3, slots: str = "sqlite", limit: int = 1) -> Iterator[Lab]:
    """Start a lab behind HAProxy in a directory php-fpm workers can read; stop it after."""
    directory = new_fpm_dir()
    try:
        record = lab_up(directory / "lab", pools, local.OpcacheSettings(), slots=slots,
                        limit=limit)
        yield Lab(record)
    finally:
        lab_down(directory / "lab")
        shutil.rmtree(directory, ignore_errors=True)


@dataclasses.dataclass
class WrkResult:
    """What one wrk run reported."""

    requests: int
    non_2xx: int
    socket_errors: int
    output: str

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors


_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                            r"timeout (\d+)")


def parse_wrk(output: str) -> WrkResult:
    """Parse wrk's summary: requests served, non-2xx/3xx responses and socket errors."""
    served = re.search(r"(\d+) requests in ", output)
    assert served is not None, f"no request count in wrk output:\n{output}"
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = _SOCKET_ERRORS.search(output)
    return WrkResult(requests=int(served.group(1)),
                     non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
                     socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
                     output=output)


@contextlib.contextmanager
def wrk_load(url: str, seconds: int) -> Iterator[list[WrkResult]]:
    """Run wrk (2 threads, 8 connections) against a loopback URL for a bounded time.

    The list yielded contains the parsed result once the block has ended and wrk has exited.
    """
    assert url.startswith("http://127.0.0.1:"), url
    assert seconds <= 15
    program = shutil.which("wrk")
    if program is None:
        pytest.skip("wrk is not installed; apt-get install -y wrk")
    process = subprocess.Popen([program, "-t2", "-c8", f"-d{seconds}s", url],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results: list[WrkResult] = []
    try:
        # wrk needs a moment to open its connections before the test acts.
        time.sleep(0.5)
        yield results
        output, _ = process.communicate(timeout=seconds + 10)
        results.append(parse_wrk(output))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
