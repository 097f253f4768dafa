"""A fault-injecting HTTP reverse proxy for S3 traffic, on loopback, between a client and SeaweedFS.

The client signs its requests for the proxy's address (`endpoint_url`); the proxy forwards them
byte for byte (the Host header included, so signatures stay valid) and injects, at configurable
rates or on chosen requests:

| fault            | what the client sees                                                      |
|------------------|---------------------------------------------------------------------------|
| `500`            | 500 InternalError; the request never reached the server                   |
| `500-after`      | 500 InternalError after the server *did* the request (a lost response)    |
| `503`            | 503 SlowDown (throttling); the request never reached the server           |
| `403`            | 403 AccessDenied, as for revoked or wrong credentials                     |
| `400`            | 400 InvalidArgument, as from a server that takes no `x-amz-checksum-*`    |
| `reset-request`  | TCP reset while the request body is still being sent (not forwarded)      |
| `reset-response` | the server did the request; TCP reset halfway through the response        |
| `truncate`       | the server did the request; the response stops early, with a clean close  |
| `slow`           | the server did the request; the response comes `stall_seconds` late       |
| `corrupt-request`| one byte of the request body flipped on the way (bodiless requests: none) |
| `corrupt-response`| the server did the request; one byte of a 200 answer's body flipped      |

`rewrite` may change every forwarded answer's headers and body, and `rewrite_request` every request
once its body is read (together: a server that answers otherwise, such as one that encrypts).

Every injected fault is counted (`faults`), as is every request (`requests`, by S3 operation),
and added to the process-wide `TALLY` that the reliability suite reports.
"""

from __future__ import annotations

import contextlib
import email.utils
import random
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection

FAULTS = ("500", "500-after", "503", "403", "400", "reset-request", "reset-response", "truncate", "slow",
          "corrupt-request", "corrupt-response")
#: Faults that happen after the server has done the request.
AFTER_FORWARD = {"500-after", "reset-response", "truncate", "slow", "corrupt-response"}
#: Every fault injected by any proxy in this process, by kind (for the suite's figures).
TALLY: Counter[str] = Counter()
_TALLY_LOCK = threading.Lock()

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "upgrade"}
_ERRORS = {
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "500-after": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
    "400": (400, "Bad Request", "InvalidArgument", "Unsupported header received for this API call."),
}


@dataclass
class Request:
    method: str
    target: str  # path and query, as sent
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urllib.parse.unquote(self.target.partition("?")[0])

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.target.partition("?")[2], keep_blank_values=True))

    @property
    def operation(self) -> str:
        """The S3 operation, guessed from the method and query (enough for targeting faults)."""
        q, m = self.query, self.method
        if m == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload"
            return "CompleteMultipartUpload" if "uploadId" in q else "Post"
        if m == "PUT":
            return "UploadPart" if "partNumber" in q else "PutObject" if self.path.count("/") >= 2 else "CreateBucket"
        if m == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        if m == "HEAD":
            return "HeadObject"
        if "list-type" in q:
            return "ListObjectsV2"
        if "uploads" in q:
            return "ListMultipartUploads"
        if "uploadId" in q:
            return "ListParts"
        return "GetObject"


@dataclass
class Rule:
    """Inject `fault` into the next `times` requests that `match` (checked before the random rates)."""

    fault: str
    match: Callable[[Request], bool]
    times: int = 1


