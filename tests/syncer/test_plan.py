"""The pure decisions: key order, merge-join, upload/skip/check/recycle."""

from datetime import UTC, datetime, timedelta

import pytest
from s3backup_syncer.etag import (
    EtagHasher,
    MiB,
    auto_part_size,
    candidate_part_sizes,
    parse_etag,
    server_etag_is_md5,
)
from s3backup_syncer.plan import (
    Action,
    HeadAnswer,
    OrderError,
    RecycleCheck,
    RecycleConditions,
    check_before_recycle,
    decide_present,
    decide_remote_only,
    etag_verdict,
    merge_join,
    recycle_refusal,
    verdict_after_hashing,
)
from s3backup_syncer.remote import RemoteObject
from s3backup_syncer.scan import LocalFile, key_order
from s3backup_syncer.transfer import SERVER_ETAG
from s3backup_syncer.upload_markers import marker_for

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def local(key: str, size: int = 10) -> LocalFile:
    return LocalFile(key=key, path="/nonexistent/" + key, size=size, mtime_ns=1, ctime_ns=1, inode=1)


def remote(key: str, size: int = 10, etag: str = "d41d8cd98f00b204e9800998ecf8427e", age_hours: float = 0):
    return RemoteObject(key=key, size=size, etag=etag, last_modified=NOW - timedelta(hours=age_hours))


def test_key_order_is_utf8_byte_order_not_per_directory_name_order():
    keys = ["a/b", "a-b", "a.b", "a0", "é", "z", "a/a"]
    assert sorted(keys, key=key_order) == ["a-b", "a.b", "a/a", "a/b", "a0", "z", "é"]


def test_merge_join_pairs_equal_keys_and_keeps_one_sided_entries():
    pairs = list(merge_join([local("a-b"), local("a/b"), local("c")], [remote("a.b"), remote("a/b"), remote("d")]))
    assert [(lo.key if lo else None, re.key if re else None) for lo, re in pairs] == [
        ("a-b", None), (None, "a.b"), ("a/b", "a/b"), ("c", None), (None, "d"),
    ]


def test_merge_join_fails_loudly_on_out_of_order_input():
    with pytest.raises(OrderError, match="local walk out of order"):
        list(merge_join([local("b"), local("a")], []))
    with pytest.raises(OrderError, match="remote listing out of order"):
        list(merge_join([], [remote("a/b"), remote("a-b")]))


def test_new_and_resized_files_upload_without_hashing():
    assert decide_present(local("x"), None, compare="md5", configured_part_size=None,
                          cached_etags=None).action is Action.UPLOAD_NEW
    assert decide_present(local("x", 11), remote("x", 10), compare="md5", configured_part_size=None,
                          cached_etags=None).action is Action.UPLOAD_CHANGED


def test_size_mode_trusts_equal_sizes():
    decision = decide_present(local("x"), remote("x", etag="whatever"), compare="size",
                              configured_part_size=None, cached_etags=None)
    assert decision.action is Action.UNCHANGED


def test_md5_mode_uses_the_cache_or_asks_for_a_hash():
    etag = "0123456789abcdef0123456789abcdef"
    same = decide_present(local("x"), remote("x", etag=etag), compare="md5", configured_part_size=None,
                          cached_etags={0: etag})
    assert same.action is Action.UNCHANGED
    changed = decide_present(local("x"), remote("x", etag=etag), compare="md5", configured_part_size=None,
                             cached_etags={0: "f" * 32})
    assert changed.action is Action.UPLOAD_CHANGED
    unknown = decide_present(local("x"), remote("x", etag=etag), compare="md5", configured_part_size=None,
                             cached_etags=None)
    assert unknown.action is Action.CHECK and unknown.etag_keys == (0,)


def test_a_multipart_mismatch_is_a_change_only_once_every_candidate_part_size_was_tried():
    size = 20 * MiB
    candidates = candidate_part_sizes(size, 3, None)
    assert candidates[0] == 8 * MiB  # our own rule first
    remote_etag = "a" * 32 + "-3"
    assert etag_verdict({8 * MiB: "b" * 32 + "-3"}, remote_etag, candidates) is None
    assert etag_verdict({c: "b" * 32 + "-3" for c in candidates}, remote_etag, candidates) is False
    assert etag_verdict({9 * MiB: remote_etag}, remote_etag, candidates) is True


def test_impossible_multipart_etag_for_the_size_means_upload_again():
    # 3 parts cannot hold 1 KiB with parts of at least 5 MiB
    decision = decide_present(local("x", 1024), remote("x", 1024, etag="a" * 32 + "-3"), compare="md5",
                              configured_part_size=None, cached_etags=None)
    assert decision.action is Action.UPLOAD_CHANGED


def test_recycling_needs_the_option_the_scope_and_the_age():
    old = remote("gone", age_hours=48)
    young = remote("gone", age_hours=1)
    assert decide_remote_only(old, recycle_after_seconds=None, in_scope=True, server_now=NOW).action is Action.KEEP
    assert decide_remote_only(old, recycle_after_seconds=86400, in_scope=False, server_now=NOW).action is Action.KEEP
    assert decide_remote_only(old, recycle_after_seconds=86400, in_scope=True, server_now=NOW).action is Action.RECYCLE
    assert decide_remote_only(young, recycle_after_seconds=86400, in_scope=True,
                              server_now=NOW).action is Action.KEEP_YOUNG


def test_an_object_from_the_future_is_never_old():
    future = RemoteObject("k", 1, "e", NOW + timedelta(days=3))
    assert decide_remote_only(future, recycle_after_seconds=0, in_scope=True, server_now=NOW).action \
        is Action.KEEP_YOUNG


