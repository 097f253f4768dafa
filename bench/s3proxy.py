"""A counting reverse proxy for S3 on loopback: forwards every request to one upstream server and
counts requests by S3 operation, plus the bytes sent each way.

Run: `python s3proxy.py UPSTREAM_URL` (prints `PORT` on its first stdout line, then serves).
`GET /__bench__/stats` returns the counters as JSON; `POST /__bench__/reset` zeroes them.
`POST /__bench__/delay?seconds=S` holds every request after it for S seconds before forwarding it: one
round trip to a distant bucket, as each request of each connection would wait for it (0 turns it off).

The proxy never rewrites the request (SigV4 signs the Host header, which the server checks as
received), so clients must use path-style addressing against it. One thread per client
connection, one upstream connection per client connection; keep-alive, chunked bodies and
`Expect: 100-continue` are relayed as they come.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

COPY_CHUNK = 1 << 20
STATS_PATH = "/__bench__/"


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.status: Counter[str] = Counter()
        self.bytes_sent = 0  # client -> server: request heads and bodies
        self.body_bytes_sent = 0
        self.bytes_received = 0  # server -> client

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "status": dict(self.status),
                "bytes_sent": self.bytes_sent,
                "body_bytes_sent": self.body_bytes_sent,
                "bytes_received": self.bytes_received,
            }


STATS = Stats()
DELAY = {"seconds": 0.0}  # set through POST /__bench__/delay


def classify(method: str, target: str, headers: dict[str, str]) -> str:
    """The S3 operation of a path-style request."""
    split = urlsplit(target)
    query = parse_qs(split.query, keep_blank_values=True)
    query.pop("x-id", None)  # the Go SDK v2 names the operation here; the rest still tells it
    path = split.path.lstrip("/")
    has_key = "/" in path and path.split("/", 1)[1] != ""
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
        if not has_key:
            return "CreateBucket" if not query else "PutBucketConfig"
        if "x-amz-copy-source" in headers:
            return "CopyObject"
        if query:
            return "PutObjectConfig"  # ?tagging, ?acl ...
        return "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        if "delete" in query:
            return "DeleteObjects"
        return "POST other"
    if method == "GET":
        if not has_key:
            if "uploads" in query:
                return "LIST uploads"
            if not path:
                return "LIST buckets"
            if any(q in query for q in ("location", "versioning", "acl", "policy", "lifecycle", "tagging")):
                return "GET bucket config"
            return "LIST"
        if "uploadId" in query:
            return "LIST parts"
        return "GET"
    if method == "HEAD":
        return "HEAD bucket" if not has_key else "HEAD"
    if method == "DELETE":
        if "uploadId" in query:
            return "AbortMultipartUpload"
        return "DELETE" if has_key else "DeleteBucket"
    return method


def read_head(reader) -> bytes | None:
    """One HTTP head (start line + headers + blank line), or None at a clean end of stream."""
    lines = []
    while True:
        line = reader.readline(65537)
        if not line:
            if lines:
                raise ConnectionError("stream ended inside a head")
            return None
        if not lines and line in (b"\r\n", b"\n"):
            continue  # tolerate stray CRLF between messages
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def parse_headers(head: bytes) -> tuple[str, dict[str, str]]:
    text = head.decode("latin-1")
    start, *rest = text.split("\r\n")
    headers: dict[str, str] = {}
    for line in rest:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return start, headers


def copy_exact(reader, sock: socket.socket, length: int) -> int:
    remaining = length
    while remaining:
        data = reader.read1(min(COPY_CHUNK, remaining))
        if not data:
            raise ConnectionError("stream ended inside a body")
        sock.sendall(data)
        remaining -= len(data)
    return length


def copy_chunked(reader, sock: socket.socket) -> int:
    total = 0
    while True:
        size_line = reader.readline(65537)
        if not size_line:
            raise ConnectionError("stream ended inside a chunked body")
        sock.sendall(size_line)
        total += len(size_line)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, then a blank line
                line = reader.readline(65537)
                sock.sendall(line)
                total += len(line)
                if line in (b"\r\n", b"\n", b""):
                    return total
        total += copy_exact(reader, sock, size + 2)  # data + CRLF


def copy_body(reader, sock: socket.socket, headers: dict[str, str]) -> int:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return copy_chunked(reader, sock)
    length = int(headers.get("content-length", "0") or 0)
    return copy_exact(reader, sock, length) if length else 0


def copy_to_close(reader, sock: socket.socket) -> int:
    total = 0
    while data := reader.read1(COPY_CHUNK):
        sock.sendall(data)
        total += len(data)
    return total


def response_has_body(method: str, status: int) -> bool:
    return method != "HEAD" and status >= 200 and status not in (204, 304)


def answer_stats(client: socket.socket, method: str, target: str) -> None:
    if method == "POST" and target.startswith(STATS_PATH + "reset"):
        with STATS.lock:
            STATS.reset()
        body = b"{}"
    elif method == "POST" and target.startswith(STATS_PATH + "delay"):
        DELAY["seconds"] = float(parse_qs(urlsplit(target).query)["seconds"][0])
        body = b"{}"
    else:
        body = json.dumps(STATS.snapshot()).encode()
    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body)


def serve_connection(client: socket.socket, upstream_addr: tuple[str, int]) -> None:
    upstream: socket.socket | None = None
    try:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_in = client.makefile("rb", buffering=1 << 16)
        upstream_in = None
        while True:
            head = read_head(client_in)
            if head is None:
                return
            start, headers = parse_headers(head)
            method, target = start.split(" ")[:2]
            if target.startswith(STATS_PATH):
                copy_body(client_in, _NullSink(), headers)
                answer_stats(client, method, target)
                continue
            if upstream is None:
                upstream = socket.create_connection(upstream_addr)
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                upstream_in = upstream.makefile("rb", buffering=1 << 16)
            operation = classify(method, target, headers)
            if DELAY["seconds"]:
                time.sleep(DELAY["seconds"])
            upstream.sendall(head)
            sent = len(head)
            response_head = None
            if headers.get("expect", "").lower() == "100-continue":
                response_head = read_head(upstream_in)
                if response_head is None:
                    return
                status = int(response_head.split(b" ", 2)[1])
                if status == 100:
                    client.sendall(response_head)
                    response_head = None
                else:
                    # A final answer before the body: relay it and drop both connections, since the
                    # client may or may not send the body now.
                    _, response_headers = parse_headers(response_head)
                    client.sendall(response_head)
                    received = len(response_head)
                    if response_has_body(method, status) and "content-length" in response_headers:
                        received += copy_body(upstream_in, client, response_headers)
                    _count(operation, status, sent, 0, received)
                    return
            body = copy_body(client_in, upstream, headers)
            sent += body
            while response_head is None or response_head.split(b" ", 2)[1].startswith(b"1"):
                if response_head is not None:  # an interim 1xx answer
                    client.sendall(response_head)
                response_head = read_head(upstream_in)
                if response_head is None:
                    raise ConnectionError("upstream closed before answering")
            status = int(response_head.split(b" ", 2)[1])
            _, response_headers = parse_headers(response_head)
            client.sendall(response_head)
            received = len(response_head)
            closing = response_headers.get("connection", "").lower() == "close"
            if response_has_body(method, status):
                if "content-length" in response_headers or "chunked" in response_headers.get(
                    "transfer-encoding", ""
                ).lower():
                    received += copy_body(upstream_in, client, response_headers)
                else:
                    received += copy_to_close(upstream_in, client)
                    closing = True
            _count(operation, status, sent, body, received)
            if closing or headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, OSError, ValueError, IndexError):
        return
    finally:
        for sock in (client, upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class _NullSink:
    def sendall(self, data: bytes) -> None:
        pass


def _count(operation: str, status: int, sent: int, body: int, received: int) -> None:
    with STATS.lock:
        STATS.requests[operation] += 1
        STATS.status[str(status)] += 1
        STATS.bytes_sent += sent
        STATS.body_bytes_sent += body
        STATS.bytes_received += received


def main() -> None:
    upstream = urlsplit(sys.argv[1])
    upstream_addr = (upstream.hostname or "127.0.0.1", upstream.port or 80)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(client, upstream_addr), daemon=True).start()


if __name__ == "__main__":
    main()
