"""A minimal HTTP/1.1 GET client on asyncio, for the event loop's small GetObjects (small_gets.py).

Ours, not aiohttp's, for CPU: aiohttp spent ~390 µs of CPU per small GET and ~0.3 s on its import, this
spends ~220 µs and nothing (bench/http_paths.py). It can be this small because it is never the last word:
it does only a GET answered with a Content-Length body on a kept-alive connection, and anything else (a
chunked or oversized answer, a broken or slow connection, a malformed head) raises HttpGetError, and the
caller hands the file to a worker, which fetches it through botocore. Every body it returns is checked
against the object's MD5 before it is written.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from .sigv4 import canonical_host

MAX_HEAD = 64 * 1024  # an answer's status line and headers; S3's are a few hundred bytes
_WATCH_EVERY = 1.0  # seconds between two looks for connections that stopped answering


class HttpGetError(Exception):
    """The request got no answer this client takes: the caller falls back on botocore."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes  # empty unless status is 200


class _Connection(asyncio.Protocol):
    """One kept-alive connection with at most one request on it."""

    def __init__(self):
        self._max_body = 0  # of the answer to the request on the way (`request`)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_seen = time.monotonic()  # of the request sent or the data received, for the read timeout
        self._waiter: asyncio.Future | None = None
        self._buffer = bytearray()
        self._head: tuple[int, dict[str, str], bool] | None = None  # status, headers, reusable
        self._length = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(HttpGetError(f"connection closed: {exc}" if exc else "connection closed"))

    def request(self, data: bytes, max_body: int) -> asyncio.Future:
        self._max_body = max_body
        self._waiter = asyncio.get_running_loop().create_future()
        self.last_seen = time.monotonic()
        self.transport.write(data)
        return self._waiter

    @property
    def busy(self) -> bool:
        return self._waiter is not None

    def abort(self, reason: str) -> None:
        self._fail(HttpGetError(reason))
        self.closed = True
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self._waiter is None:  # nothing asked: a server that talks out of turn is not reused
            self.abort("data without a request")
            return
        self._buffer += data
        try:
            if self._head is None and not self._parse_head():
                return
        except HttpGetError as exc:
            self.abort(str(exc))
            return
        status, headers, reusable = self._head
        if status != 200:  # the answer's head is all the caller needs; the body is dropped with the connection
            self._answer(Answer(status, headers, b""), reusable=False)
        elif len(self._buffer) >= self._length:
            if len(self._buffer) > self._length:
                self.abort("more bytes than the Content-Length")
                return
            self._answer(Answer(status, headers, bytes(self._buffer)), reusable=reusable)

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise HttpGetError("an answer's head without an end")
            return False
        lines = self._buffer[:end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit():
            raise HttpGetError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise HttpGetError("a malformed header line")
            name = name.lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        status = int(code)
        length = headers.get("content-length", "")
        if status == 200:
            if "transfer-encoding" in headers or not length.isdigit():
                raise HttpGetError("an answer without a Content-Length")
            self._length = int(length)
            if self._length > self._max_body:
                raise HttpGetError("an answer larger than this client takes")
        reusable = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        self._head = (status, headers, reusable)
        del self._buffer[:end + 4]
        return True

    def _answer(self, answer: Answer, reusable: bool) -> None:
        waiter, self._waiter = self._waiter, None
        self._head = None
        self._buffer = bytearray()
        if not reusable:
            self.closed = True
            self.transport.close()
        waiter.set_result(answer)

    def _fail(self, exc: HttpGetError) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class HttpGetPool:
    """Kept-alive connections to one origin (scheme, host, port); on the loop's thread only."""

    def __init__(self, origin: str, *, tls: ssl.SSLContext | bool, connect_timeout: float | None,
                 read_timeout: float | None):
        parts = urlsplit(origin)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._host_header = canonical_host(parts)
        self._address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        self._tls = tls if parts.scheme == "https" else None
        if self._tls is False:  # TLS without verification, as botocore's verify=False
            self._tls = ssl.create_default_context()
            self._tls.check_hostname = False
            self._tls.verify_mode = ssl.CERT_NONE
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._watch: asyncio.TimerHandle | None = None

    async def get(self, url: str, headers: dict[str, str], max_body: int) -> Answer:
        """GET `url` (of this origin, its path sent as it is: percent-encoded as signed) with `headers`; a body of
        more than `max_body` bytes raises."""
        if not url.startswith(self.origin + "/"):
            raise HttpGetError("another origin than the pool's")
        lines = [f"GET {url[len(self.origin):]} HTTP/1.1\r\nHost: {self._host_header}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        lines.append("\r\n")
        connection = await self._connection()
        self._busy.add(connection)
        if self._read_timeout and self._watch is None:
            self._watch = asyncio.get_running_loop().call_later(_WATCH_EVERY, self._abort_the_silent)
        try:
            return await connection.request("".join(lines).encode("latin-1"), max_body)
        finally:
            self._busy.discard(connection)
            if not connection.closed:
                self._idle.append(connection)

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(loop.create_connection(
                _Connection, *self._address, ssl=self._tls,
                server_hostname=self._address[0] if self._tls else None), self._connect_timeout)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise HttpGetError(f"cannot connect: {exc or type(exc).__name__}") from None
        return connection

    def _abort_the_silent(self) -> None:
        """The read timeout, for all connections at once: one timer, not one per request, and none while no
        request is on its way (`get` sets it again)."""
        now = time.monotonic()
        for connection in list(self._busy):
            if connection.busy and now - connection.last_seen > self._read_timeout:
                connection.abort(f"no answer within {self._read_timeout:g} s")
        self._watch = (asyncio.get_running_loop().call_later(_WATCH_EVERY, self._abort_the_silent)
                       if self._busy else None)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for connection in self._idle + list(self._busy):
            if connection.transport is not None:
                connection.transport.abort()
        self._idle.clear()
