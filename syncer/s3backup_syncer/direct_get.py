"""GetObject for restore without botocore's per-request machinery: DirectPut's route, the other way.

On a restore of many small files, botocore's work around each request (event hooks, validation,
serialisation, parsing) was most of the client's CPU. The route is learnt as for DirectPut (from a
GetObject that botocore made and that succeeded), or from the restore's listing of the bucket.
Requests are signed as DirectPut signs them and sent through the client's own HTTP session, and the
body is streamed, never preloaded.
Any answer but 200/206 makes the caller repeat the request through botocore, whose retries and
error mapping decide every failure; an answer that says the shortcut itself is wrong (a redirect,
a 4xx other than a failed precondition or a missing key) switches it off for the rest of the run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from botocore.awsrequest import AWSRequest
from botocore.utils import percent_encode

from .direct_put import _TRANSIENT, DirectPut
from .etag import META_MD5, server_etag_is_md5

log = logging.getLogger(__name__)

_META = "x-amz-meta-"
_EXPECTED_MISSES = {304, 404, 412}  # the object changed or went: botocore reports it, the shortcut stays on


@dataclass(frozen=True)
class GetAnswer:
    """What a GetObject's answer says beside its body."""

    metadata: dict[str, str]  # the user metadata, as botocore's `Metadata`
    etag_is_md5: bool  # False under SSE-KMS, DSSE-KMS or SSE-C: the ETag is then no checksum of the content

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> GetAnswer:
        """From the answer's headers (a case-insensitive mapping, or lower-case names)."""
        return cls(user_metadata(headers.items()), server_etag_is_md5(headers, None))

    def expected_etag(self, etag: str, recorded_etag: Callable[[], str | None] = lambda: None) -> str | None:
        """What the content's ETag must be: the object's own where it is a checksum, else the MD5 that s3backup's
        sync put in the metadata of a single-part upload (a plain MD5), else the ETag its state recorded for a
        multipart upload (`recorded_etag()`, asked only then); None where none is there: only the size can be
        checked."""
        if self.etag_is_md5:
            return etag
        md5 = self.metadata.get(META_MD5, "").lower()
        return md5 if len(md5) == 32 and all(c in "0123456789abcdef" for c in md5) else recorded_etag()


class DirectGet(DirectPut):
    """`get()` returns (GetAnswer, Content-Range, a raw body with `read(n)` and `close()`), or None."""

    event = "before-sign.s3.GetObject"
    listing_event = "before-sign.s3.ListObjectsV2"

    @contextlib.contextmanager
    def learning_from_listing(self) -> Iterator[None]:
        """Learn the route from the ListObjectsV2 this thread makes in the block: its URL without the query is the
        bucket's URL, to which a GetObject appends the key. Trusted once the block ends without an error.

        So small_gets.py's loop can take the first small file, instead of waiting for a worker's first GET. Should
        the GET's route differ after all, its first answer is a redirect or a 4xx, `refused` switches the shortcut
        off, and botocore does the rest.
        """
        if self._off:
            yield
            return
        thread, seen = threading.get_ident(), []

        def learn(request, **signer) -> None:
            if threading.get_ident() == thread:
                seen.append(self._route_of(request, bucket_url(request.url), **signer))

        self._client.meta.events.register(self.listing_event, learn)
        try:
            yield
        finally:
            self._client.meta.events.unregister(self.listing_event, learn)
        with self._lock:
            if seen and seen[-1] is not None and self._route is None:  # a redirect re-signs: the last route wins
                self._route = seen[-1]
                log.debug("direct GetObject on, via %s (learnt from the listing)", self._route.url_prefix)

    def signed(self, full_key: str, headers: dict[str, str]) -> tuple[str, dict[str, str]] | None:
        """(URL, signed headers) of the GetObject botocore would send, or None while the shortcut is not on.

        May raise (credentials that cannot be refreshed): the caller hands the request to botocore.
        """
        route = self._route
        if route is None or self._off:
            return None
        headers = dict(headers)
        if route.user_agent:
            headers["User-Agent"] = route.user_agent
        url = route.url_prefix + percent_encode(full_key, safe="/~")
        return url, route.sign("GET", url, headers)

    def refused(self, status: int, full_key: str) -> None:
        """An answer other than 200/206: switch the shortcut off if it says the shortcut itself is wrong."""
        if status not in _TRANSIENT and status not in _EXPECTED_MISSES:
            self._off = True
            log.debug("direct GetObject off: HTTP %d for %s", status, full_key)

    def get(self, full_key: str, headers: dict[str, str]) -> tuple[GetAnswer, str, object] | None:
        try:
            request = self.signed(full_key, headers)
            if request is None:
                return None
            url, signed_headers = request
            prepared = AWSRequest(method="GET", url=url, headers=signed_headers).prepare()
            prepared.stream_output = True
            response = self._http.send(prepared)
        except Exception as exc:  # connection trouble and the like: botocore retries it
            log.debug("direct GetObject of %s: %s; handing it to botocore", full_key, exc)
            return None
        if response.status_code in (200, 206):
            return GetAnswer.of(response.headers), response.headers.get("Content-Range", ""), response.raw
        response.raw.close()
        self.refused(response.status_code, full_key)
        return None


def bucket_url(listing_url: str) -> str:
    """The URL a GetObject appends the percent-encoded key to, from a ListObjectsV2's URL: path-style
    `https://host/bucket?list-type=2&...` gives `https://host/bucket/`; virtual-hosted `https://bucket.host/?...`
    gives `https://bucket.host/`."""
    url = listing_url.split("?", 1)[0]
    return url if url.endswith("/") else url + "/"


def user_metadata(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The x-amz-meta-* headers of an answer, as botocore's `Metadata`: lower-case names without the prefix."""
    return {name.lower()[len(_META):]: value for name, value in headers if name.lower().startswith(_META)}
