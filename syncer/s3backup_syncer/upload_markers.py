"""The upload-marker protocol: resuming multipart uploads across runs, and cleaning up after them.

Each multipart upload we start gets a small marker object, `PREFIX/.s3backup/uploads/UPLOAD_ID`,
describing what the upload carries: the file version (key, size, mtime, inode), the part size,
and the object settings it was created with (SSE mode, KMS key id, storage class), which S3
fixes at CreateMultipartUpload. A later run resumes the upload (parts whose MD5 still matches
are not sent again) only when the marker equals what it would write itself; otherwise the
upload is aborted, so an object never ends up with an earlier run's settings.

The order of a multipart upload is: create the upload, write its marker, send the parts,
complete, delete the marker. A kill anywhere leaves either a marker with its upload (resumed or
aborted next run) or a marker whose upload is gone (deleted by `drop_stale`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .remote import STATE_DIR, list_pending_uploads
from .scan import LocalFile

log = logging.getLogger(__name__)

UPLOAD_MARKERS = STATE_DIR + "uploads/"


@dataclass
class PendingUpload:
    """An unfinished multipart upload found under the prefix at the start of the run."""

    key: str  # relative to the prefix
    upload_id: str
    initiated: datetime
    marker: dict | None = None  # what our marker says it carries; None: not ours (or unknown)


def marker_for(f: LocalFile, part_size: int, settings: dict) -> dict:
    """What a marker records: the file version, the part size, and the object's settings.

    `settings` are the CreateMultipartUpload arguments that S3 fixes for the object's lifetime.
    """
    return {
        "key": f.key, "size": f.size, "mtime_ns": f.mtime_ns, "inode": f.inode, "part_size": part_size,
        "sse": settings.get("ServerSideEncryption"),
        "sse_kms_key_id": settings.get("SSEKMSKeyId"),
        "storage_class": settings.get("StorageClass"),
        "checksum": settings.get("ChecksumAlgorithm"),
    }


class UploadMarkers:
    """The markers and unfinished uploads under `bucket/prefix`, for one run. Thread-safe."""

    def __init__(self, client, bucket: str, prefix: str, *, markers_dir: str = UPLOAD_MARKERS,
                 owns: Callable[[str], bool] | None = None):
        """`markers_dir` and `owns` are a shard's: its own markers, and only uploads of its own keys."""
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.markers_dir = markers_dir
        self.owns = owns or (lambda key: True)
        self.pending: dict[str, list[PendingUpload]] = {}  # key -> unfinished uploads; claimed ones leave
        self.created_keys: set[str] = set()  # keys this run created multipart uploads for
        self._lock = threading.Lock()

    # --- at the start of a run -------------------------------------------------------------------
    def load(self) -> None:
        """Find the unfinished uploads under the prefix, with what our markers say of them."""
        try:
            uploads = list_pending_uploads(self.client, self.bucket, self.prefix)
        except Exception as exc:  # listing uploads is optional: nothing is resumed then
            log.debug("cannot list unfinished uploads: %s", exc)
            return
        for upload in uploads:
            key = upload["Key"][len(self.prefix):]
            if key.startswith(STATE_DIR) or not self.owns(key):
                continue
            marker = None
            try:
                body = self.client.get_object(
                    Bucket=self.bucket, Key=self.prefix + self.markers_dir + upload["UploadId"]
                )["Body"].read(4096)
                marker = json.loads(body)
            except Exception:  # no marker: not ours, or crashed before it was written
                pass
            self.pending.setdefault(key, []).append(PendingUpload(key, upload["UploadId"], upload["Initiated"], marker))

    def has_leftovers(self, key: str) -> bool:
        return key in self.pending

    # --- during an upload -----------------------------------------------------------------------
    def claim(self, key: str, wanted: dict) -> PendingUpload | None:
        """An unfinished upload whose marker is exactly `wanted`, taken out of the pending ones."""
        with self._lock:
            candidates = self.pending.get(key, [])
            resumable = next((p for p in candidates if p.marker == wanted), None)
            if resumable is not None:
                candidates.remove(resumable)
            return resumable

    def parts_of(self, key: str, upload_id: str) -> dict[int, tuple[int, str]]:
        """The parts already on the server: number -> (size, md5 hex)."""
        parts: dict[int, tuple[int, str]] = {}
        kwargs = {"Bucket": self.bucket, "Key": self.prefix + key, "UploadId": upload_id}
        while True:
            page = self.client.list_parts(**kwargs)
            for part in page.get("Parts", []):
                parts[part["PartNumber"]] = (part["Size"], part["ETag"].strip('"'))
            if not page.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    def created(self, key: str) -> None:
        """This run is creating a multipart upload for `key` (see `abort_leftovers`)."""
        with self._lock:
            self.created_keys.add(key)

    def write(self, upload_id: str, marker: dict) -> None:
        body = json.dumps(marker).encode()
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + self.markers_dir + upload_id, Body=body,
                               ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode())

    def delete(self, upload_id: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + self.markers_dir + upload_id)
        except Exception as exc:
            log.debug("could not delete upload marker %s: %s", upload_id, exc)

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.prefix + key, UploadId=upload_id)
        except Exception as exc:
            log.warning("could not abort an unfinished upload of %s: %s", key, exc)

    # --- at the end of a run --------------------------------------------------------------------
    def drop_stale(self) -> None:
        """Delete markers whose upload is gone (a kill between completing an upload and deleting its marker)."""
        try:
            live = {u["UploadId"] for u in list_pending_uploads(self.client, self.bucket, self.prefix)}
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + self.markers_dir):
                for item in page.get("Contents", []):
                    upload_id = item["Key"].rsplit("/", 1)[-1]
                    if upload_id not in live:
                        self.delete(upload_id)
        except Exception as exc:  # housekeeping only: the next run tries again
            log.debug("could not tidy upload markers: %s", exc)

    def abort_leftovers(self, run_started: datetime, keys_in_source: set[str],
                        stale_after_seconds: float = 86400) -> int:
        """Abort unfinished uploads that no run will finish; returns how many.

        - Uploads found at the start and not resumed: ours (they have a marker); any upload of a
          key that is in the source (the prefix is s3backup's, and this run has just uploaded or
          checked that file: a marker-less one is a crash's leftover); anyone's older than a day.
          An overlapping run may lose an in-flight upload this way: it reports that file as
          failed, and the next run uploads it again.
        - Uploads made during this run for keys it uploaded: all of ours are finished by now, so
          these are orphans of a lost CreateMultipartUpload answer that botocore retried.
        `run_started` is the server's time at the start of the run.
        """
        with self._lock:
            leftovers = [p for uploads in self.pending.values() for p in uploads]
            self.pending.clear()
        doomed = [
            (upload.key, upload.upload_id) for upload in leftovers
            if upload.marker is not None or upload.key in keys_in_source
            or (run_started - upload.initiated).total_seconds() >= stale_after_seconds
        ]
        try:
            after_run = list_pending_uploads(self.client, self.bucket, self.prefix) if self.created_keys else []
        except Exception as exc:  # cleanup is best effort; the next run tries again
            log.warning("could not list unfinished uploads: %s", exc)
            after_run = []
        for upload in after_run:
            key = upload["Key"][len(self.prefix):]
            if key in self.created_keys and upload["Initiated"] >= run_started:
                doomed.append((key, upload["UploadId"]))
        for key, upload_id in doomed:
            self.abort(key, upload_id)
            self.delete(upload_id)
        return len(doomed)
