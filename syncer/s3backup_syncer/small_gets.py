"""Small GetObjects on one event-loop thread, instead of one blocking request per worker.

On a restore of many small files, a worker thread per request cost more than the requests: botocore's
HTTP session (http.client's header parsing, urllib3's pool) took ~1.3 ms of CPU per GET over 8 threads,
and 8 workers waking per file spent as much again in the kernel, handing the GIL over. So restore.py
runs a small file's whole restore on this loop: the GET, the MD5 check, the write and the rename. Its
requests go through http_get.py, a GET-only client: cheaper per GET than aiohttp and nothing to import.

The request is exactly DirectGet's (route, signature, If-Match); only the HTTP client differs.
- The lane starts at the first small object wanted once DirectGet knows the route (from the restore's
  listing, else from a worker's first GET). It never starts when botocore's session does what this
  cannot (a proxy, a client certificate), nor when DirectGet is off (direct_put.ENABLED).
- Bodies are read whole, at most the object's listed size each (a larger one is refused), so memory stays
  within the byte budget restore.py's LoopSlots keeps.
- Any failure, or any answer but 200, gives None: the caller then hands the file to a worker, whose
  retries (DirectGet, then botocore) and error mapping decide. DirectGet.refused decides whether the
  answer switches both shortcuts off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
from dataclasses import dataclass

from botocore.httpsession import get_cert_path

from .direct_get import DirectGet, GetAnswer
from .direct_put import _botocore_session_of
from .http_get import HttpGetPool
from .units import MiB

log = logging.getLogger(__name__)

MAX_SIZE = 1 * MiB  # larger objects stream through a worker's own connection (download.py)


@dataclass(frozen=True)
class HttpSettings:
    """How botocore's session reaches the endpoint: its TLS and its timeouts."""

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
    """The event loop, its thread and its connections (http_get.py). One thread (the run's) calls `available`
    and `submit`; `get` runs on the loop."""

    def __init__(self, direct: DirectGet, client):
        self._direct = direct
        self._client = client
        self._state = "waiting"  # -> "ready" or "off" (closed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: HttpGetPool | None = None

    def available(self) -> bool:
        """Called once for each small object the run wants: whether the lane takes it (`submit`).

        The first call once DirectGet knows the route starts the lane.
        """
        if self._state == "waiting":
            if not self._direct.ready:
                return False
            try:
                url = self._direct.url_prefix
                settings = http_settings_like_botocore(self._client, url) if url else None
                if settings is not None:
                    self._open(url, settings)
            except Exception as exc:  # settings this cannot take: the other paths serve
                log.debug("no event loop for small GetObjects: %s", exc)
                self.close()  # nothing half-open is left running
            self._state = "ready" if self._pool is not None else "off"
        return self._state == "ready"

    def submit(self, coroutines: list) -> None:
        """Run the coroutines on the loop, with one wake-up of it; what they raise is their own to handle."""
        self._loop.call_soon_threadsafe(_create_tasks, self._loop, coroutines)

    async def get(self, full_key: str, headers: dict[str, str], max_body: int) -> tuple[GetAnswer, bytes] | None:
        """(what the answer says, the whole body) of a GetObject answered 200 with at most `max_body` bytes, else
        None. On the loop only."""
        try:
            request = self._direct.signed(full_key, headers)
            if request is None:
                return None
            url, signed_headers = request
            answer = await self._pool.get(url, signed_headers, max_body=max_body)
            if answer.status != 200:
                self._direct.refused(answer.status, full_key)
                return None
            return GetAnswer.of(answer.headers), answer.body
        except Exception as exc:  # connection trouble, a timeout, an answer it does not take: retried elsewhere
            log.debug("GetObject of %s on the event loop: %s; handing it over", full_key, exc)
            return None

    def close(self) -> None:
        """Stop the loop. The caller has waited for the tasks it submitted."""
        self._state = "off"
        pool, self._pool = self._pool, None
        if self._loop is not None:
            if pool is not None:
                asyncio.run_coroutine_threadsafe(_closed(pool), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            self._loop = None

    def _open(self, url: str, settings: HttpSettings) -> None:
        self._pool = HttpGetPool(url, tls=settings.ssl, connect_timeout=settings.connect_timeout,
                                 read_timeout=settings.read_timeout)
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="s3backup-small-gets", daemon=True)
        self._thread.start()
        log.debug("small GetObjects on the event loop from now on")


async def _closed(pool: HttpGetPool) -> None:
    pool.close()
    await asyncio.sleep(0)  # the transports' own closing callbacks run before the loop stops


def _create_tasks(loop: asyncio.AbstractEventLoop, coroutines: list) -> None:
    for coroutine in coroutines:
        loop.create_task(coroutine)


class LoopSlots:
    """The bound on the files held for the loop, by number and by bytes, handed over in batches both ways.

    Handed one at a time, each file woke the loop (its self-pipe) and, once the bound was reached, woke the
    run's thread again when it was done: two GIL handoffs per file, the run's and the loop's threads making
    ~20 futex calls for each small file. So the run's thread submits up to `batch` files at once, and the
    loop frees their slots a batch at a time, or all it holds when it runs dry. No file waits in a batch
    while the run's thread blocks: `take` submits the batch first. The bytes are counted in units of UNIT,
    by the files' listed sizes, so that many tiny files may be in flight but never more memory than allowed.
    """

    UNIT = 64 * 1024

    def __init__(self, files: int, byte_budget: int, small_gets: SmallGets):
        self.files = files
        self.units = max(1, byte_budget // self.UNIT)
        self.batch = max(1, files // 4)
        self._free_files = threading.BoundedSemaphore(files)
        self._free_units = threading.BoundedSemaphore(self.units)
        self._small_gets = small_gets
        self._to_submit: list = []  # the run's thread only
        self._running = 0  # the loop's thread only, as are the two below
        self._done_files = 0
        self._done_units = 0

    def units_of(self, size: int) -> int:
        return min(self.units, max(1, -(-size // self.UNIT)))

    # --- the run's thread ---
    def take(self, size: int) -> None:
        """A slot for a file of `size` bytes, blocking once the batch so far is submitted."""
        for semaphore, count in ((self._free_files, 1), (self._free_units, self.units_of(size))):
            for _ in range(count):
                if not semaphore.acquire(blocking=False):
                    self.submit_held()
                    semaphore.acquire()

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
        for semaphore, count in ((self._free_files, self.files), (self._free_units, self.units)):
            for _ in range(count):
                semaphore.acquire()

    # --- the loop's thread ---
    def started(self) -> None:
        self._running += 1

    def finished(self, size: int, slot_freed: bool = True) -> None:
        """A file done on the loop; slot_freed=False when a worker took it over (and calls `free`)."""
        self._running -= 1
        if slot_freed:
            self._done_files += 1
            self._done_units += self.units_of(size)
        if self._done_files and (self._done_files >= self.batch or self._done_units * 4 >= self.units
                                 or self._running == 0):
            self._free_files.release(self._done_files)
            self._free_units.release(self._done_units)
            self._done_files = self._done_units = 0

    # --- a worker's thread ---
    def free(self, size: int) -> None:
        self._free_files.release()
        self._free_units.release(self.units_of(size))
