"""A small FastCGI client for talking to php-fpm pools.

The protocol is FastCGI 1.0 (records of an 8-byte header, content and padding). Only the
responder role is used. The client connects over TCP (IPv4 and IPv6) or unix sockets, with
separate connect and read timeouts, and can keep a connection open between requests
(FCGI_KEEP_CONN). It bounds how long it waits and how much it reads, so a misbehaving peer
cannot make it hang or grow without limit.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Self

from opcache_guard.errors import (
    ConfigError,
    ConnectError,
    FastCGITimeout,
    ProtocolError,
    ResolveError,
)

VERSION = 1
HEADER = struct.Struct("!BBHHBx")
HEADER_SIZE = HEADER.size
MAX_CONTENT = 0xFFFF
DEFAULT_MAX_RESPONSE = 16 * 1024 * 1024

_KEEP_CONN = 1
_ROLE_RESPONDER = 1


class RecordType(enum.IntEnum):
    """FastCGI record types (FastCGI 1.0 specification, section 8)."""

    BEGIN_REQUEST = 1
    ABORT_REQUEST = 2
    END_REQUEST = 3
    PARAMS = 4
    STDIN = 5
    STDOUT = 6
    STDERR = 7
    DATA = 8
    GET_VALUES = 9
    GET_VALUES_RESULT = 10
    UNKNOWN_TYPE = 11


class ProtocolStatus(enum.IntEnum):
    """protocolStatus values of an END_REQUEST record."""

    REQUEST_COMPLETE = 0
    CANT_MPX_CONN = 1
    OVERLOADED = 2
    UNKNOWN_ROLE = 3


@dataclasses.dataclass(frozen=True)
class Address:
    """A pool's listen address: a unix socket path, or a TCP host and port."""

    family: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return self.family == "unix"

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]/]+)):(?P<port>[0-9]+)$")


def parse_address(text: str) -> Address:
    """Parse a pool address.

    Accepted forms: ``unix:/path``, ``/path``, ``tcp://host:port``, ``host:port`` and
    ``[::1]:port``.

    Raises:
        ConfigError: the text matches none of those forms, or the port is out of range.
    """
    value = text.strip()
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        path = path.removeprefix("//")
        if not path.startswith("/"):
            raise ConfigError(f"invalid address {text!r}: a unix socket path must be absolute, "
                              "for example unix:/run/php/php8.2-fpm.sock")
        return Address("unix", path=path)
    if value.startswith("/"):
        return Address("unix", path=value)
    value = value.removeprefix("tcp://")
    match = _HOST_PORT.match(value)
    if match is None:
        raise ConfigError(f"invalid address {text!r}: use unix:/path, /path, tcp://host:port, "
                          "host:port or [::1]:port")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise ConfigError(f"invalid address {text!r}: port {port} is outside 1-65535")
    host = match["v6"] or match["host"]
    if match["v6"]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ConfigError(f"invalid address {text!r}: {host!r} in brackets is not an IPv6 "
                              "address; write [::1]:port, or host:port without brackets") from exc
    return Address("tcp", host=host, port=port)


@dataclasses.dataclass(frozen=True)
class Record:
    """One FastCGI record as read from the wire."""

    type: int
    request_id: int
    content: bytes


def encode_record(record_type: int, request_id: int, content: bytes = b"") -> bytes:
    """Encode one record, padding its content to a multiple of 8 bytes."""
    if len(content) > MAX_CONTENT:
        raise ValueError(f"record content of {len(content)} bytes exceeds {MAX_CONTENT}")
    padding = -len(content) % 8
    header = HEADER.pack(VERSION, record_type, request_id, len(content), padding)
    return header + content + b"\0" * padding


def encode_stream(record_type: int, request_id: int, data: bytes) -> bytes:
    """Encode a stream (PARAMS, STDIN) as records ending with an empty one."""
    chunks = [
        encode_record(record_type, request_id, data[offset:offset + MAX_CONTENT])
        for offset in range(0, len(data), MAX_CONTENT)
    ]
    chunks.append(encode_record(record_type, request_id))
    return b"".join(chunks)


def _encode_length(length: int) -> bytes:
    if length < 128:
        return bytes([length])
    return struct.pack("!I", length | 0x80000000)


def encode_params(params: Mapping[str, str]) -> bytes:
    """Encode name-value pairs as the body of a PARAMS stream."""
    out = bytearray()
    for name, value in params.items():
        name_bytes = name.encode()
        value_bytes = value.encode()
        out += _encode_length(len(name_bytes)) + _encode_length(len(value_bytes))
        out += name_bytes + value_bytes
    return bytes(out)


