"""PutObject for small files without botocore's per-request machinery.

On a run of many small files the client's CPU goes mostly to botocore's work around each request
(event hooks, parameter validation, serialisation, response parsing): ~1.3 ms of CPU per PutObject,
against ~0.6 ms for the same request sent from here. On a machine that shares its cores with the
S3 server, that is what decides the small-files benchmark (BENCHMARKS.md).

The request is the one botocore would send. The route (URL prefix, signing region and name,
User-Agent) is learnt from a PutObject that botocore made, and confirmed only once that request
succeeded. Requests are signed with the client's credentials (refreshed as botocore refreshes them)
by sigv4.py, or by botocore's own signer where those credentials cannot be read, and sent through
the client's own HTTP session (proxies, TLS settings, timeouts, connection pool). Anything but a 200
answer makes the caller repeat the upload with `client.put_object`, so botocore's retries and error
mapping still decide every failure. An answer that says the shortcut itself is wrong (a redirect, a
4xx) switches it off for the rest of the run.

Everything here that relies on botocore's internals (the client's endpoint and HTTP session, the
arguments of its `before-sign` event, its signer and credentials, AWSRequest) sits behind one
switch, `ENABLED`, and is reached only from `_botocore_session_of`, `_signing_for` and
`DirectPut._learn`/`put` (and, for the session's TLS and proxy settings, from
small_gets.http_settings_like_botocore, which runs only once a route is learnt). With the switch off,
or with a botocore shaped differently, every PutObject goes through `client.put_object`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from botocore.awsrequest import AWSRequest
from botocore.utils import percent_encode

from .sigv4 import SigV4Signer

log = logging.getLogger(__name__)

#: The one switch: False sends every PutObject through botocore's public API.
ENABLED = True

_HEADER_OF_ARG = {
    "ContentMD5": "Content-MD5",
    "ContentType": "Content-Type",
    "StorageClass": "x-amz-storage-class",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "ChecksumCRC32": "x-amz-checksum-crc32",
}
_TRANSIENT = {408, 429, 500, 502, 503, 504}  # botocore retries these: the shortcut stays on
_EVENT = "before-sign.s3.PutObject"


#: sign(method, url, headers) -> the headers with the signature's
Signing = Callable[[str, str, dict[str, str]], dict[str, str]]


@dataclass(frozen=True)
class _Route:
    url_prefix: str  # the object URL minus the percent-encoded key
    sign: Signing
    user_agent: str | None


def _signing_for(request_signer, signing_name: str, region: str, client_config) -> Signing:
    """sigv4.py's signer with the client's credentials; botocore's own if they cannot be read."""
    credentials = getattr(request_signer, "_credentials", None)
    if credentials is not None and callable(getattr(credentials, "get_frozen_credentials", None)):
        return SigV4Signer(credentials, region, signing_name).sign

    def sign_with_botocore(method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, headers=headers)
        request.context["client_config"] = client_config  # the signer reads payload signing from it
        request_signer.get_auth_instance(signing_name, region, "s3v4").add_auth(request)
        return dict(request.headers.items())

    return sign_with_botocore


