"""The sync plan: a pure merge-join of the local walk and the remote listing, and every decision.

Both inputs arrive sorted in S3's key order (UTF-8 bytes). The join takes one entry from
each side, compares keys and advances the smaller, so memory stays constant. Out-of-order
input is a bug and fails loudly: a silent misorder would make a present file look deleted.

The other decisions of a run are here too, as pure functions over plain data: what to do with
a file after hashing it, whether recycling may happen at all, and whether one object may be
deleted once its HEAD is known.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from .etag import etag_key
from .remote import RemoteObject
from .scan import LocalFile, key_order


class OrderError(RuntimeError):
    """An input of the merge-join was not in key order."""


class Action(enum.Enum):
    UPLOAD_NEW = "upload (new)"
    UPLOAD_CHANGED = "upload (changed)"
    UNCHANGED = "unchanged"
    CHECK = "check"  # same size, ETag unknown locally: hash the file, then decide
    RECYCLE = "recycle"  # remote only, old enough
    KEEP_YOUNG = "keep (too young to recycle)"
    KEEP = "keep"  # remote only, recycling off or out of the filters' scope


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    local: LocalFile | None
    remote: RemoteObject | None
    etag_keys: tuple[int, ...] = ()  # for CHECK: the part sizes worth hashing with (0 = plain MD5)


def merge_join(
    local: Iterable[LocalFile], remote: Iterable[RemoteObject]
) -> Iterator[tuple[LocalFile | None, RemoteObject | None]]:
    """Pairs of (local, remote) with the same key; None on the side where the key is missing."""
    local_iter, remote_iter = iter(local), iter(remote)
    last_local = last_remote = b""
    loc = next(local_iter, None)
    rem = next(remote_iter, None)
    while loc is not None or rem is not None:
        loc_key = key_order(loc.key) if loc is not None else None
        rem_key = key_order(rem.key) if rem is not None else None
        if loc_key is not None and loc_key <= last_local and last_local:
            raise OrderError(f"local walk out of order at {loc.key!r}")
        if rem_key is not None and rem_key <= last_remote and last_remote:
            raise OrderError(f"remote listing out of order at {rem.key!r}")
        if rem_key is None or (loc_key is not None and loc_key < rem_key):
            yield loc, None
            last_local = loc_key
            loc = next(local_iter, None)
        elif loc_key is None or rem_key < loc_key:
            yield None, rem
            last_remote = rem_key
            rem = next(remote_iter, None)
        else:
            yield loc, rem
            last_local, last_remote = loc_key, rem_key
            loc = next(local_iter, None)
            rem = next(remote_iter, None)


def decide_present(
    local: LocalFile,
    remote: RemoteObject | None,
    *,
    compare: str,
    configured_part_size: int | None,
    cached_etags: dict[int, str] | None,
) -> Decision:
    """Upload, skip, or hash first, for a file that exists locally."""
    if remote is None:
        return Decision(Action.UPLOAD_NEW, local, None)
    if local.size != remote.size:
        return Decision(Action.UPLOAD_CHANGED, local, remote)
    if compare == "size":
        return Decision(Action.UNCHANGED, local, remote)
    keys = etag_key(local.size, remote.etag, configured_part_size)
    if not keys:
        # No part size can give this ETag for this size: not an upload we can verify; redo it.
        return Decision(Action.UPLOAD_CHANGED, local, remote)
    verdict = etag_verdict(cached_etags or {}, remote.etag, keys)
    if verdict is None:
        missing = tuple(k for k in keys if k not in (cached_etags or {}))
        return Decision(Action.CHECK, local, remote, missing)
    return Decision(Action.UNCHANGED if verdict else Action.UPLOAD_CHANGED, local, remote)


def etag_verdict(known: dict[int, str], remote_etag: str, candidate_keys: Iterable[int]) -> bool | None:
    """Whether the local file matches `remote_etag`: True, False, or None when more hashing is needed.

    `known` maps part sizes (0 = plain MD5) to local ETags. Each part size gives a different
    ETag and only one of them produced the remote object, so a mismatch is proof of a change
    only once every candidate part size has been tried.
    """
    if remote_etag.strip('"') in known.values():
        return True
    if all(k in known for k in candidate_keys):
        return False
    return None


def worth_asking_for_the_md5(local: LocalFile, remote: RemoteObject) -> bool:
    """After hashing, when the file's MD5 is not the object's ETag: whether to ask (HEAD) for the MD5 the sync put
    in the metadata, in case that ETag is no checksum (SSE-KMS, DSSE-KMS, SSE-C). Only for an object written
    after the file last changed (LastModified has one-second steps), as every object is after a hash cache is
    lost; a file changed since its upload is sent again without asking."""
    return local.mtime_ns < (remote.last_modified.timestamp() + 1) * 1_000_000_000


def decide_remote_only(
    remote: RemoteObject,
    *,
    recycle_after_seconds: float | None,
    in_scope: bool,
    server_now: datetime,
) -> Decision:
    """Recycle, or keep, an object whose local file is gone."""
    if recycle_after_seconds is None or not in_scope:
        return Decision(Action.KEEP, None, remote)
    age = (server_now - remote.last_modified).total_seconds()
    if age >= recycle_after_seconds:
        return Decision(Action.RECYCLE, None, remote)
    return Decision(Action.KEEP_YOUNG, None, remote)


def verdict_after_hashing(known: dict[int, str], remote_etag: str, candidate_keys: Iterable[int]) -> Action:
    """After hashing for every candidate part size: unchanged only if one of them explains the ETag."""
    return Action.UNCHANGED if etag_verdict(known, remote_etag, candidate_keys) else Action.UPLOAD_CHANGED


@dataclass(frozen=True, slots=True)
class RecycleConditions:
    """What the run knows, after the march, about whether deleting anything is safe."""

    candidates: int  # remote-only objects old enough to recycle
    files_scanned: int
    files_failed: int
    server_clock_known: bool  # the server sent a Date header (ages are judged by its clock)
    cap: int  # --max-recycle, as a count for this prefix
    cap_setting: str  # --max-recycle as the user wrote it


def recycle_refusal(c: RecycleConditions) -> str | None:
    """Why recycling must not happen this run, or None when it may."""
    if not c.candidates:
        return None
    if c.files_scanned == 0:
        return f"the source is empty: refusing to recycle {c.candidates} object(s) (is the volume mounted?)"
    if c.files_failed:
        return "some files failed this run: nothing is recycled until a run succeeds"
    if not c.server_clock_known:
        return "the S3 server sent no Date header, so object ages cannot be told safely"
    if c.candidates > c.cap:
        return (f"{c.candidates} object(s) are due for recycling, over the cap of {c.cap} "
                f"(--max-recycle {c.cap_setting}): nothing was deleted")
    return None


class RecycleCheck(enum.Enum):
    DELETE = "delete"  # still the object the listing showed, and not one this run wrote
    GONE = "gone"  # HEAD said 404: already deleted (deleting it again is harmless)
    REWRITTEN = "rewritten"  # written since the listing, or possibly by this run: kept
    UNKNOWN = "unknown"  # HEAD failed otherwise (403, 5xx after retries, no answer): kept, recycling blocked


@dataclass(frozen=True, slots=True)
class HeadAnswer:
    """The HEAD of a recycle candidate: its status, and its ETag and LastModified when it was a 200."""

    status: int  # HTTP status; 0 when no answer came at all
    etag: str = ""
    last_modified: datetime | None = None


def check_before_recycle(listed: RemoteObject, head: HeadAnswer, own_writes_from: datetime | None) -> RecycleCheck:
    """Whether a recycle candidate may be deleted, judged from its HEAD just before the deletion.

    The whole listing is read before this run writes anything, so an object whose HEAD shows the
    listing's ETag and LastModified is not one this run wrote, nor one rewritten since. One case
    remains: the same content written again within the same second as the listed version (a name
    the server aliases, such as SeaweedFS's `a\\b` for `a/b`). That is possible only if the listed
    version is not older than the first second in which this run could write, `own_writes_from`
    (None: this run wrote nothing). LastModified is compared to the second: HEAD has no finer grain.
    """
    if head.status == 404:
        return RecycleCheck.GONE
    if head.status != 200 or head.last_modified is None:
        return RecycleCheck.UNKNOWN
    modified = int(head.last_modified.timestamp())
    if head.etag.strip('"') != listed.etag or modified != int(listed.last_modified.timestamp()):
        return RecycleCheck.REWRITTEN
    if own_writes_from is not None and modified >= int(own_writes_from.timestamp()):
        return RecycleCheck.REWRITTEN
    return RecycleCheck.DELETE