def decode_params(data: bytes) -> dict[str, str]:
    """Decode a name-value pair body, as sent in GET_VALUES_RESULT.

    Raises:
        ProtocolError: a length runs past the end of the data.
    """
    result: dict[str, str] = {}
    offset = 0
    while offset < len(data):
        lengths = []
        for _ in range(2):
            if offset >= len(data):
                raise ProtocolError("truncated name-value pair length")
            if data[offset] < 128:
                lengths.append(data[offset])
                offset += 1
            else:
                if offset + 4 > len(data):
                    raise ProtocolError("truncated 4-byte name-value pair length")
                lengths.append(struct.unpack_from("!I", data, offset)[0] & 0x7FFFFFFF)
                offset += 4
        name_len, value_len = lengths
        if offset + name_len + value_len > len(data):
            raise ProtocolError("name-value pair runs past the end of the record")
        name = data[offset:offset + name_len].decode("latin-1")
        offset += name_len
        result[name] = data[offset:offset + value_len].decode("latin-1")
        offset += value_len
    return result


class RecordDecoder:
    """Incremental decoder: feed it bytes as they arrive and collect whole records.

    It never blocks, and raises ProtocolError once more than ``max_buffer`` bytes of input
    are pending, so a peer cannot make it buffer without limit.
    """

    def __init__(self, max_buffer: int = HEADER_SIZE + MAX_CONTENT + 255) -> None:
        self._buffer = bytearray()
        self._max_buffer = max_buffer

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole record."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Record]:
        """Add received bytes and return every record they complete.

        Raises:
            ProtocolError: a header has the wrong version or an unknown record type.
        """
        self._buffer += data
        records = []
        while len(self._buffer) >= HEADER_SIZE:
            version, record_type, request_id, length, padding = HEADER.unpack_from(self._buffer)
            if version != VERSION:
                raise ProtocolError(f"unsupported FastCGI version {version} in record header; "
                                    "the peer is probably not a FastCGI server")
            if record_type not in RecordType.__members__.values():
                raise ProtocolError(f"unknown FastCGI record type {record_type}")
            total = HEADER_SIZE + length + padding
            if len(self._buffer) < total:
                break
            content = bytes(self._buffer[HEADER_SIZE:HEADER_SIZE + length])
            del self._buffer[:total]
            records.append(Record(record_type, request_id, content))
        if len(self._buffer) > self._max_buffer:
            raise ProtocolError("FastCGI record larger than the protocol allows")
        return records


@dataclasses.dataclass
class Response:
    """A FastCGI responder's reply, split into CGI headers and body."""

    status: int
    headers: dict[str, str]
    body: bytes
    stderr: bytes
    app_status: int
    elapsed: float

    def header(self, name: str) -> str | None:
        """Return a header's value by case-insensitive name, or None."""
        return self.headers.get(name.lower())