@dataclass
class FaultProxy:
    """`with FaultProxy(upstream, rates={"503": 0.1}, seed=1) as proxy:` then use `proxy.endpoint_url`."""

    upstream: str  # http://host:port of the real server
    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    scope: Callable[[Request], bool] = lambda request: True  # which requests random faults may hit
    stall_seconds: float = 3.0  # how late a `slow` response comes
    delay_seconds: float = 0.0  # added to every response (widens windows for concurrent-change tests)
    date_offset_seconds: float = 0.0  # shift the server's Date header (a skewed server clock)
    strip_date: bool = False  # remove the Date header altogether
    max_faults: int | None = None  # stop injecting random faults after this many
    on_request: Callable[[Request], None] | None = None  # called for every request before it is forwarded
    #: (request, status, headers, body) -> (headers, body), for every answer from the server
    rewrite: Callable[[Request, int, list[tuple[str, str]], bytes], tuple[list[tuple[str, str]], bytes]] | None = None
    rewrite_request: Callable[[Request], None] | None = None  # may change a request (its body read) in place

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        self.faults: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []  # (operation, path, fault) of each injected fault
        self.most_in_flight: Counter[str] = Counter()  # operation -> most requests of it forwarded at once
        self._now_in_flight: Counter[str] = Counter()
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._sockets: set[socket.socket] = set()
        host_port = urllib.parse.urlsplit(self.upstream).netloc
        host, _, port = host_port.rpartition(":")
        self._upstream_addr = (host, int(port))

    # --- configuration -----------------------------------------------------------------------
    def inject(self, fault: str, *, operation: str | None = None, times: int = 1,
               match: Callable[[Request], bool] | None = None) -> None:
        """Inject `fault` into the next `times` requests of `operation` (or those that `match`)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault kind {fault!r}")

        def matches(request: Request) -> bool:
            return (operation is None or request.operation == operation) and (match is None or match(request))

        with self._lock:
            self.rules.append(Rule(fault, matches, times))

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    def _choose(self, request: Request) -> str | None:
        if self.on_request is not None:
            self.on_request(request)
        with self._lock:
            self.requests[request.operation] += 1
            fault = None
            for rule in self.rules:
                if rule.times > 0 and rule.match(request):
                    rule.times -= 1
                    fault = rule.fault
                    break
            if fault is None and self.rates and self.scope(request) and (
                self.max_faults is None or self.injected < self.max_faults
            ):
                draw = self._random.random()
                for kind in FAULTS:
                    rate = self.rates.get(kind, 0.0)
                    if draw < rate:
                        fault = kind
                        break
                    draw -= rate
            if fault is not None:
                self.faults[fault] += 1
                self.log.append((request.operation, request.path, fault))
                with _TALLY_LOCK:
                    TALLY[fault] += 1
            return fault

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        assert self._server is not None, "start the proxy first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False
            request_queue_size = 1024  # the listen backlog: a restore's loop opens up to 256 connections at once

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         name="fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            for sock in list(self._sockets):
                _close(sock)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- one client connection ---------------------------------------------------------------
    @contextlib.contextmanager
    def _in_flight(self, operation: str) -> Iterator[None]:
        """Count a request as in flight from its forwarding to its (delayed) answer."""
        with self._lock:
            self._now_in_flight[operation] += 1
            self.most_in_flight[operation] = max(self.most_in_flight[operation], self._now_in_flight[operation])
        try:
            yield
        finally:
            with self._lock:
                self._now_in_flight[operation] -= 1

    def _serve_connection(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        reader = sock.makefile("rb")
        upstream: HTTPConnection | None = None
        try:
            while not self._stop.is_set():
                request = self._read_head(reader)
                if request is None:
                    return
                fault = self._choose(request)
                headers = {name.lower(): value for name, value in request.headers}
                if "100-continue" in headers.get("expect", "").lower():
                    sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                length = int(headers.get("content-length", "0") or 0)
                if fault == "reset-request":
                    if length:
                        reader.read(max(1, length // 2))
                    _reset(sock)
                    return
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    request.body = _read_chunked(reader)
                    request.headers = [(n, v) for n, v in request.headers if n.lower() != "content-length"]
                    request.headers.append(("Content-Length", str(len(request.body))))
                elif length:
                    request.body = reader.read(length)
                    if len(request.body) < length:  # the client went away mid-body: nothing to forward
                        return
                if self.rewrite_request is not None:
                    self.rewrite_request(request)
                    request.headers = [(n, str(len(request.body)) if n.lower() == "content-length" else v)
                                       for n, v in request.headers]
                if fault == "corrupt-request" and request.body:
                    flipped = bytearray(request.body)
                    flipped[self._random.randrange(len(flipped))] ^= 0x01
                    request.body = bytes(flipped)
                if fault in _ERRORS and fault not in AFTER_FORWARD:
                    sock.sendall(_error_response(fault, request))
                    continue
                if upstream is None:
                    upstream = HTTPConnection(*self._upstream_addr, timeout=120)
                with self._in_flight(request.operation):
                    try:
                        status, reason, response_headers, body = _forward(upstream, request)
                    except (OSError, ConnectionError):
                        upstream.close()
                        upstream = HTTPConnection(*self._upstream_addr, timeout=120)
                        status, reason, response_headers, body = _forward(upstream, request)
                    if self.rewrite is not None:
                        response_headers, body = self.rewrite(request, status, response_headers, body)
                    if self.delay_seconds:
                        self._stop.wait(self.delay_seconds)
                if fault == "500-after":
                    sock.sendall(_error_response(fault, request))
                    continue
                if fault == "corrupt-response" and status in (200, 206) and body:
                    flipped = bytearray(body)
                    flipped[self._random.randrange(len(flipped))] ^= 0x01
                    body = bytes(flipped)
                raw_head, raw_body = self._response_bytes(request, status, reason, response_headers, body)
                if fault in ("reset-response", "truncate"):
                    raw = raw_head + raw_body
                    low = len(raw_head) + 1 if raw_body else raw.index(b"\r\n") + 2
                    cut = self._random.randrange(low, len(raw)) if len(raw) > low else low
                    sock.sendall(raw[:cut])
                    if fault == "reset-response":
                        _reset(sock)
                    else:
                        sock.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "slow":
                    self._stop.wait(self.stall_seconds)
                sock.sendall(raw_head + raw_body)
                if headers.get("connection", "").lower() == "close":
                    return
        except (OSError, ConnectionError, ValueError):
            return
        finally:
            if upstream is not None:
                upstream.close()
            reader.close()
            with self._lock:
                self._sockets.discard(sock)

    @staticmethod
    def _read_head(reader) -> Request | None:
        line = reader.readline(65537)
        if not line.strip():
            return None
        method, target, _version = line.decode("latin-1").split(" ", 2)
        headers: list[tuple[str, str]] = []
        while True:
            line = reader.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        return Request(method, target, headers)

    def _response_bytes(self, request: Request, status: int, reason: str,
                        headers: list[tuple[str, str]], body: bytes) -> tuple[bytes, bytes]:
        out = [f"HTTP/1.1 {status} {reason}"]
        for name, value in headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP or (lower == "content-length" and request.method != "HEAD"):
                continue
            if lower == "date":
                if self.strip_date:
                    continue
                if self.date_offset_seconds:
                    shifted = email.utils.parsedate_to_datetime(value).timestamp() + self.date_offset_seconds
                    value = email.utils.formatdate(shifted, usegmt=True)
            out.append(f"{name}: {value}")
        if request.method != "HEAD":
            out.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1"), (b"" if request.method == "HEAD" else body)


def _forward(upstream: HTTPConnection, request: Request) -> tuple[int, str, list[tuple[str, str]], bytes]:
    upstream.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
    for name, value in request.headers:
        if name.lower() not in _HOP_BY_HOP:
            upstream.putheader(name, value)
    upstream.endheaders(request.body or None)
    response = upstream.getresponse()
    body = response.read()
    return response.status, response.reason, response.getheaders(), body


def _read_chunked(reader) -> bytes:
    body = bytearray()
    while True:
        size = int(reader.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while reader.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        body += reader.read(size)
        reader.readline()


def _error_response(fault: str, request: Request) -> bytes:
    status, reason, code, message = _ERRORS[fault]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{request.path}</Resource><RequestId>fault-proxy</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Date: {email.utils.formatdate(time.time(), usegmt=True)}\r\n"
        f"Content-Length: {len(body) if request.method != 'HEAD' else 0}\r\n\r\n"
    ).encode()
    return head + (body if request.method != "HEAD" else b"")


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN: the peer sees 'connection reset by peer'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
