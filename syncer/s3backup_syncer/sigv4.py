"""SigV4 header signing for the direct GetObject and PutObject (direct_put.py, direct_get.py).

Ours, not botocore's, for speed: botocore's S3SigV4Auth took ~185 µs per request (it re-parses the
URL and headers and derives the signing key anew), a seventh of the CPU of a small file's upload or
restore; this takes a tenth of that. It signs exactly what those requests need and nothing more: no
query string, and the payload as UNSIGNED-PAYLOAD, as botocore does for this client (remote.py sets
`payload_signing_enabled: False`: a PUT's body is vouched for by its signed Content-MD5, a GET's by the
ETag check). The signing key is derived once per day, region and secret. Anything this cannot sign
(no credentials to read) is left to botocore's signer by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from datetime import UTC, datetime
from urllib.parse import SplitResult, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_NOT_SIGNED = {"authorization", "expect", "transfer-encoding", "user-agent", "x-amzn-trace-id"}  # as botocore
_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_host(parts: SplitResult) -> str:
    """The Host header value: the URL's host, with its port unless it is the scheme's default."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def string_to_sign(method: str, path: str, headers: dict[str, str], amz_date: str, scope: str) -> tuple[str, str]:
    """(the string to sign, the signed header names) for a request without a query string."""
    canonical = {name.lower(): " ".join(str(value).split()) for name, value in headers.items()
                 if name.lower() not in _NOT_SIGNED}
    names = sorted(canonical)
    signed_names = ";".join(names)
    request = "\n".join([method, path or "/", "", *(f"{name}:{canonical[name]}" for name in names), "",
                         signed_names, canonical.get("x-amz-content-sha256", UNSIGNED_PAYLOAD)])
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}", signed_names


class SigV4Signer:
    """Signs requests for one region and service with a client's credentials (refreshed as botocore refreshes
    them: `credentials.get_frozen_credentials()` on every request)."""

    def __init__(self, credentials, region: str, service: str):
        self._credentials = credentials
        self.region = region
        self.service = service
        self._lock = threading.Lock()
        self._key: tuple[tuple[str, str], bytes] | None = None  # ((secret, day), signing key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        with self._lock:
            if self._key is not None and self._key[0] == (secret, day):
                return self._key[1]
        key = f"AWS4{secret}".encode()
        for part in (day, self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        with self._lock:
            self._key = ((secret, day), key)
        return key

    def sign(self, method: str, url: str, headers: dict[str, str], now: datetime | None = None) -> dict[str, str]:
        """`headers` plus those of the signature (X-Amz-Date, X-Amz-Content-SHA256, the session token, Authorization).

        `url` is as it will be sent: its path already percent-encoded (S3 signs it as is), no query string.
        """
        parts = urlsplit(url)
        if parts.query:
            raise ValueError("SigV4Signer signs requests without a query string")
        credentials = self._credentials.get_frozen_credentials()
        amz_date = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        signed = {**headers, "host": canonical_host(parts), "X-Amz-Date": amz_date,
                  "X-Amz-Content-SHA256": UNSIGNED_PAYLOAD}
        if credentials.token:
            signed["X-Amz-Security-Token"] = credentials.token
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign, signed_names = string_to_sign(method, parts.path, signed, amz_date, scope)
        signature = hmac.new(self._signing_key(credentials.secret_key, day), to_sign.encode(), hashlib.sha256)
        signed.pop("host")  # the HTTP library sends it
        signed["Authorization"] = (f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                                   f"SignedHeaders={signed_names}, Signature={signature.hexdigest()}")
        return signed
