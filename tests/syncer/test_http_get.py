"""http_get.py against a scripted server: what it takes, and that it raises (so the file goes to botocore) for
every answer it does not take. The end-to-end cases, against SeaweedFS and the fault proxy, are in
test_small_gets.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from s3backup_syncer.http_get import HttpGetError, HttpGetPool

MAX_BODY = 1024  # each GET's bound on the body
HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"5d41\"\r\nX-Amz-Meta-Mtime: 17\r\n\r\nhello"


class ScriptedServer:
    """Answers each request with the next of `answers`, then closes if `close_after`. An answer is bytes, a
    tuple of bytes written 50 ms apart, or None: say nothing."""

    def __init__(self, answers: list[bytes | tuple[bytes, ...] | None], close_after: bool = False):
        self.answers = list(answers)
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while self.answers:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                answer = self.answers.pop(0)
                if answer is None:
                    await asyncio.sleep(30)
                for number, part in enumerate(answer if isinstance(answer, tuple) else (answer,)):
                    if number:
                        await asyncio.sleep(0.05)
                    writer.write(part)
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def _pool(origin: str, read_timeout: float | None = 10) -> HttpGetPool:
    return HttpGetPool(origin, tls=False, connect_timeout=5, read_timeout=read_timeout)


def test_two_gets_share_a_connection_and_go_out_as_signed():
    """Fails if the path is re-encoded, the Host header differs from the one signed (sigv4.canonical_host), the
    headers are not handed back in lower case, or each GET opens a connection of its own."""
    async def scenario():
        server = ScriptedServer([HELLO, HELLO])
        async with server as origin:
            pool = _pool(origin)
            first = await pool.get(f"{origin}/bucket/a%20b/%C3%BC~", {"If-Match": '"5d41"', "X-Amz-Date": "x"},
                                   MAX_BODY)
            second = await pool.get(f"{origin}/bucket/next", {}, MAX_BODY)
            pool.close()
        return server, origin, first, second

    server, origin, first, second = asyncio.run(scenario())
    assert (first.status, first.body, first.headers["etag"], first.headers["x-amz-meta-mtime"]) == (
        200, b"hello", '"5d41"', "17")
    assert second.body == b"hello" and server.connections == 1
    head = server.requests[0].decode("latin-1").split("\r\n")
    assert head[0] == "GET /bucket/a%20b/%C3%BC~ HTTP/1.1"
    assert f"Host: {origin.removeprefix('http://')}" in head and 'If-Match: "5d41"' in head


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 15\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello",  # no Content-Length
    b"HTTP/1.1 200 OK\r\nContent-Length: 2048\r\n\r\n" + bytes(2048),  # more than MAX_BODY
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",  # cut short: the server closes
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Folded: a\r\n b: c\r\n\r\nhello",
    b"ICY 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 70_000,  # a head that never ends
], ids=["chunked", "no-length", "too-large", "cut-short", "extra-bytes", "folded-header", "not-http", "endless-head"])
def test_an_answer_it_does_not_take_raises(answer):
    """Fails if any of these comes back as an answer: each would need more HTTP than this client speaks, and
    botocore (a worker) must take the file instead."""
    async def scenario():
        async with ScriptedServer([answer], close_after=True) as origin:
            pool = _pool(origin)
            try:
                await pool.get(f"{origin}/bucket/key", {}, MAX_BODY)
            finally:
                pool.close()

    with pytest.raises(HttpGetError):
        asyncio.run(scenario())


def test_a_refusal_comes_back_with_its_status_and_its_connection_is_not_reused():
    """A 403's status is what DirectGet.refused decides by: fails if it raises instead, or if the connection,
    its body still on the way, serves the next GET (which would then read that body as its answer)."""
    refusal = (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\n", b"Forbidden")

    async def scenario():
        server = ScriptedServer([refusal, HELLO])
        async with server as origin:
            pool = _pool(origin)
            refused = await pool.get(f"{origin}/bucket/key", {}, MAX_BODY)
            answer = await pool.get(f"{origin}/bucket/key", {}, MAX_BODY)
            pool.close()
        return server, refused, answer

    server, refused, answer = asyncio.run(scenario())
    assert (refused.status, refused.body) == (403, b"")
    assert answer.body == b"hello" and server.connections == 2


def test_connection_close_is_honoured():
    async def scenario():
        server = ScriptedServer([HELLO.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), HELLO])
        async with server as origin:
            pool = _pool(origin)
            await pool.get(f"{origin}/bucket/one", {}, MAX_BODY)
            server.answers = [HELLO]
            await pool.get(f"{origin}/bucket/two", {}, MAX_BODY)
            pool.close()
        return server

    assert asyncio.run(scenario()).connections == 2


def test_a_silent_server_times_out():
    """Fails if a server that never answers holds the GET beyond the read timeout (checked every second)."""
    async def scenario():
        async with ScriptedServer([None]) as origin:
            pool = _pool(origin, read_timeout=0.2)
            try:
                await pool.get(f"{origin}/bucket/key", {}, MAX_BODY)
            finally:
                pool.close()

    started = time.monotonic()
    with pytest.raises(HttpGetError, match=r"no answer within 0\.2 s"):
        asyncio.run(scenario())
    assert time.monotonic() - started < 5


def test_no_server_and_another_origin_raise():
    async def scenario(url: str):
        pool = _pool("http://127.0.0.1:1")
        try:
            await pool.get(url, {}, MAX_BODY)
        finally:
            pool.close()

    with pytest.raises(HttpGetError, match="cannot connect"):
        asyncio.run(scenario("http://127.0.0.1:1/bucket/key"))
    with pytest.raises(HttpGetError, match="another origin"):
        asyncio.run(scenario("http://127.0.0.1:2/bucket/key"))
