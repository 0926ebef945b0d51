"""Run HAProxy in front of php-fpm pools on loopback, in a directory of its own, stopped by pid.

The configuration follows what works with php-fpm behind HAProxy 2.6:

- an ``fcgi-app`` section with the docroot, and ``use-fcgi-app`` in the backend, whose
  servers speak ``proto fcgi``;
- ``no option keep-conn`` in the fcgi-app, because kept FastCGI connections pin php-fpm
  workers and stall other clients, and a server ``maxconn`` equal to the pool's
  ``pm.max_children``, so requests wait in HAProxy's queue rather than in php-fpm's backlog;
- health checks over FastCGI on the pool's ping path, expecting ``pong``;
- a runtime API socket (``stats socket``), and an HTTP log on stdout, which the launcher
  sends to ``haproxy.log`` in the directory.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

from opcache_guard import procs
from opcache_guard.errors import ConfigError
from opcache_guard.lb.haproxy_api import RuntimeAPI, SocketAddress, wait_for_socket

HAPROXY_PROGRAMS = ("haproxy",)
PING_PATH = "/fpm-ping"
PING_RESPONSE = "pong"


@dataclasses.dataclass(frozen=True)
class FcgiServer:
    """One php-fpm pool as an HAProxy server line.

    Attributes:
        name: the server name in HAProxy (``set server BACKEND/NAME``).
        listen: the pool's listen address, ``127.0.0.1:9000`` or a unix socket path
            (``unix:/path`` or ``/path``).
        maxconn: the pool's ``pm.max_children``.
    """

    name: str
    listen: str
    maxconn: int

    def address(self) -> str:
        """Return the address as HAProxy writes it on a server line."""
        if self.listen.startswith("unix:"):
            return self.listen[len("unix:"):]
        return self.listen


@dataclasses.dataclass
class HaproxyServer:
    """One HAProxy process with a single HTTP frontend and a single FastCGI backend.

    Attributes:
        directory: where the configuration, admin socket and log go; it must be short enough
            for a unix socket path (about 100 bytes).
        servers: the php-fpm pools behind the backend.
        docroot: the document root passed to php-fpm (``SCRIPT_FILENAME`` = docroot + path).
        backend: the backend name, which the runtime API addresses.
        port: the frontend's TCP port on 127.0.0.1; 0 picks a free one.
        check_interval: seconds between health checks (``inter``).
        socket_level: ``admin`` to allow state changes, ``operator`` or ``user`` to deny them.
        index: the ``index`` of the fcgi-app.
    """

    directory: Path
    servers: list[FcgiServer]
    docroot: Path
    backend: str = "php"
    port: int = 0
    check_interval: float = 1.0
    socket_level: str = "admin"
    index: str = "index.php"
    pid: int = 0

    @property
    def url(self) -> str:
        """The frontend's base URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_socket(self) -> Path:
        """The runtime API socket path."""
        return self.directory / "admin.sock"

    @property
    def config_file(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def log_file(self) -> Path:
        return self.directory / "haproxy.log"

    def api(self, timeout: float = 5.0) -> RuntimeAPI:
        """Return a runtime API client for this HAProxy's admin socket."""
        return RuntimeAPI(SocketAddress(path=str(self.admin_socket)), timeout)

    def start(self, timeout: float = 10.0) -> HaproxyServer:
        """Write the configuration, start HAProxy, and wait until its admin socket responds.

        Returns:
            This object, with ``port`` and ``pid`` set.

        Raises:
            ConfigError: the servers or settings are invalid, or HAProxy rejects the file.
            LabError: HAProxy is not installed, exited, or its socket did not respond in time.
        """
        program = procs.require_program(HAPROXY_PROGRAMS, "haproxy")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or procs.free_port()
        self.config_file.write_text(render_config(self))
        self._check_config(program)

        api = self.api(timeout=1.0)
        self.pid = procs.launch([program, "-f", str(self.config_file), "-db"], self.log_file,
                                lambda: wait_for_socket(api, 0.2),
                                name=f"HAProxy with admin socket {self.admin_socket}",
                                marker=str(self.config_file), timeout=timeout, cwd=self.directory)
        return self

    def stop(self) -> None:
        """Stop the HAProxy process this object started."""
        if self.pid:
            procs.stop(self.pid, str(self.config_file))
            self.pid = 0

    def _check_config(self, program: str) -> None:
        check = subprocess.run([program, "-c", "-f", str(self.config_file)], capture_output=True,
                               text=True, check=False, timeout=30)
        if check.returncode != 0:
            raise ConfigError(f"HAProxy rejected {self.config_file}: "
                              f"{(check.stderr or check.stdout).strip()}")


def render_config(haproxy: HaproxyServer) -> str:
    """Render haproxy.cfg for one frontend and one FastCGI backend.

    Raises:
        ConfigError: there are no servers, a name repeats, or a value is out of range.
    """
    _validate(haproxy)
    inter_ms = max(1, round(haproxy.check_interval * 1000))
    lines = [
        "global",
        f"    stats socket {haproxy.admin_socket} mode 600 level {haproxy.socket_level}",
        "    log stdout format raw local0",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout queue 10s",
        "",
        "frontend web",
        f"    bind 127.0.0.1:{haproxy.port}",
        f"    default_backend {haproxy.backend}",
        "",
        "fcgi-app php-fpm",
        f"    docroot {haproxy.docroot}",
        f"    index {haproxy.index}",
        "    no option keep-conn",
        "",
        f"backend {haproxy.backend}",
        "    balance roundrobin",
        "    use-fcgi-app php-fpm",
        "    option httpchk",
        f"    http-check send meth GET uri {PING_PATH}",
        f"    http-check expect string {PING_RESPONSE}",
    ]
    for server in haproxy.servers:
        lines.append(f"    server {server.name} {server.address()} proto fcgi "
                     f"maxconn {server.maxconn} check inter {inter_ms}ms fall 2 rise 1")
    return "\n".join(lines) + "\n"


def _validate(haproxy: HaproxyServer) -> None:
    if not haproxy.servers:
        raise ConfigError(f"HAProxy backend {haproxy.backend} has no servers; give at least one")
    names = [server.name for server in haproxy.servers]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"HAProxy backend {haproxy.backend} repeats server names "
                          f"{', '.join(repeated)}; give each pool its own name")
    for server in haproxy.servers:
        if server.maxconn < 1:
            raise ConfigError(f"HAProxy server {server.name}: maxconn {server.maxconn} must be "
                              "at least 1; use the pool's pm.max_children")
    if haproxy.socket_level not in ("admin", "operator", "user"):
        raise ConfigError(f"HAProxy socket level {haproxy.socket_level!r} is invalid; use "
                          "admin, operator or user")
    if haproxy.check_interval <= 0:
        raise ConfigError(f"HAProxy check interval {haproxy.check_interval:g} s must be "
                          "positive")
    # sun_path has room for 108 bytes on Linux, including the terminating NUL.
    if len(os.fsencode(haproxy.admin_socket)) > 107:
        raise ConfigError(f"HAProxy admin socket path {haproxy.admin_socket} is longer than a "
                          "unix socket allows; use a shorter directory")