def parse_cgi_output(stdout: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split a responder's stdout into status, lower-cased headers and body.

    Raises:
        ProtocolError: the output has no header block, or the Status header is invalid.
    """
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, body = stdout.partition(separator)
        if found:
            break
    else:
        raise ProtocolError("reply has no CGI header block")
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines():
        name, colon, value = line.partition(":")
        if not colon:
            raise ProtocolError(f"invalid CGI header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    status = 200
    if "status" in headers:
        code = headers["status"].split(" ", 1)[0]
        if not code.isdigit():
            raise ProtocolError(f"invalid CGI Status header {headers['status'][:80]!r}")
        status = int(code)
    return status, headers, body


def encode_request(request_id: int, params: Mapping[str, str], stdin: bytes = b"",
                   keep_conn: bool = False) -> bytes:
    """Encode a whole responder request: BEGIN_REQUEST, the PARAMS and STDIN streams."""
    flags = _KEEP_CONN if keep_conn else 0
    begin = struct.pack("!HB5x", _ROLE_RESPONDER, flags)
    return b"".join([
        encode_record(RecordType.BEGIN_REQUEST, request_id, begin),
        encode_stream(RecordType.PARAMS, request_id, encode_params(params)),
        encode_stream(RecordType.STDIN, request_id, stdin),
    ])


def finish_reply(address: Address, end: Record, stdout: bytes, stderr: bytes,
                 started: float) -> Response:
    """Build the Response of a request from its END_REQUEST record and its streams.

    Raises:
        ProtocolError: the END_REQUEST record is short or the server rejected the request.
    """
    if len(end.content) < 8:
        raise ProtocolError("END_REQUEST record shorter than 8 bytes")
    app_status, protocol_status = struct.unpack_from("!IB", end.content)
    if protocol_status != ProtocolStatus.REQUEST_COMPLETE:
        try:
            name = ProtocolStatus(protocol_status).name
        except ValueError:
            name = str(protocol_status)
        raise ProtocolError(f"{address} rejected the request: {name}")
    status, headers, body = parse_cgi_output(stdout) if stdout else (500, {}, b"")
    return Response(status, headers, body, stderr, app_status, time.monotonic() - started)


class FastCGIClient:
    """Send responder requests to one FastCGI address.

    With ``keep_conn`` the connection stays open between requests (FCGI_KEEP_CONN) and is
    reopened when the server closed it. Not safe for use by several threads at once.

    Arguments:
        address: where the pool listens, as an Address or any text parse_address accepts.
        connect_timeout: seconds to wait for the connection.
        read_timeout: seconds to wait for the whole reply.
        keep_conn: keep the connection open for the next request.
        max_response: bytes of stdout plus stderr after which the reply is rejected.
    """

    def __init__(
        self,
        address: Address | str,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        keep_conn: bool = False,
        max_response: int = DEFAULT_MAX_RESPONSE,
    ) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keep_conn = keep_conn
        self.max_response = max_response
        self._sock: socket.socket | None = None
        self._next_id = 1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept connection, if any."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        address = self.address
        try:
            if address.is_unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                sock.connect(address.path)
            else:
                sock = socket.create_connection((address.host, address.port),
                                                timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError as exc:
            raise FastCGITimeout(f"connecting to {address} timed out after "
                                 f"{self.connect_timeout:g} s") from exc
        except socket.gaierror as exc:
            raise ResolveError(f"cannot resolve host {address.host} ({exc.strerror}); check "
                               "the host name in the address, or use an IP address") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConnectError(f"cannot connect to {address}: {reason}", reason) from exc
        return sock

    def request(
        self,
        params: Mapping[str, str],
        stdin: bytes = b"",
    ) -> Response:
        """Send one request and return the reply.

        Raises:
            ConnectError: nothing accepts connections at the address.
            ResolveError: the host name does not resolve.
            FastCGITimeout: connecting or reading took longer than its timeout.
            ProtocolError: the reply is malformed, truncated or too large.
        """
        started = time.monotonic()
        request_id = self._next_id
        self._next_id = self._next_id % 0xFFFF + 1
        message = encode_request(request_id, params, stdin, self.keep_conn)
        sock = self._sock
        reused = sock is not None
        if sock is None:
            sock = self._connect()
        try:
            try:
                sock.sendall(message)
            except OSError:
                if not reused:
                    raise
                # The server closed a kept connection while it was idle: reconnect once.
                sock.close()
                sock = self._connect()
                sock.sendall(message)
            response = self._read_reply(sock, request_id, started)
        except TimeoutError as exc:
            sock.close()
            self._sock = None
            raise FastCGITimeout(f"no complete reply from {self.address} within "
                                 f"{self.read_timeout:g} s") from exc
        except OSError as exc:
            sock.close()
            self._sock = None
            reason = exc.strerror or str(exc)
            raise ConnectError(f"connection to {self.address} failed: {reason}",
                               reason) from exc
        except ProtocolError:
            sock.close()
            self._sock = None
            raise
        if self.keep_conn:
            self._sock = sock
        else:
            sock.close()
            self._sock = None
        return response


    def _read_reply(self, sock: socket.socket, request_id: int, started: float) -> Response:
        deadline = started + self.read_timeout
        decoder = RecordDecoder()
        stdout = bytearray()
        stderr = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise ProtocolError(f"{self.address} closed the connection before the reply "
                                    "ended (truncated reply)")
            for record in decoder.feed(data):
                if record.request_id != request_id:
                    if record.type == RecordType.UNKNOWN_TYPE or record.request_id == 0:
                        continue
                    raise ProtocolError(f"reply for request id {record.request_id}, "
                                        f"expected {request_id}")
                if record.type == RecordType.STDOUT:
                    stdout += record.content
                elif record.type == RecordType.STDERR:
                    stderr += record.content
                elif record.type == RecordType.END_REQUEST:
                    return finish_reply(self.address, record, bytes(stdout), bytes(stderr), started)
                else:
                    raise ProtocolError(f"unexpected record type {record.type} in a reply")
                if len(stdout) + len(stderr) > self.max_response:
                    raise ProtocolError(f"reply from {self.address} exceeds "
                                        f"{self.max_response} bytes")

    def get(self, script_filename: str, script_name: str, query: str = "",
            extra: Mapping[str, str] | None = None) -> Response:
        """Send a GET request for one script, with the CGI parameters php-fpm needs."""
        return self.request(cgi_params(script_filename, script_name, query, extra))


def cgi_params(script_filename: str, script_name: str, query: str = "",
               extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build the CGI parameters of a GET request for one script."""
    params = {
        "GATEWAY_INTERFACE": "FastCGI/1.0",
        "REQUEST_METHOD": "GET",
        "SCRIPT_FILENAME": script_filename,
        "SCRIPT_NAME": script_name,
        "REQUEST_URI": script_name + ("?" + query if query else ""),
        "DOCUMENT_URI": script_name,
        "QUERY_STRING": query,
        "SERVER_SOFTWARE": "opcache-guard",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "SERVER_NAME": "localhost",
        "CONTENT_LENGTH": "0",
    }
    if extra:
        params.update(extra)
    return params


def iter_records(data: bytes) -> Iterable[Record]:
    """Decode a complete byte string into records (for tests and tools)."""
    decoder = RecordDecoder()
    yield from decoder.feed(data)
    if decoder.pending:
        raise ProtocolError(f"{decoder.pending} bytes of a truncated record at the end")
