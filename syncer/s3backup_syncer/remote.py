"""The S3 side: a client with safe settings, and the remote listing as a stream.

Everything here is I/O. Decisions live in `plan.py`.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import json
import os
import sqlite3
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from xml.etree import ElementTree

import botocore.exceptions
import botocore.handlers
import botocore.session
import botocore.utils
from botocore.config import Config
from botocore.loaders import JSONFileLoader, Loader

from .errors import ConfigError, RemoteAccessError, RemoteUnavailable, RunError

if TYPE_CHECKING:  # the runs' options import this module
    from .config import SyncOptions
    from .restore import RestoreOptions
    from .verify import VerifyOptions

#: Where s3backup keeps its own state under the prefix; never planned, never recycled.
STATE_DIR = ".s3backup/"


@dataclass(frozen=True, slots=True)
class RemoteObject:
    key: str  # relative to the prefix
    size: int
    etag: str  # without quotes
    last_modified: datetime


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    path_style: bool = False,
    access_key: str | None = None,
    secret_key: str | None = None,
    max_pool_connections: int = 16,
    max_attempts: int = 8,
    connect_timeout: float = 10,
    read_timeout: float = 60,
):
    """A boto3 S3 client that works with S3-compatible servers.

    It is botocore's client, which is what `boto3.client("s3")` returns; boto3's session wrapper is
    left out because importing it pulls in s3transfer, which nothing here uses (state_objects.py).

    boto3 >= 1.36 adds CRC checksums to every request by default; many S3-compatible servers
    reject them. We send them only when an operation requires one, and make integrity explicit
    ourselves with Content-MD5 and ETag checks. Every file's bytes go out with a Content-MD5, which
    SigV4 signs, so they are not hashed a second time with SHA-256 for the signature (botocore does
    that on plain-http endpoints only; it cost a fifth of the client's CPU on large uploads). Our
    small state objects carry a Content-MD5 too, or a checksum of their own (the cache is gzipped).
    Retries use botocore's "standard" mode: exponential backoff with jitter on throttling
    (503 SlowDown), 5xx and connection errors.
    """
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path" if path_style else "auto", "payload_signing_enabled": False},
    )
    core = botocore.session.get_session()
    core.register_component("data_loader", _model_loader(core.get_config_variable("data_path")))
    # botocore parses each listed key's LastModified with dateutil: a third of a no-change run's CPU.
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    try:
        client = core.create_client("s3", region_name=region, endpoint_url=endpoint_url or None, config=config,
                                    aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    except ValueError as exc:  # an endpoint URL that is not a URL, a malformed region name
        raise ConfigError(f"invalid S3 endpoint or region: {exc}") from None
    client.meta.events.register("before-call.s3", _no_expect_for_small_bodies)
    client.meta.events.register_first("needs-retry.s3", _no_retry_for_an_untrusted_certificate)
    _parse_listings_once(client.meta.events)
    return client


def make_run_client(options: SyncOptions | RestoreOptions | VerifyOptions):
    """The client of a sync, restore or verify run: its options carry the endpoint, the addressing, the
    concurrency (the connection pool: a worker and a range each) and the timeouts."""
    return make_s3_client(
        endpoint_url=options.endpoint_url,
        region=options.region,
        path_style=options.path_style,
        max_pool_connections=max(10, options.concurrency * 2 + 2),
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
    )


def _parse_listings_once(events) -> None:
    """Put `_parse_listing_quickly` before botocore's check for a 200 answer that carries an error.

    That check parses the whole body to read its root tag: a quarter of a listing's CPU. After
    ours, it parses a listing page's empty stand-in; an error, or a body cut short, is left whole
    to it and still becomes a 500 (and a retry). If botocore renames the check, both run (slower).
    """
    check_200 = getattr(botocore.handlers, "_handle_200_error", None)  # registered first on before-parse.s3.*
    if check_200 is not None:
        events.unregister("before-parse.s3.*", check_200)
    events.register_first("before-parse.s3.*", _parse_listing_quickly)
    if check_200 is not None:
        events.register_first("before-parse.s3.*", check_200)


class _PlainJSONFiles(JSONFileLoader):
    """botocore's model files decoded into plain dicts (ordered since Python 3.7). botocore's own loader asks
    for OrderedDicts, which triples the decode time of endpoints.json: a sixth of every run's start-up."""

    def load_file(self, file_path):
        for suffix, opener in ((".json", open), (".json.gz", gzip.open)):
            try:
                with opener(file_path + suffix, "rb") as stream:
                    return json.loads(stream.read())
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
        return None


class _ModelLoader(Loader):
    """botocore's Loader, but the services it knows are found on demand (`_ServiceNames`)."""

    def list_available_services(self, type_name):
        return _ServiceNames(self, type_name)


class _ServiceNames(Sequence[str]):
    """`Loader.list_available_services`, lazily. botocore asks it only whether one service is known (before
    loading that service's model), and the full list opens every service's folder (over 400) once per model
    type: ~40 ms of every run's start-up. `in` looks in that one service's folders; anything else lists all."""

    def __init__(self, loader: Loader, type_name: str):
        self._loader = loader
        self._type_name = type_name
        self._all: list[str] | None = None

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name or os.sep in name:
            return False
        for root in self._loader.search_paths:
            folder = os.path.join(root, name)
            with contextlib.suppress(OSError):
                for version in os.listdir(folder):
                    if self._loader.file_loader.exists(os.path.join(folder, version, self._type_name)):
                        return True
        return False

    def _names(self) -> list[str]:
        if self._all is None:
            self._all = Loader.list_available_services(self._loader, self._type_name)
        return self._all

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())


