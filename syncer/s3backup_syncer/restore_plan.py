"""Restore and verify decisions (pure): sync's compare in reverse, over plain data.

Restore walks the target and lists the prefix in the same key order as sync, pairs them with the
same merge-join, and judges a present file with the same compare (`plan.decide_present`): a
different size differs, an equal size is settled by the ETag, for every part size that could
explain it. Only the action differs: download instead of upload, and an existing file that
differs is replaced only when asked.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from .attributes_state import META_MODE, META_MTIME, RecordedAttributes
from .config import parse_duration
from .errors import ConfigError
from .plan import Action, decide_present
from .remote import RemoteObject
from .scan import LocalFile

#: The longest file name most file systems take, in bytes.
MAX_NAME_BYTES = 255
#: Temporary names of files being restored start with this; the walk of the target ignores them.
TEMP_PREFIX = ".s3backup-restore-"
#: Other tools' metadata keys, as boto3 returns them (lowercase, without `x-amz-meta-`).
RCLONE_MTIME = "mtime"  # rclone: seconds since the epoch, with a fraction
S3CMD_ATTRS = "s3cmd-attrs"  # s3cmd: "mode:33188/mtime:1700000000/..."


class RestoreAction(enum.Enum):
    DOWNLOAD = "restore"  # no local file
    REPLACE = "replace"  # the local file differs, and --overwrite
    CONFLICT = "conflict"  # the local file differs: reported, left alone
    CHECK = "check"  # same size: hash the local file, then decide
    SKIP = "unchanged"  # the local file is already the object's content
    REFUSE = "refuse"  # the key cannot be a file name under the target safely


@dataclass(frozen=True, slots=True)
class RestoreDecision:
    action: RestoreAction
    remote: RemoteObject
    local: LocalFile | None = None
    etag_keys: tuple[int, ...] = ()  # for CHECK: the part sizes worth hashing with (0 = plain MD5)
    reason: str = ""  # for REFUSE


def unsafe_key_reason(key: str) -> str | None:
    """Why `key` cannot become a path under the target, or None. A key must never climb out of it."""
    if "\0" in key:
        return "the key holds a NUL byte, which no file name can"
    segments = key.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "the key has an empty, '.' or '..' path segment, so it is no safe file name"
    if any(len(segment.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for segment in segments):
        return f"a name in the key is longer than {MAX_NAME_BYTES} bytes"
    if segments[-1].startswith(TEMP_PREFIX):
        return f"names starting with {TEMP_PREFIX} are restore's temporary files"
    return None


def decide_restore(local: LocalFile | None, remote: RemoteObject, *, overwrite: bool) -> RestoreDecision:
    """Download, skip, replace, or hash the local file first."""
    reason = unsafe_key_reason(remote.key)
    if reason:
        return RestoreDecision(RestoreAction.REFUSE, remote, local, reason=reason)
    if local is None:
        return RestoreDecision(RestoreAction.DOWNLOAD, remote)
    decision = decide_present(local, remote, compare="md5", configured_part_size=None, cached_etags=None)
    if decision.action is Action.CHECK:
        return RestoreDecision(RestoreAction.CHECK, remote, local, decision.etag_keys)
    if decision.action is Action.UNCHANGED:
        return RestoreDecision(RestoreAction.SKIP, remote, local)
    return after_check(False, local, remote, overwrite=overwrite)


def after_check(identical: bool, local: LocalFile, remote: RemoteObject, *, overwrite: bool) -> RestoreDecision:
    """The decision once the local file's ETags are known."""
    if identical:
        return RestoreDecision(RestoreAction.SKIP, remote, local)
    return RestoreDecision(RestoreAction.REPLACE if overwrite else RestoreAction.CONFLICT, remote, local)


