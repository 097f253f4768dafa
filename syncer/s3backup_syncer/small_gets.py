"""Small GetObjects on one event-loop thread through aiohttp, instead of one blocking request per worker.

On a restore of many small files, a worker thread per request cost more than the requests: botocore's
HTTP session (http.client's header parsing, urllib3's pool) took ~1.3 ms of CPU per GET over 8 threads,
against ~0.5 ms for the same signed request on one loop with aiohttp's C parser (bench/http_paths.py),
and 8 workers waking per file spent as much again in the kernel, handing the GIL over. So restore.py
runs a small file's whole restore on this loop: the GET, the MD5 check, the write and the rename.

The request is exactly DirectGet's (route, signature, If-Match); only the HTTP library differs.
- Once a run has wanted START_AFTER small objects, aiohttp is imported on a thread of its own (~0.3 s of
  CPU, which a short restore would not win back), while the workers go on; the lane starts at the first
  small object wanted after that import, once DirectGet knows the route. It never starts when
  botocore's session does what this cannot (a proxy, a client certificate), nor when DirectGet is off
  (direct_put.ENABLED).
- Bodies are read whole, so memory stays within (connections) x MAX_SIZE.
- Any failure, or any answer but 200, gives None: the caller then hands the file to a worker, whose
  retries (DirectGet, then botocore) and error mapping decide. DirectGet.refused decides whether the
  answer switches both shortcuts off.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import ssl
import sys
import threading
from dataclasses import dataclass

from botocore.httpsession import get_cert_path

from .direct_get import DirectGet, GetAnswer
from .direct_put import _botocore_session_of
from .units import MiB

log = logging.getLogger(__name__)

MAX_SIZE = 1 * MiB  # larger objects stream through a worker's own connection (download.py)
START_AFTER = 32  # small objects wanted before the lane is worth aiohttp's import


@dataclass(frozen=True)
class HttpSettings:
    """How botocore's session reaches the endpoint, in the terms aiohttp takes."""

    ssl: ssl.SSLContext | bool  # False: plain HTTP, or TLS without verification (verify=False)
    connect_timeout: float | None
    read_timeout: float | None


def http_settings_like_botocore(client, url: str) -> HttpSettings | None:
    """The TLS settings and timeouts of the client's session for `url`, or None when the lane must not be
    used: a proxy or a client certificate applies, or the session is not shaped as expected."""
    session = _botocore_session_of(client)
    try:
        if session._proxy_config.proxy_url_for(url) or session._cert_file:
            return None
        verify = session._verify
    except AttributeError:
        return None
    config = client.meta.config
    context: ssl.SSLContext | bool = False
    if url.startswith("https:") and verify is not False:
        certificates = get_cert_path(verify)
        context = (ssl.create_default_context(capath=certificates) if os.path.isdir(certificates)
                   else ssl.create_default_context(cafile=certificates))
    return HttpSettings(context, config.connect_timeout, config.read_timeout)


