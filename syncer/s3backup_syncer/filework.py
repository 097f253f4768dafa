"""The work on one file, in a worker thread: hash it and decide, or upload it (with whole-file retries).

An object whose content is already right is never rewritten: when only the file's attributes
changed (mtime, mode), they are recorded in s3backup's own state (attributes_state.py) instead.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import botocore.exceptions

from .attributes_state import AttributeState, content_etag_of
from .config import SyncOptions
from .download import ObjectRef, head
from .etag import EtagHasher, etag_key
from .hashcache import HashCache
from .plan import Action, Decision, verdict_after_hashing, worth_asking_for_the_md5
from .remote import RemoteObject, describe_client_error
from .report import Summary
from .scan import LocalFile
from .transfer import SERVER_ETAG, FileChanged, Uploader, UploadFailed, content_etag_to_record

log = logging.getLogger("s3backup")

FILE_ATTEMPTS = 3


def hash_file(local: LocalFile, part_sizes: tuple[int, ...]) -> dict[int, str]:
    """The file's ETags for these part sizes (0 = plain MD5), from one read; the file must not change."""
    with open(local.path, "rb") as handle:
        hasher = EtagHasher(part_sizes).update_from(handle)
        if hasher.bytes != local.size or not local.same_version(os.fstat(handle.fileno())):
            raise FileChanged("file changed while it was read")
    return hasher.etags()


class FileWorker:
    """Checks and uploads files; each file's failure is recorded in the summary, and the run goes on."""

    def __init__(self, options: SyncOptions, summary: Summary, uploader: Uploader, *,
                 cache: HashCache | None, attributes: AttributeState | None,
                 on_uploaded: Callable[[LocalFile, RemoteObject | None], None]):
        self.options = options
        self.summary = summary
        self.uploader = uploader
        self.cache = cache
        self.attributes = attributes
        self.on_uploaded = on_uploaded

    def process(self, decision: Decision, cached: dict[int, str]) -> None:
        """Check and/or upload one file."""
        local = decision.local
        assert local is not None
        try:
            action = decision.action
            if action is Action.CHECK:
                action = self._check(decision, cached)
                if action is Action.UNCHANGED:
                    self.summary.add(files_unchanged=1, bytes_unchanged=local.size)
                    return
            self._upload_with_retries(local, decision.remote, action)
        except FileChanged as exc:
            self._fail(local, str(exc))
        except OSError as exc:
            self._fail(local, f"cannot read: {exc.strerror or exc}")
        except Exception as exc:  # a bug or an unforeseen failure: this file fails, the run goes on
            log.debug("unexpected failure on %s", local.key, exc_info=True)
            self._fail(local, f"{type(exc).__name__}: {exc}")

    def _fail(self, local: LocalFile, message: str) -> None:
        log.error("%s: %s", local.key, message)
        self.summary.fail(local.key, message, local.size)

    def _check(self, decision: Decision, cached: dict[int, str]) -> Action:
        """Hash the file for the part sizes that could explain the remote ETag, then decide."""
        local, remote = decision.local, decision.remote
        assert local is not None and remote is not None
        etags = hash_file(local, decision.etag_keys)
        self.summary.add(bytes_hashed=local.size)
        known = {**cached, **etags}
        action = verdict_after_hashing(known, remote.etag, etag_key(local.size, remote.etag, self.options.part_size))
        content_etag = None
        if action is Action.UPLOAD_CHANGED and self.attributes is not None:
            content_etag = content_etag_of(self.attributes.lookup(remote.key, remote.etag))
        if content_etag is not None and content_etag in known.values():
            action = Action.UNCHANGED  # an encrypted multipart object, which s3backup's state vouches for
        elif action is Action.UPLOAD_CHANGED and 0 in etags and self._md5_in_metadata_is(local, remote, etags[0]):
            action = Action.UNCHANGED
        if action is Action.UNCHANGED and remote.etag not in known.values():
            etags = {**etags, SERVER_ETAG: remote.etag}  # next time the hash cache tells, without a HEAD
        if self.cache is not None:
            self.cache.store(local, etags)
        if action is Action.UNCHANGED and self.attributes is not None:
            # Same content: the object stays as it is. The file's attributes may differ from those in
            # the object's metadata (a touch, another tool's upload): they go in s3backup's state.
            self.attributes.record(local.key, remote.etag, local.mtime_ns, local.mode, content_etag)
        return action

    def _md5_in_metadata_is(self, local: LocalFile, remote: RemoteObject, md5: str) -> bool:
        """Whether an object whose ETag is not the file's MD5 holds the file all the same: its ETag is no checksum
        and the MD5 the sync put in its metadata is `md5` (one HEAD, where plan.worth_asking_for_the_md5)."""
        if not worth_asking_for_the_md5(local, remote):
            return False
        ref = ObjectRef(self.options.bucket, self.options.prefix + remote.key, remote.size, remote.etag)
        answer = head(self.uploader.client, ref)
        return answer is not None and not answer.etag_is_md5 and answer.expected_etag(remote.etag) == md5

    def _upload_with_retries(self, local: LocalFile, remote: RemoteObject | None, action: Action) -> None:
        """botocore retries each request; this retries the whole file when a request's answer was bad."""
        for attempt in range(1, FILE_ATTEMPTS + 1):
            try:
                self._upload(local, remote, action)
                return
            except FileChanged:
                raise
            except (UploadFailed, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                message = str(exc) if isinstance(exc, UploadFailed) else describe_client_error(exc, self.options.bucket)
                if attempt == FILE_ATTEMPTS:
                    self._fail(local, message)
                    return
                log.warning("%s: %s; trying again (%d/%d)", local.key, message, attempt + 1, FILE_ATTEMPTS)
                time.sleep(attempt)

    def _upload(self, local: LocalFile, remote: RemoteObject | None, action: Action) -> None:
        if self.options.dry_run:
            print(f"would {action.value}: {local.key} ({local.size} bytes)", flush=True)
            self.summary.add(files_uploaded=1)
            return
        etags = self.uploader.upload(local)
        if self.cache is not None:
            self.cache.store(local, etags)
        if self.attributes is not None:
            content_etag = content_etag_to_record(etags)
            if content_etag is None:
                self.attributes.forget(local.key)  # the new object's metadata holds the attributes
            else:  # and s3backup's state the content's ETag, which neither the object's ETag nor metadata hold
                self.attributes.record(local.key, etags[SERVER_ETAG], local.mtime_ns, local.mode, content_etag)
        self.on_uploaded(local, remote)
        self.summary.add(files_uploaded=1)
        log.info("uploaded %s (%d bytes, %s)", local.key, local.size, action.value)