def _model_loader(data_path: str | None) -> Loader:
    """botocore's loader with the same search path (AWS_DATA_PATH honoured), reading with `_PlainJSONFiles`."""
    paths = data_path.split(os.pathsep) if data_path else []
    extra = [os.path.expanduser(os.path.expandvars(path)) for path in paths]
    return _ModelLoader(extra_search_paths=extra or None, file_loader=_PlainJSONFiles())


def _parse_timestamp(value):
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return botocore.utils.parse_timestamp(value)  # RFC 1123 and other shapes: botocore's own parser
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_EMPTY_LISTING = b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult></ListBucketResult>'
_LISTING_TEXT = {"Name", "Prefix", "ContinuationToken", "NextContinuationToken", "StartAfter", "EncodingType"}
_LISTING_INT = {"KeyCount", "MaxKeys"}


def _parse_listing_quickly(response_dict: dict, customized_response_dict: dict, operation_model=None,
                           **_) -> None:
    """Parse a ListObjectsV2 page with ElementTree instead of botocore's model-driven parser.

    botocore spent ~40 ms of CPU on each page of 1,000 keys: most of a no-change run over many
    files. Only a 200 page whose root is a listing is taken over (an error document, or a body cut
    short, is left to botocore, which makes it a 500); its fields go into `customized_response_dict`,
    which botocore merges into the parsed answer, and botocore is left an empty page to parse. Keys
    are still URL-decoded by botocore's own after-call handler. Anything unexpected is left to
    botocore whole.
    """
    if getattr(operation_model, "name", None) != "ListObjectsV2" or response_dict.get("status_code") != 200:
        return
    try:
        root = ElementTree.fromstring(response_dict["body"])
    except ElementTree.ParseError:
        return
    if _xml_name(root) != "ListBucketResult":
        return
    page: dict = {}
    contents: list[dict] = []
    for element in root:
        name = _xml_name(element)
        if name == "Contents":
            fields = {_xml_name(field): field.text or "" for field in element}
            try:
                contents.append({
                    "Key": fields["Key"],
                    "LastModified": _parse_timestamp(fields["LastModified"]),
                    "ETag": fields.get("ETag", ""),
                    "Size": int(fields["Size"]),
                    "StorageClass": fields.get("StorageClass", "STANDARD"),
                })
            except (KeyError, ValueError):
                return
        elif name == "IsTruncated":
            page[name] = (element.text or "").strip() == "true"
        elif name in _LISTING_TEXT:
            page[name] = element.text or ""
        elif name in _LISTING_INT:
            page[name] = int(element.text or 0)
        elif name == "CommonPrefixes":
            return  # a page of the top-level listing by folder: few, and left to botocore
    if contents:
        page["Contents"] = contents
    customized_response_dict.update(page)
    response_dict["body"] = _EMPTY_LISTING