class SmallGets:
    """The event loop, its thread and its aiohttp session. One thread (the run's) calls `available` and
    `submit`; `get` runs on the loop."""

    def __init__(self, direct: DirectGet, client, connections: int):
        self._direct = direct
        self._client = client
        self._connections = connections
        self._asked = 0  # calls of `available`
        self._importer: threading.Thread | None = None  # imports aiohttp, from the START_AFTER-th call
        self._state = "waiting"  # -> "ready" or "off" (closed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session = None
        self._url = None  # yarl.URL, once imported

    def available(self) -> bool:
        """Called once for each small object the run wants: whether the lane takes it (`submit`).

        The first call once aiohttp is imported and DirectGet knows the route starts the lane, here: the
        workers go on with what they hold meanwhile.
        """
        if self._state == "waiting":
            self._asked += 1
            if self._asked == START_AFTER and "aiohttp" not in sys.modules:
                self._importer = threading.Thread(target=_import_aiohttp, name="s3backup-import", daemon=True)
                self._importer.start()
            if self._asked < START_AFTER or self._importing() or not self._direct.ready:
                return False
            try:
                url = self._direct.url_prefix
                settings = http_settings_like_botocore(self._client, url) if url else None
                if settings is not None:
                    self._open(settings)
            except Exception as exc:  # aiohttp missing or refusing these settings: the other paths serve
                log.debug("no event loop for small GetObjects: %s", exc)
            if self._session is None:
                self.close()  # a loop started without a session is stopped, not left running
            self._state = "ready" if self._session is not None else "off"
        return self._state == "ready"

    def _importing(self) -> bool:
        return self._importer is not None and self._importer.is_alive()

    def submit(self, coroutines: list) -> None:
        """Run the coroutines on the loop, with one wake-up of it; what they raise is their own to handle."""
        self._loop.call_soon_threadsafe(_create_tasks, self._loop, coroutines)

    async def get(self, full_key: str, headers: dict[str, str]) -> tuple[GetAnswer, bytes] | None:
        """(what the answer says, the whole body) of a GetObject answered 200, else None. On the loop only."""
        try:
            request = self._direct.signed(full_key, headers)
            if request is None:
                return None
            url, signed_headers = request
            # encoded=True: the path goes out byte for byte as it was signed, never re-quoted by yarl
            async with self._session.get(self._url(url, encoded=True), headers=signed_headers) as response:
                if response.status != 200:
                    self._direct.refused(response.status, full_key)
                    return None
                if (response.content_length or 0) > MAX_SIZE:
                    return None
                return GetAnswer.of(response.headers), await response.read()
        except Exception as exc:  # connection trouble, a timeout, a body cut short: the caller retries elsewhere
            log.debug("GetObject of %s on the event loop: %s; handing it over", full_key, exc)
            return None

    def close(self) -> None:
        """Stop the loop. The caller has waited for the tasks it submitted."""
        self._state = "off"
        if self._importer is not None:
            self._importer.join()  # no import left running into the interpreter's shutdown
        if self._session is not None:
            asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result()
            self._session = None
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            self._loop = None

    def _open(self, settings: HttpSettings) -> None:
        import aiohttp  # here, not at the top: only the runs that use the lane pay for its import (_import_aiohttp)
        import yarl

        self._loop = loop = asyncio.new_event_loop()
        self._thread = thread = threading.Thread(target=loop.run_forever, name="s3backup-small-gets", daemon=True)
        thread.start()

        async def open_session():
            return aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=settings.ssl),
                timeout=aiohttp.ClientTimeout(sock_connect=settings.connect_timeout, sock_read=settings.read_timeout),
                auto_decompress=False, skip_auto_headers=("Accept-Encoding",),
            )

        self._session = asyncio.run_coroutine_threadsafe(open_session(), loop).result()
        self._url = yarl.URL
        log.debug("small GetObjects on the event loop from now on")


def _create_tasks(loop: asyncio.AbstractEventLoop, coroutines: list) -> None:
    for coroutine in coroutines:
        loop.create_task(coroutine)


class LoopSlots:
    """The bound on the files held for the loop, handed over in batches both ways.

    Handed one at a time, each file woke the loop (its self-pipe) and, once the bound was reached, woke the
    run's thread again when it was done: two GIL handoffs per file, the run's and the loop's threads making
    ~20 futex calls for each small file. So the run's thread submits up to `batch` files at once, and the
    loop frees their slots `batch` at a time, or all it holds when it runs dry. No file waits in a batch
    while the run's thread blocks: `take` submits the batch first.
    """

    def __init__(self, size: int, small_gets: SmallGets):
        self.size = size
        self.batch = max(1, size // 4)
        self._free = threading.BoundedSemaphore(size)
        self._small_gets = small_gets
        self._to_submit: list = []  # the run's thread only
        self._running = 0  # the loop's thread only, as is _done
        self._done = 0

    # --- the run's thread ---
    def take(self) -> None:
        """One slot, blocking once the batch so far is submitted."""
        if not self._free.acquire(blocking=False):
            self.submit_held()
            self._free.acquire()

    def hand_over(self, coroutine) -> None:
        """After `take`: the file's coroutine, submitted with the batch."""
        self._to_submit.append(coroutine)
        if len(self._to_submit) >= self.batch:
            self.submit_held()

    def submit_held(self) -> None:
        if self._to_submit:
            self._small_gets.submit(self._to_submit)
            self._to_submit = []

    def wait_for_all(self) -> None:
        self.submit_held()
        for _ in range(self.size):
            self._free.acquire()

    # --- the loop's thread ---
    def started(self) -> None:
        self._running += 1

    def finished(self, slot_freed: bool = True) -> None:
        """A file done on the loop; slot_freed=False when a worker took it over (and calls `free_one`)."""
        self._running -= 1
        self._done += slot_freed
        if self._done and (self._done >= self.batch or self._running == 0):
            self._free.release(self._done)
            self._done = 0

    # --- a worker's thread ---
    def free_one(self) -> None:
        self._free.release()


def _import_aiohttp() -> None:
    """On a thread of its own: what `_open` imports, so that the run's thread never waits for it."""
    try:
        for module in ("aiohttp", "yarl"):
            importlib.import_module(module)
    except Exception as exc:  # missing or broken: `_open` meets the same error and the lane stays off
        log.debug("aiohttp cannot be imported: %s", exc)