def test_multipart_etag_matches_the_s3_formula():
    import hashlib

    data = bytes(range(256)) * (50 * 1024)  # 12.5 MiB
    hasher = EtagHasher([0, 5 * MiB, 8 * MiB])
    for offset in range(0, len(data), 333_333):  # feed in odd-sized chunks
        hasher.update(data[offset:offset + 333_333])
    etags = hasher.etags()
    assert etags[0] == hashlib.md5(data).hexdigest()
    parts = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert etags[5 * MiB] == expected
    assert parse_etag(etags[8 * MiB])[1] == 2


def test_auto_part_size_stays_within_ten_thousand_parts_up_to_five_tib():
    assert auto_part_size(1) == 8 * MiB
    assert auto_part_size(80 * 1024 * MiB) == 16 * MiB
    five_tib = 5 * 1024 * 1024 * MiB
    assert -(-five_tib // auto_part_size(five_tib)) <= 10_000
    assert auto_part_size(five_tib) <= 5 * 1024 * MiB


# --- the decisions after the march (plain data in, verdict out) -------------------------------------

def test_verdict_after_hashing_is_unchanged_only_when_a_part_size_explains_the_etag():
    assert verdict_after_hashing({0: "abc"}, '"abc"', [0]) is Action.UNCHANGED
    assert verdict_after_hashing({SERVER_ETAG: "opaque", 0: "abc"}, "opaque", [0]) is Action.UNCHANGED
    assert verdict_after_hashing({0: "abc"}, "def", [0]) is Action.UPLOAD_CHANGED
    assert verdict_after_hashing({8 * MiB: "x-2"}, "y-2", [8 * MiB, 5 * MiB]) is Action.UPLOAD_CHANGED


def _conditions(**changes) -> RecycleConditions:
    base = {"candidates": 3, "files_scanned": 10, "files_failed": 0, "server_clock_known": True, "cap": 5,
            "cap_setting": "50%"}
    return RecycleConditions(**{**base, **changes})


@pytest.mark.parametrize(("changes", "wanted"), [
    ({}, None),
    ({"candidates": 0, "files_scanned": 0}, None),  # nothing due: nothing to refuse
    ({"files_scanned": 0}, "the source is empty"),
    ({"files_failed": 1}, "some files failed"),
    ({"server_clock_known": False}, "no Date header"),
    ({"candidates": 6}, "over the cap of 5 (--max-recycle 50%)"),
    ({"candidates": 5}, None),
])
def test_recycle_refusal(changes, wanted):
    reason = recycle_refusal(_conditions(**changes))
    assert reason is None if wanted is None else wanted in reason


LISTED = RemoteObject("k", 10, "abc", datetime(2026, 11, 26, 12, 0, 7, 250_000, tzinfo=UTC))


@pytest.mark.parametrize(("head", "own_writes_from", "wanted"), [
    (HeadAnswer(200, '"abc"', LISTED.last_modified.replace(microsecond=0)), None, RecycleCheck.DELETE),
    # the very second the run started in: listed before any write of this run, so not one of them
    (HeadAnswer(200, '"abc"', LISTED.last_modified.replace(microsecond=0)), LISTED.last_modified + timedelta(
        seconds=1), RecycleCheck.DELETE),
    # this run wrote during that second: a same-content rewrite of an aliased name cannot be ruled out
    (HeadAnswer(200, '"abc"', LISTED.last_modified), LISTED.last_modified, RecycleCheck.REWRITTEN),
    (HeadAnswer(200, '"abd"', LISTED.last_modified), None, RecycleCheck.REWRITTEN),
    (HeadAnswer(200, '"abc"', LISTED.last_modified + timedelta(seconds=1)), None, RecycleCheck.REWRITTEN),
    (HeadAnswer(404), None, RecycleCheck.GONE),
    (HeadAnswer(403), None, RecycleCheck.UNKNOWN),
    (HeadAnswer(500), None, RecycleCheck.UNKNOWN),
    (HeadAnswer(503), None, RecycleCheck.UNKNOWN),
    (HeadAnswer(0), None, RecycleCheck.UNKNOWN),  # no answer at all
])
def test_check_before_recycle(head, own_writes_from, wanted):
    assert check_before_recycle(LISTED, head, own_writes_from) is wanted


@pytest.mark.parametrize(("headers", "requested", "is_md5"), [
    ({}, None, True),
    ({"x-amz-server-side-encryption": "AES256"}, None, True),
    ({"x-amz-server-side-encryption": "aws:kms"}, None, False),  # the bucket's default, no --sse
    ({"x-amz-server-side-encryption": "aws:kms:dsse"}, None, False),
    ({"x-amz-server-side-encryption-customer-algorithm": "AES256"}, None, False),
    ({}, "aws:kms", False),
    ({"x-amz-server-side-encryption": "AES256"}, "AES256", True),
])
def test_whether_an_answers_etag_is_an_md5(headers, requested, is_md5):
    assert server_etag_is_md5(headers, requested) is is_md5


def test_an_upload_marker_records_the_object_settings():
    f = local("big.img", size=20 * MiB)
    plain = marker_for(f, 8 * MiB, {"Metadata": {}, "ContentType": "x"})
    kms = marker_for(f, 8 * MiB, {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "key-1"})
    other_key = marker_for(f, 8 * MiB, {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "key-2"})
    cold = marker_for(f, 8 * MiB, {"StorageClass": "GLACIER_IR"})
    assert len({str(sorted(m.items())) for m in (plain, kms, other_key, cold)}) == 4
    assert kms["sse"] == "aws:kms" and kms["sse_kms_key_id"] == "key-1" and cold["storage_class"] == "GLACIER_IR"