class DirectPut:
    """Learns the route from botocore's first successful PutObject, then sends PutObjects itself.

    Thread-safe. `put()` returns the answer's headers, or None: then the caller uses `client.put_object`.
    """

    event = _EVENT  # the botocore request the route is learnt from

    def __init__(self, client):
        self._client = client
        self._lock = threading.Lock()
        self._awaited: set[str] = set()  # full keys botocore is uploading for us while we learn
        self._seen: dict[str, _Route] = {}  # full key -> the route botocore signed it for
        self._route: _Route | None = None
        self._http = _botocore_session_of(client) if ENABLED else None
        self._off = self._http is None
        if not self._off:
            client.meta.events.register(self.event, self._learn)

    @property
    def ready(self) -> bool:
        return self._route is not None and not self._off

    @property
    def url_prefix(self) -> str | None:
        """The object URL minus the key, once learnt."""
        return self._route.url_prefix if self._route is not None else None

    def close(self) -> None:
        if self._http is not None:
            self._client.meta.events.unregister(self.event, self._learn)

    def send(self, full_key: str, body, args: dict, via_botocore: Callable[[], dict]) -> dict:
        """PutObject: directly when the route is known and `body` is a bytearray, else `via_botocore()`
        (learning the route from it). Returns the answer as botocore would, headers lower-case."""
        if isinstance(body, bytearray) and not self._off:
            if self.ready:
                headers = self.put(full_key, body, args)
                if headers is not None:
                    lower = {name.lower(): value for name, value in headers.items()}
                    return {"ETag": lower.get("etag"), "ResponseMetadata": {"HTTPHeaders": lower}}
            else:
                self.expect(full_key)
        succeeded = False
        try:
            response = via_botocore()
            succeeded = True
            return response
        finally:
            self.learnt(full_key, succeeded)

    # --- learning the route from botocore -------------------------------------------------------
    def expect(self, full_key: str) -> None:
        """botocore is about to upload `full_key`: learn the route from its request."""
        with self._lock:
            self._awaited.add(full_key)

    def learnt(self, full_key: str, succeeded: bool) -> None:
        """botocore's upload of `full_key` is over; its route is trusted only if it succeeded."""
        with self._lock:
            self._awaited.discard(full_key)
            route = self._seen.pop(full_key, None)
            if succeeded and route is not None and self._route is None and not self._off:
                self._route = route
                log.debug("direct PutObject on, via %s", route.url_prefix)

    def _learn(self, request, **signer) -> None:
        url = request.url.split("?", 1)[0]
        with self._lock:
            for full_key in self._awaited:
                encoded = percent_encode(full_key, safe="/~")
                if url.endswith("/" + encoded):
                    route = self._route_of(request, url[: -len(encoded)], **signer)
                    if route is not None:
                        self._seen[full_key] = route  # a redirect re-signs: the last route wins
                    return

    def _route_of(self, request, url_prefix: str, *, signing_name, region_name, signature_version, request_signer,
                  **_) -> _Route | None:
        """The route of a request botocore is about to sign (a `before-sign` event's arguments), or None where
        only botocore can sign: SigV4a, S3 Express, unsigned."""
        signing = request.context.get("signing", {})
        if signature_version != "s3v4" or signing.get("request_credentials") or signing.get("identity_cache"):
            return None
        return _Route(
            url_prefix=url_prefix,
            sign=_signing_for(request_signer, signing.get("signing_name") or signing_name,
                              signing.get("region") or region_name, self._client.meta.config),
            user_agent=request.headers.get("User-Agent"),
        )

    # --- sending ----------------------------------------------------------------------------------
    def put(self, full_key: str, body: bytearray, args: dict) -> dict | None:
        route = self._route
        if route is None or self._off or set(args) - set(_HEADER_OF_ARG) - {"Metadata"}:
            return None
        headers = {header: args[arg] for arg, header in _HEADER_OF_ARG.items() if arg in args}
        headers.update({f"x-amz-meta-{name}": value for name, value in args.get("Metadata", {}).items()})
        if route.user_agent:
            headers["User-Agent"] = route.user_agent
        url = route.url_prefix + percent_encode(full_key, safe="/~")
        try:
            request = AWSRequest(method="PUT", url=url, data=body, headers=route.sign("PUT", url, headers))
            response = self._http.send(request.prepare())
        except Exception as exc:  # connection trouble and the like: botocore retries it
            log.debug("direct PutObject of %s: %s; handing it to botocore", full_key, exc)
            return None
        if response.status_code == 200:
            return response.headers
        if response.status_code == 400 and "ChecksumCRC32" in args:
            return None  # perhaps a server that takes no checksums: the caller decides, the shortcut stays on
        if response.status_code not in _TRANSIENT:
            self._off = True
            log.debug("direct PutObject off: HTTP %d for %s", response.status_code, full_key)
        return None


def _botocore_session_of(client):
    """The client's own HTTP session (connection pool, proxies, TLS, timeouts), or None if not found."""
    try:
        return client._endpoint.http_session
    except AttributeError:  # a botocore shaped differently: never use the shortcut
        return None
