"""Run a single-node etcd on loopback, in a directory of its own, and stop it by pid."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path

from opcache_guard import procs


@dataclasses.dataclass
class EtcdServer:
    """One etcd member listening on 127.0.0.1; ``url`` is its client endpoint."""

    directory: Path
    name: str = "opcache-guard-test"
    client_port: int = 0
    peer_port: int = 0
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 15.0) -> EtcdServer:
        """Start etcd and wait until it reports healthy.

        Raises:
            GuardError: etcd is not installed, exited, or did not become healthy in time.
        """
        program = procs.require_program(["etcd"], "etcd-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.client_port = self.client_port or procs.free_port()
        self.peer_port = self.peer_port or procs.free_port()
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            program, "--name", self.name, "--data-dir", str(self.directory / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}", "--logger=zap",
            "--log-outputs", str(self.directory / "etcd.log"),
        ]
        self.pid = procs.launch(argv, self.directory / "etcd.stdout", self.healthy,
                                name=f"etcd on {self.url}", marker=str(self.directory / "data"),
                                timeout=timeout, interval=0.05)
        return self

    def healthy(self) -> bool:
        """Return whether etcd answers /health with health true."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=0.5) as reply:
                return bool(json.load(reply).get("health") in ("true", True))
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Stop the etcd process this object started."""
        if self.pid:
            procs.stop(self.pid, str(self.directory / "data"))
            self.pid = 0
