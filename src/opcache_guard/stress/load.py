"""Send many concurrent FastCGI requests to the entry script, bounded in time and count.

Two clients do the same work: ``threads`` runs one blocking FastCGIClient per thread, and
``asyncio`` runs one coroutine per connection slot in a single thread, with the protocol done
by hand from ``fastcgi.encode_request`` and ``RecordDecoder``. Both open a new connection per
request, as HAProxy does with ``no option keep-conn``, so no FPM worker stays pinned to one
client. bench/stress_rate.py compares their rates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable

from opcache_guard.errors import FastCGIError, ProtocolError
from opcache_guard.fastcgi import (
    DEFAULT_MAX_RESPONSE,
    Address,
    FastCGIClient,
    RecordDecoder,
    RecordType,
    Response,
    cgi_params,
    encode_request,
    finish_reply,
)

CLIENTS = ("asyncio", "threads")

ReplyHandler = Callable[[int, Response], None]
ErrorHandler = Callable[[int, Exception, float], None]


@dataclasses.dataclass(frozen=True)
class LoadSettings:
    """Bounds and shape of the load.

    Arguments:
        concurrency: requests in flight at once.
        duration: seconds after which no new request starts.
        max_requests: requests after which no new request starts; 0 for no count bound.
        client: "asyncio" or "threads".
        timeout: seconds to connect and read one whole reply.
    """

    concurrency: int = 8
    duration: float = 10.0
    max_requests: int = 0
    client: str = "asyncio"
    timeout: float = 10.0


@dataclasses.dataclass
class LoadTarget:
    """Destination of the requests, and the handlers of their outcomes."""

    address: Address
    script_filename: str
    script_name: str
    current_round: Callable[[], int]
    on_reply: ReplyHandler
    on_error: ErrorHandler


class _Budget:
    """Hand out request tickets until the deadline, the count or a stop request."""

    def __init__(self, settings: LoadSettings, stop: threading.Event) -> None:
        self.deadline = time.monotonic() + settings.duration
        self.max_requests = settings.max_requests
        self.stop = stop
        self._issued = itertools.count(1)

    def take(self) -> bool:
        if self.stop.is_set() or time.monotonic() >= self.deadline:
            return False
        return not self.max_requests or next(self._issued) <= self.max_requests


def run_load(target: LoadTarget, settings: LoadSettings, stop: threading.Event) -> float:
    """Run the load until a bound is reached; return the elapsed seconds.

    Replies and errors go to the target's handlers, from the load's own threads.
    """
    started = time.monotonic()
    budget = _Budget(settings, stop)
    if settings.client == "threads":
        _run_threads(target, settings, budget)
    else:
        asyncio.run(_run_asyncio(target, settings, budget))
    return time.monotonic() - started


def _query(round_no: int) -> str:
    return f"round={round_no}"


def _run_threads(target: LoadTarget, settings: LoadSettings, budget: _Budget) -> None:
    def work() -> None:
        client = FastCGIClient(target.address, connect_timeout=settings.timeout,
                               read_timeout=settings.timeout)
        while budget.take():
            round_no = target.current_round()
            sent_at = time.monotonic()
            try:
                reply = client.get(target.script_filename, target.script_name, _query(round_no))
            except FastCGIError as exc:
                target.on_error(round_no, exc, sent_at)
                continue
            target.on_reply(round_no, reply)

    threads = [threading.Thread(target=work, name=f"stress-load-{index}", daemon=True)
               for index in range(settings.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


async def _run_asyncio(target: LoadTarget, settings: LoadSettings, budget: _Budget) -> None:
    async def work() -> None:
        while budget.take():
            round_no = target.current_round()
            sent_at = time.monotonic()
            params = cgi_params(target.script_filename, target.script_name, _query(round_no))
            try:
                reply = await asyncio.wait_for(_request(target.address, params, sent_at),
                                               settings.timeout)
            except (OSError, TimeoutError, FastCGIError) as exc:
                target.on_error(round_no, exc, sent_at)
                continue
            target.on_reply(round_no, reply)

    await asyncio.gather(*(work() for _ in range(settings.concurrency)))


async def _request(address: Address, params: dict[str, str], started: float) -> Response:
    if address.is_unix:
        reader, writer = await asyncio.open_unix_connection(address.path)
    else:
        reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(encode_request(1, params))
        decoder = RecordDecoder()
        stdout = bytearray()
        stderr = bytearray()
        while True:
            data = await reader.read(65536)
            if not data:
                raise ProtocolError(f"{address} closed the connection before the reply ended "
                                    "(truncated reply)")
            for record in decoder.feed(data):
                if record.type == RecordType.STDOUT:
                    stdout += record.content
                elif record.type == RecordType.STDERR:
                    stderr += record.content
                elif record.type == RecordType.END_REQUEST:
                    return finish_reply(address, record, bytes(stdout), bytes(stderr), started)
            if len(stdout) + len(stderr) > DEFAULT_MAX_RESPONSE:
                raise ProtocolError(f"reply from {address} exceeds {DEFAULT_MAX_RESPONSE} bytes")
    finally:
        writer.close()
