"""The FastCGI client: encoding, decoding, addresses, and behaviour against bad peers."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opcache_guard import fastcgi
from opcache_guard.errors import ConfigError, ConnectError, FastCGITimeout, ProtocolError
from opcache_guard.fastcgi import FastCGIClient, RecordDecoder, RecordType

Handler = Callable[[socket.socket], None]


@given(st.binary(max_size=4096))
@settings(max_examples=400)
def test_decoder_arbitrary_bytes(data: bytes) -> None:
    decoder = RecordDecoder()
    try:
        records = decoder.feed(data)
    except ProtocolError:
        return
    assert all(isinstance(record, fastcgi.Record) for record in records)
    assert decoder.pending <= len(data)


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=1, max_value=64))
def test_decoder_any_split(chunks: list[bytes], step: int) -> None:
    wire = b"".join(fastcgi.encode_record(RecordType.STDOUT, 1, chunk) for chunk in chunks)
    decoder = RecordDecoder()
    records = []
    for offset in range(0, len(wire), step):
        records += decoder.feed(wire[offset:offset + step])
    assert [record.content for record in records] == chunks
    assert decoder.pending == 0


@given(st.dictionaries(st.text(min_size=1, max_size=200), st.text(max_size=300), max_size=10))
def test_params_round_trip(params: dict[str, str]) -> None:
    encoded = fastcgi.encode_params(params)
    decoded = fastcgi.decode_params(encoded)
    assert decoded == {k.encode().decode("latin-1"): v.encode().decode("latin-1")
                       for k, v in params.items()}


@given(st.binary(max_size=512))
def test_decode_params_arbitrary_bytes(data: bytes) -> None:
    try:
        fastcgi.decode_params(data)
    except ProtocolError:
        pass


def test_stream_splits_large_content() -> None:
    data = b"x" * 200_000
    records = list(fastcgi.iter_records(fastcgi.encode_stream(RecordType.STDIN, 3, data)))
    assert b"".join(record.content for record in records) == data
    assert records[-1].content == b""
    assert all(len(record.content) <= fastcgi.MAX_CONTENT for record in records)


def test_iter_records_rejects_truncation() -> None:
    wire = fastcgi.encode_record(RecordType.STDOUT, 1, b"hello")
    with pytest.raises(ProtocolError, match="truncated"):
        list(fastcgi.iter_records(wire[:-3]))


@pytest.mark.parametrize("text, expected", [
    ("unix:/run/php/www.sock", fastcgi.Address("unix", path="/run/php/www.sock")),
    ("/run/php/www.sock", fastcgi.Address("unix", path="/run/php/www.sock")),
    ("tcp://127.0.0.1:9000", fastcgi.Address("tcp", host="127.0.0.1", port=9000)),
    ("127.0.0.1:9000", fastcgi.Address("tcp", host="127.0.0.1", port=9000)),
    ("localhost:9000", fastcgi.Address("tcp", host="localhost", port=9000)),
    ("[::1]:9000", fastcgi.Address("tcp", host="::1", port=9000)),
    ("tcp://[::1]:9000", fastcgi.Address("tcp", host="::1", port=9000)),
])
def test_parse_address_forms(text: str, expected: fastcgi.Address) -> None:
    assert fastcgi.parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "127.0.0.1", "unix:relative.sock", "host:0",
                                  "host:70000", "::1:9000", "tcp://"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid address"):
        fastcgi.parse_address(text)


def test_address_str_round_trip() -> None:
    for text in ("unix:/a/b.sock", "127.0.0.1:9000", "[::1]:9000"):
        assert str(fastcgi.parse_address(text)) == text


def test_parse_cgi_output() -> None:
    status, headers, body = fastcgi.parse_cgi_output(
        b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nFile not found.\n")
    assert status == 404
    assert headers["content-type"] == "text/plain"
    assert body == b"File not found.\n"


@pytest.mark.parametrize("stdout", [b"no header block", b"Status: abc\r\n\r\n", b"bad line\r\n\r\n"])
def test_parse_cgi_output_rejects(stdout: bytes) -> None:
    with pytest.raises(ProtocolError):
        fastcgi.parse_cgi_output(stdout)


def _read_request(conn: socket.socket) -> int:
    """Read until the empty STDIN record; return the request id."""
    decoder = RecordDecoder()
    while True:
        for record in decoder.feed(conn.recv(65536)):
            if record.type == RecordType.STDIN and not record.content:
                return record.request_id


def _end(request_id: int, protocol_status: int = 0) -> bytes:
    return fastcgi.encode_record(RecordType.END_REQUEST, request_id,
                                 struct.pack("!IB3x", 0, protocol_status))


def test_client_reads_reply(fake_server: Callable[[Handler], str]) -> None:
    def handler(conn: socket.socket) -> None:
        request_id = _read_request(conn)
        conn.sendall(fastcgi.encode_record(RecordType.STDOUT, request_id,
                                           b"Content-Type: text/plain\r\n\r\npong")
                     + fastcgi.encode_record(RecordType.STDERR, request_id, b"a warning")
                     + _end(request_id))

    reply = FastCGIClient(fake_server(handler)).get("/fpm-ping", "/fpm-ping")
    assert reply.status == 200
    assert reply.body == b"pong"
    assert reply.stderr == b"a warning"


@pytest.mark.parametrize("wire, message", [
    (b"\x02" + b"\0" * 15, "unsupported FastCGI version"),
    (struct.pack("!BBHHBx", 1, 99, 1, 0, 0), "unknown FastCGI record type"),
    (fastcgi.encode_record(RecordType.STDOUT, 1, b"Status: 200\r\n\r\nhalf"), "truncated"),
    (fastcgi.encode_record(RecordType.STDOUT, 1, b"x")[:5], "truncated"),
    (fastcgi.encode_record(RecordType.STDOUT, 7, b"x"), "request id 7"),
    (fastcgi.encode_record(RecordType.END_REQUEST, 1, b"\0"), "shorter than 8"),
    (fastcgi.encode_record(RecordType.BEGIN_REQUEST, 1, b"\0" * 8), "unexpected record type"),
])
def test_client_rejects_malformed(fake_server: Callable[[Handler], str], wire: bytes,
                                  message: str) -> None:
    def handler(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(wire)

    with pytest.raises(ProtocolError, match=message):
        FastCGIClient(fake_server(handler), read_timeout=2).get("/x", "/x")


def test_client_rejects_overloaded(fake_server: Callable[[Handler], str]) -> None:
    def handler(conn: socket.socket) -> None:
        conn.sendall(_end(_read_request(conn), protocol_status=2))

    with pytest.raises(ProtocolError, match="OVERLOADED"):
        FastCGIClient(fake_server(handler)).get("/x", "/x")


def test_client_bounds_reply_size(fake_server: Callable[[Handler], str]) -> None:
    def handler(conn: socket.socket) -> None:
        request_id = _read_request(conn)
        chunk = fastcgi.encode_record(RecordType.STDOUT, request_id, b"y" * 60000)
        try:
            for _ in range(100):
                conn.sendall(chunk)
        except OSError:
            pass

    client = FastCGIClient(fake_server(handler), max_response=1_000_000)
    with pytest.raises(ProtocolError, match="exceeds 1000000 bytes"):
        client.get("/x", "/x")


def test_client_read_timeout(fake_server: Callable[[Handler], str]) -> None:
    release = threading.Event()

    def handler(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(fastcgi.encode_record(RecordType.STDOUT, 1, b"Status: 200\r\n"))
        release.wait(5)

    with pytest.raises(FastCGITimeout, match="within 0.3 s"):
        FastCGIClient(fake_server(handler), read_timeout=0.3).get("/x", "/x")
    release.set()


def test_client_connect_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
        FastCGIClient(f"127.0.0.1:{port}").get("/x", "/x")


def test_client_missing_unix_socket(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(ConnectError, match="No such file"):
        FastCGIClient(f"unix:{tmp_path}/missing.sock").get("/x", "/x")


def test_keep_conn_reuses_connection(fake_server: Callable[[Handler], str]) -> None:
    connections = []

    def handler(conn: socket.socket) -> None:
        connections.append(conn)
        decoder = RecordDecoder()
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for record in decoder.feed(data):
                if record.type == RecordType.STDIN and not record.content:
                    conn.sendall(fastcgi.encode_record(RecordType.STDOUT, record.request_id,
                                                       b"\r\n\r\nok") + _end(record.request_id))

    with FastCGIClient(fake_server(handler), keep_conn=True) as client:
        for _ in range(3):
            assert client.get("/x", "/x").body == b"ok"
    assert len(connections) == 1
