"""Options of a sync run, and the parsers that turn user text into them (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .etag import validate_part_size
from .shards import Shard
from .units import GiB, KiB, MiB, TiB

_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_size(text: str) -> int:
    """`5MiB`, `1GiB`, `512k`, `1048576` -> bytes. K, M, G and T are binary, as are KiB, MiB..."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise ConfigError(f"invalid size {text!r}: use a number with an optional unit, e.g. 64MiB or 1G")
    number, unit = match.groups()
    value = float(number) * _SIZE_UNITS[unit]
    if not value < 2**63:
        raise ConfigError(f"invalid size {text!r}: too large")
    return int(value)


def parse_duration(text: str) -> float:
    """`30d`, `36h`, `90m`, `0s`, `1w`, or combinations like `1d12h` -> seconds."""
    cleaned = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise ConfigError(f"invalid duration {text!r}: use a number and a unit s, m, h, d or w, e.g. 30d or 12h")
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if not seconds <= 1000 * 365 * 86400:
        raise ConfigError(f"invalid duration {text!r}: too long")
    return seconds


def is_utf8(text: str) -> bool:
    """False for text holding undecodable bytes (surrogates), as argv and file names may."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_timeout(name: str, text: str | None, default: float) -> float:
    """A timeout in seconds from the environment (`S3BACKUP_READ_TIMEOUT`, ...)."""
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise ConfigError(f"invalid {name} {text!r}: seconds, more than 0 and at most 3600")
    return value


@dataclass(frozen=True)
class RecycleCap:
    """`--max-recycle`: an absolute count, or a percentage of the objects under the prefix."""

    count: int | None = None
    percent: float | None = None

    def limit(self, remote_objects: int) -> int:
        if self.count is not None:
            return self.count
        return int(remote_objects * (self.percent or 0) / 100)

    def __str__(self) -> str:
        return f"{self.count}" if self.count is not None else f"{self.percent:g}%"


def parse_recycle_cap(text: str) -> RecycleCap:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*", text)
    if not match:
        raise ConfigError(f"invalid --max-recycle {text!r}: use a count (100) or a percentage (10%)")
    number, percent = match.groups()
    if percent:
        if float(number) > 100:
            raise ConfigError(f"invalid --max-recycle {text!r}: a percentage is at most 100%")
        return RecycleCap(percent=float(number))
    if "." in number:
        raise ConfigError(f"invalid --max-recycle {text!r}: a count is a whole number")
    return RecycleCap(count=int(number))


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"). The prefix always ends in `/`."""
    if not is_utf8(url):
        raise ConfigError(f"invalid destination {url!a}: S3 keys must be valid UTF-8")
    if not url.startswith("s3://"):
        raise ConfigError(f"invalid destination {url!r}: expected s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"invalid bucket name {bucket!r}: 3 to 63 characters of lowercase letters, digits, '.' and '-'"
        )
    prefix = prefix.strip("/")
    if "//" in prefix:
        raise ConfigError(f"invalid prefix {prefix!r}: empty path segments ('//') are not allowed")
    return bucket, (prefix + "/" if prefix else "")


@dataclass(frozen=True)
class SyncOptions:
    source: Path
    bucket: str
    prefix: str  # "" or ends with "/"
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    compare: str = "md5"  # "md5" | "size"
    recycle_after_seconds: float | None = None  # None: never delete anything remote
    recycle_cap: RecycleCap = field(default_factory=lambda: RecycleCap(percent=50))
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    part_size: int | None = None  # None: automatic (see etag.auto_part_size)
    concurrency: int = 8
    bwlimit: int | None = None  # bytes per second
    dry_run: bool = False
    hash_cache: bool = True
    follow_symlinks: bool = False
    include_lost_found: bool = False  # lost+found at the source root (see filters.py)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    shard: Shard = field(default_factory=Shard)  # --shard I/N; Shard(0, 1): the whole prefix
    run_id: str | None = None  # --run-id: names a sharded run's results, for the final recycle step

    def __post_init__(self) -> None:
        if not self.shard.whole and not self.run_id and not self.dry_run:
            raise ConfigError(f"--shard {self.shard} needs --run-id ID, the same for every shard of the run")
        if self.compare not in ("md5", "size"):
            raise ConfigError(f"invalid --compare {self.compare!r}: use md5 or size")
        if not 1 <= self.concurrency <= 256:
            raise ConfigError(f"invalid --concurrency {self.concurrency}: use 1 to 256")
        if self.recycle_after_seconds is not None and self.recycle_after_seconds < 0:
            raise ConfigError("invalid --recycle-after: must not be negative")
        if self.bwlimit is not None and self.bwlimit < 1024:
            raise ConfigError("invalid --bwlimit: at least 1KiB (per second)")
        if self.sse not in (None, "AES256", "aws:kms"):
            raise ConfigError(f"invalid --sse {self.sse!r}: use AES256 or aws:kms")
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ConfigError("--sse-kms-key-id needs --sse aws:kms")
        if self.part_size is not None:
            validate_part_size(self.part_size)