def _xml_name(element: ElementTree.Element) -> str:
    return element.tag.rpartition("}")[2]


def _no_expect_for_small_bodies(params, **_) -> None:
    """`Expect: 100-continue` costs a round trip per request; worth it only for big bodies."""
    headers = params.get("headers", {})
    body = params.get("body")
    if "Expect" in headers and body is not None:
        length = botocore.utils.determine_content_length(body)
        if length is not None and length < 1024 * 1024:
            del headers["Expect"]


def _no_retry_for_an_untrusted_certificate(caught_exception: Exception | None = None, **_) -> None:
    """A certificate that does not verify now will not verify on the next attempt: fail at once, not after every
    attempt and its backoff (~10 s). botocore has no answer for "do not retry" but an exception."""
    if caught_exception is not None and untrusted_certificate(caught_exception):
        raise caught_exception


def untrusted_certificate(exc: BaseException) -> bool:
    """Whether `exc` (botocore's SSLError) comes of a server certificate that did not verify."""
    cause: BaseException | None = exc
    for _ in range(8):  # botocore's SSLError, urllib3's, ssl's: a chain far shorter than this
        if cause is None:
            return False
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


_CONFIG_ERROR_CODES = {
    "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "AllAccessDisabled",
    "InvalidBucketName", "PermanentRedirect", "AuthorizationHeaderMalformed", "RequestTimeTooSkewed",
    "InvalidToken", "ExpiredToken", "InvalidRequest",
}


def run_error(exc: Exception, bucket: str) -> RunError:
    """A failed request that ends the run, as the error the CLI reports: the set-up's fault (exit 2) or S3's (1)."""
    message = describe_client_error(exc, bucket)
    if is_configuration_problem(exc):
        return RemoteAccessError(message)
    return RemoteUnavailable(f"S3 is not available: {message}")


def is_configuration_problem(exc: Exception) -> bool:
    """Whether an error at the first request means the set-up is wrong (exit 2) or S3 is unwell (exit 1)."""
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.EndpointConnectionError,
                        botocore.exceptions.PartialCredentialsError, botocore.exceptions.EndpointProviderError,
                        botocore.exceptions.ParamValidationError)) or untrusted_certificate(exc):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error.get("Code", "") in _CONFIG_ERROR_CODES or status in (301, 400, 403, 404)
    return False