def temp_name(file_name: str) -> str:
    """The temporary name a file is written under, in its own directory (a rename is then atomic).

    Deterministic, so that a restore resumed after a crash writes over its own leftover rather
    than leaving a second one; short, so that it fits whatever the final name's length.
    """
    digest = hashlib.sha256(file_name.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return TEMP_PREFIX + digest


# --- attributes ---------------------------------------------------------------------------------

def file_attributes(
    metadata: dict[str, str], last_modified: datetime, recorded: RecordedAttributes | None
) -> tuple[int, int | None]:
    """(mtime in ns, permission bits or None) for a restored file.

    s3backup's state wins (a later mtime recorded without rewriting the object), then our own
    metadata, then other tools' (rclone's `mtime`, s3cmd's attributes), then the object's
    LastModified. No recorded mode leaves the file with the default one.
    """
    s3cmd = dict(item.partition(":")[::2] for item in metadata.get(S3CMD_ATTRS, "").split("/") if ":" in item)
    mtime = _int(metadata.get(META_MTIME))
    if mtime is None:
        mtime = _seconds_to_ns(metadata.get(RCLONE_MTIME)) or _seconds_to_ns(s3cmd.get("mtime"))
    if mtime is None:
        mtime = int(Decimal(str(last_modified.timestamp())) * 1_000_000_000)
    mode = _int(metadata.get(META_MODE), 8)
    if mode is None and _int(s3cmd.get("mode")) is not None:
        mode = _int(s3cmd.get("mode"))
    if recorded is not None:
        mtime = recorded[0]
        mode = recorded[1] if recorded[1] is not None else mode
    return mtime, (mode & 0o777 if mode is not None else None)


def same_without_checksum(local: LocalFile, remote: RemoteObject, metadata: dict[str, str],
                          recorded: RecordedAttributes | None, *, local_etags: dict[int, str],
                          content_etag: str | None) -> bool:
    """Where the object's ETag is no checksum (SSE-KMS, DSSE-KMS, SSE-C): whether `local` is the object.

    By content where the sync left the content's ETag (`content_etag`, GetAnswer.expected_etag: the MD5 in the
    metadata, or the ETag in s3backup's state) and the file was hashed (`local_etags`, by part size); else by
    the sync's own test, its size and the mtime a restore gives it (`metadata` from a HEAD).
    """
    if content_etag is not None and local_etags:
        return content_etag in local_etags.values()
    return local.size == remote.size and local.mtime_ns == file_attributes(metadata, remote.last_modified, recorded)[0]


def _int(text: str | None, base: int = 10) -> int | None:
    try:
        return int(text, base) if text is not None else None
    except ValueError:
        return None


def _seconds_to_ns(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(Decimal(text) * 1_000_000_000)
    except (InvalidOperation, ValueError):
        return None


# --- point in time ------------------------------------------------------------------------------

def parse_as_of(text: str, now: datetime) -> datetime:
    """`--as-of`: an RFC 3339 time (`2026-11-01T00:00:00Z`) or a duration ago (`3d`, `12h`)."""
    cleaned = text.strip()
    if cleaned and cleaned[-1:].lower() in "smhdw" and cleaned[:1].isdigit() and "-" not in cleaned:
        return now - timedelta(seconds=parse_duration(cleaned))
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ConfigError(
            f"invalid --as-of {text!r}: use an RFC 3339 time (2026-11-01T00:00:00Z) or a duration ago (3d)"
        ) from None
    if moment.tzinfo is None:
        raise ConfigError(f"invalid --as-of {text!r}: give a time zone (Z or +01:00)")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One entry of ListObjectVersions: a version, or a delete marker."""

    key: str
    version_id: str
    last_modified: datetime
    is_latest: bool
    delete_marker: bool
    size: int = 0
    etag: str = ""


def version_as_of(versions: Sequence[ObjectVersion], as_of: datetime) -> ObjectVersion | None:
    """The version of one key that was current at `as_of`, or None (not there yet, or deleted).

    Servers date versions to the second, so ties are common: the latest version goes first,
    then on equal times a version before a delete marker (when in doubt, restore data).
    """
    ordered = sorted(versions, key=lambda v: (-v.last_modified.timestamp(), not v.is_latest, v.delete_marker))
    for version in ordered:
        if version.last_modified <= as_of:
            return None if version.delete_marker else version
    return None


# --- verify -------------------------------------------------------------------------------------

class Finding(enum.Enum):
    MISSING = "missing"  # a local file with no object
    DIFFERS = "differs"  # the object's size or ETag is not the local file's
    EXTRA = "extra"  # an object with no local file
    CORRUPT = "corrupt"  # the downloaded bytes are not those the ETag promises
    SAME = "same"
    CHECK = "check"  # same size, local ETag unknown: hash the file


def decide_verify(
    local: LocalFile | None, remote: RemoteObject | None, cached_etags: dict[int, str] | None
) -> tuple[Finding, tuple[int, ...]]:
    """What one pair of the merge-join says, and for CHECK the part sizes to hash with."""
    if remote is None:
        return Finding.MISSING, ()
    if local is None:
        return Finding.EXTRA, ()
    decision = decide_present(local, remote, compare="md5", configured_part_size=None, cached_etags=cached_etags)
    if decision.action is Action.UNCHANGED:
        return Finding.SAME, ()
    if decision.action is Action.CHECK:
        return Finding.CHECK, decision.etag_keys
    return Finding.DIFFERS, ()


def in_sample(key: str, percent: float, seed: int) -> bool:
    """Whether `key` is in a `percent` sample: the same keys for the same seed, whatever else changed."""
    if percent >= 100:
        return True
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") < percent / 100 * 2**64
