"""A client for HAProxy's runtime API (the ``stats socket``), one command per connection.

Without the interactive ``prompt`` mode, HAProxy reads one line, writes the whole response and
closes the connection, so a command is: connect, send the line, read until end of file.
The admin socket is a unix socket or a TCP port. A TCP socket must be on loopback, because the
runtime API has no authentication and must not be reachable over a network.
"""

from __future__ import annotations

import csv
import dataclasses
import ipaddress
import socket
import time

from opcache_guard.errors import ConfigError, LoadBalancerError

#: Responses of HAProxy 2.6 that report an error in place of a result.
_ERROR_ANSWERS = ("No such backend", "No such server", "Can't find backend", "No such proxy",
                  "Permission denied", "Unknown command", "Require ", "Invalid ")


@dataclasses.dataclass(frozen=True)
class SocketAddress:
    """An admin socket address: a unix socket path, or a loopback host and port."""

    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_socket(text: str) -> SocketAddress:
    """Parse ``unix:/path``, ``/path``, ``host:port`` or ``[::1]:port``.

    Raises:
        ConfigError: the value is empty, has no valid port, or names a host off loopback.
    """
    text = text.strip()
    if text.startswith("unix:"):
        text = text[len("unix:"):]
        if not text:
            raise ConfigError("[lb] socket = 'unix:' has no path; write unix:/run/haproxy/admin.sock")
    if text.startswith("/"):
        return SocketAddress(path=text)

    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"[lb] socket = {text!r} is neither a unix socket path nor host:port; "
                          "write unix:/run/haproxy/admin.sock or 127.0.0.1:9999")
    if not _is_loopback(host):
        raise ConfigError(f"[lb] socket = {text!r} is not on loopback; the runtime API has no "
                          "authentication, so bind it to 127.0.0.1 or ::1 or use a unix socket")
    return SocketAddress(host=host, port=int(port_text))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RuntimeAPI:
    """Send commands to one HAProxy admin socket.

    Arguments:
        address: the socket, as parsed by ``parse_socket``.
        timeout: seconds allowed for connecting and for the whole response.
    """

    def __init__(self, address: SocketAddress, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout

    def execute(self, command: str) -> str:
        """Send one command and return HAProxy's whole response.

        Raises:
            LoadBalancerError: the socket is missing, refused the connection, or timed out.
        """
        deadline = time.monotonic() + self.timeout
        try:
            with self._connect() as sock:
                sock.sendall(command.encode() + b"\n")
                return self._read_all(sock, deadline)
        except FileNotFoundError as error:
            raise LoadBalancerError(f"HAProxy admin socket {self.address} does not exist; check "
                                    "the 'stats socket' line of haproxy.cfg") from error
        except ConnectionRefusedError as error:
            raise LoadBalancerError(f"HAProxy admin socket {self.address} refused the "
                                    "connection; check that HAProxy is running") from error
        except PermissionError as error:
            raise LoadBalancerError(f"HAProxy admin socket {self.address}: permission denied "
                                    "opening it; run as a user that may read and write "
                                    "it") from error
        except TimeoutError as error:
            raise LoadBalancerError(f"HAProxy admin socket {self.address}: {command!r} timed out "
                                    f"after {self.timeout:g} s") from error
        except OSError as error:
            raise LoadBalancerError(f"HAProxy admin socket {self.address}: {command!r} "
                                    f"failed: {error}") from error

    def _connect(self) -> socket.socket:
        if self.address.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = self.address.path
        else:
            family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            target = (self.address.host, self.address.port)
        sock.settimeout(self.timeout)
        try:
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _read_all(sock: socket.socket, deadline: float) -> str:
        chunks: list[bytes] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(chunk)

    def command(self, command: str) -> str:
        """Run a command that returns data, and raise when HAProxy responds with an error.

        Raises:
            LoadBalancerError: the transport failed, or HAProxy responded with an error message.
        """
        response = self.execute(command)
        check_response(self.address, command, response)
        return response

    def change(self, command: str) -> None:
        """Run a command whose response is an empty line on success, such as ``set server``.

        Raises:
            LoadBalancerError: the transport failed, or HAProxy responded with any message.
        """
        response = self.execute(command)
        if response.strip():
            check_response(self.address, command, response)
            raise LoadBalancerError(f"HAProxy at {self.address} rejected {command!r}: "
                                    f"{_first_line(response)}")

    def show_stat(self, backend: str) -> list[dict[str, str]]:
        """Return the ``show stat`` CSV rows of a backend's servers, keyed by column name.

        Raises:
            LoadBalancerError: the backend is unknown or the response is not CSV.
        """
        # Type 4 selects server rows only, and -1 all servers of that backend.
        response = self.command(f"show stat {backend} 4 -1")
        lines = response.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise LoadBalancerError(f"HAProxy at {self.address}: 'show stat' returned no CSV "
                                    f"header for backend {backend}: {_first_line(response)}")
        lines[0] = lines[0][2:]
        return [row for row in csv.DictReader(line for line in lines if line)
                if row.get("pxname") == backend]

    def show_servers_state(self, backend: str) -> list[dict[str, str]]:
        """Return the ``show servers state`` rows of a backend, keyed by column name.

        Raises:
            LoadBalancerError: the backend is unknown or the response has an unknown format.
        """
        response = self.command(f"show servers state {backend}")
        lines = [line for line in response.splitlines() if line.strip()]
        # The first line is the format version; version 1 is the only one HAProxy 2.6 writes.
        if len(lines) < 2 or lines[0].strip() != "1" or not lines[1].startswith("# "):
            raise LoadBalancerError(f"HAProxy at {self.address}: 'show servers state {backend}' "
                                    f"returned an unknown format: {_first_line(response)}")
        columns = lines[1][2:].split()
        return [dict(zip(columns, line.split(), strict=False)) for line in lines[2:]]


def check_response(address: SocketAddress, command: str, response: str) -> None:
    """Raise a clear error when a response is one of HAProxy's error messages.

    Raises:
        LoadBalancerError: the response names an unknown backend or server, or missing rights.
    """
    first = _first_line(response)
    if first.startswith("Permission denied"):
        raise LoadBalancerError(f"HAProxy admin socket {address} rejected {command!r}: "
                                "permission denied; the socket needs 'level admin' on its "
                                "'stats socket' line")
    if first.startswith(("No such backend", "Can't find backend", "No such proxy")):
        raise LoadBalancerError(f"HAProxy at {address} has no backend named in {command!r}; "
                                "check [lb] haproxy_backend")
    if first.startswith("No such server"):
        raise LoadBalancerError(f"HAProxy at {address} has no server named in {command!r}; "
                                "check [lb] server")
    if first.startswith(_ERROR_ANSWERS):
        raise LoadBalancerError(f"HAProxy at {address} rejected {command!r}: {first}")


def _first_line(response: str) -> str:
    stripped = response.strip()
    return stripped.splitlines()[0] if stripped else "(empty response)"


def wait_for_socket(api: RuntimeAPI, timeout: float) -> bool:
    """Return whether the admin socket responds to ``show info`` within timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "Name: HAProxy" in api.execute("show info"):
                return True
        except LoadBalancerError:
            pass
        time.sleep(0.02)
    return False