def describe_client_error(exc: Exception, bucket: str) -> str:
    """One line for the user; never includes credentials."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or IRSA)"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return f"cannot reach the S3 endpoint: {exc}"
    if untrusted_certificate(exc):
        return (f"the S3 endpoint's TLS certificate is not trusted ({exc}): set AWS_CA_BUNDLE to the certificate of "
                "the authority that signed it")
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",) or (status == 404 and not code.startswith("NoSuchKey")):
            return f"bucket {bucket!r} does not exist"
        if code == "RequestTimeTooSkewed":
            return "this machine's clock differs from the S3 server's by more than 15 minutes: fix the clock"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or status == 403:
            return f"access to bucket {bucket!r} denied ({code or status}): check the credentials and their rights"
        return f"S3 error {code or status}: {error.get('Message', '')}".strip()
    if isinstance(exc, botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectTimeoutError):
        return f"the S3 endpoint did not answer in time: {exc}"
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return f"S3 client error: {exc}"
    return f"{type(exc).__name__}: {exc}"


def server_time(response: dict) -> datetime | None:
    """The server's clock from a response's Date header, so that ages never depend on ours."""
    header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).astimezone(UTC)
    except (TypeError, ValueError):
        return None


class RemoteListing:
    """The objects under the prefix, from `ListObjectsV2` pages (1,000 keys each), in key order.

    AWS lists keys in UTF-8 byte order, but not every S3-compatible server does (SeaweedFS lists
    each "directory" by name, so `a/b` comes before `a-b`): `in_key_order()` puts the listing in
    byte order through an on-disk SQLite index, whatever order the server uses. Each page is
    written there as it arrives; only the pages in flight are in memory. A prefix of more than one
    page is listed one top-level folder per request stream, several at once (as rclone does): a
    page costs the server tens of milliseconds, and one stream after another left the client idle.
    `owns` (a shard's) keeps only its own keys: the others are counted, never stored or yielded.
    `server_now` holds the Date of the first page, `listed_until` the latest Date of any page;
    `count` and `bytes` (of the kept objects) and `any_listed` (of all) are known once the listing is read.
    """

    def __init__(self, client, bucket: str, prefix: str, parallel: int = 8,
                 owns: Callable[[str], bool] | None = None):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.parallel = parallel
        self.owns = owns
        self.server_now: datetime | None = None
        self.listed_until: datetime | None = None
        self.count = 0
        self.bytes = 0
        self.any_listed = False

    def first_page(self) -> dict:
        """Fetch the first page eagerly, so that access errors surface before any work."""
        page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1000)
        self.server_now = server_time(page)
        return page

    def in_key_order(self, first_page: dict, index_path: Path) -> Iterator[RemoteObject]:
        """The listing in UTF-8 byte order (SQLite's BINARY collation), spooled to `index_path`."""
        db = sqlite3.connect(index_path, isolation_level=None, check_same_thread=False)
        lock = threading.Lock()

        def spool(page: dict) -> None:  # any thread; the same key twice is stored once
            listed = list(self._objects_of(page))
            kept = listed if self.owns is None else [o for o in listed if self.owns(o.key)]
            rows = [(o.key, o.size, o.etag, o.last_modified.timestamp()) for o in kept]
            answered = server_time(page)
            with lock:
                self.any_listed = self.any_listed or bool(listed)
                if answered is not None and (self.listed_until is None or answered > self.listed_until):
                    self.listed_until = answered
                db.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)", rows)

        try:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
            db.execute("CREATE TABLE objects (key TEXT PRIMARY KEY, size INT, etag TEXT, modified REAL)")
            db.execute("BEGIN")
            spool(first_page)
            if first_page.get("IsTruncated"):
                self._list_by_folder(spool)
            db.execute("COMMIT")
            self.count, self.bytes = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects").fetchone()
            for key, size, etag, modified in db.execute("SELECT key, size, etag, modified FROM objects ORDER BY key"):
                yield RemoteObject(key, size, etag, datetime.fromtimestamp(modified, UTC))
        finally:
            db.close()

    def _objects_of(self, page: dict) -> Iterator[RemoteObject]:
        for item in page.get("Contents", []):
            key = item["Key"][len(self.prefix):]
            if key and not key.startswith(STATE_DIR):
                yield RemoteObject(key, item["Size"], item.get("ETag", "").strip('"'), item["LastModified"])

    def _pages(self, prefix: str, **extra) -> Iterator[dict]:
        kwargs = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000, **extra}
        while True:
            page = self.client.list_objects_v2(**kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _list_by_folder(self, spool: Callable[[dict], None]) -> None:
        """Every key under the prefix: the top level with a delimiter, then each folder in parallel.

        Each key either has no `/` after the prefix (listed at the top level) or lies under exactly
        one top-level folder (listed whole), so nothing is missed, whatever the names.
        """
        def list_folder(folder: str) -> None:
            for page in self._pages(folder):
                spool(page)

        in_flight = threading.BoundedSemaphore(self.parallel * 4)  # folder names are not all held either
        futures: list[Future] = []
        with ThreadPoolExecutor(self.parallel, thread_name_prefix="s3backup-list") as pool:
            for page in self._pages(self.prefix, Delimiter="/"):
                spool(page)
                for folder in page.get("CommonPrefixes", []):
                    if folder["Prefix"] == self.prefix + STATE_DIR:
                        continue
                    in_flight.acquire()
                    future = pool.submit(list_folder, folder["Prefix"])
                    future.add_done_callback(lambda _: in_flight.release())
                    futures.append(future)
                    futures = [f for f in futures if not f.done() or f.exception()]
            for future in futures:
                future.result()


def list_pending_uploads(client, bucket: str, prefix: str, limit: int = 10000) -> list[dict]:
    """Unfinished multipart uploads under the prefix (bounded: a sane prefix has few)."""
    uploads: list[dict] = []
    kwargs = {"Bucket": bucket, "Prefix": prefix}
    while len(uploads) < limit:
        page = client.list_multipart_uploads(**kwargs)
        uploads.extend(page.get("Uploads", []))
        if not page.get("IsTruncated"):
            break
        kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])
    return uploads
