"""The quick ListObjectsV2 parser (remote.py): what it takes over, what it leaves to botocore, and its place.

These drive the client's own `before-parse` event with answers S3 can give; no request is sent.
"""

from __future__ import annotations

import botocore.handlers
from s3backup_syncer.remote import RemoteListing, make_s3_client
from s3backup_syncer.shards import Shard

from tests.conftest import BUCKET

LISTING = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>'
    b"<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>"
    b"<NextContinuationToken>next</NextContinuationToken>"
    b'<Contents><Key>p/a&amp;b</Key><LastModified>2026-11-30T08:00:01.000Z</LastModified><ETag>"e1"</ETag>'
    b"<Size>5</Size><StorageClass>STANDARD</StorageClass></Contents>"
    b'<Contents><Key>p/c</Key><LastModified>2026-11-30T08:00:02.000Z</LastModified><ETag>"e2-3"</ETag>'
    b"<Size>70</Size><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"
)
ERROR_IN_200 = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>x</Message></Error>'


def client():
    return make_s3_client(endpoint_url="http://127.0.0.1:9", region="us-east-1", access_key="k", secret_key="s")


def before_parse(s3, body: bytes, operation: str = "ListObjectsV2", status: int = 200) -> tuple[dict, dict]:
    response = {"status_code": status, "headers": {}, "body": body}
    customized: dict = {}
    s3.meta.events.emit(f"before-parse.s3.{operation}", operation_model=s3.meta.service_model.operation_model(
        operation), response_dict=response, customized_response_dict=customized)
    return response, customized


def test_a_listing_page_is_parsed_by_us_and_botocore_gets_an_empty_stand_in():
    response, customized = before_parse(client(), LISTING)
    assert response["status_code"] == 200
    assert b"<Contents>" not in response["body"]
    assert customized["IsTruncated"] is True and customized["NextContinuationToken"] == "next"
    assert [(item["Key"], item["Size"], item["ETag"]) for item in customized["Contents"]] == [
        ("p/a&b", 5, '"e1"'), ("p/c", 70, '"e2-3"')]
    assert customized["Contents"][1]["LastModified"].isoformat() == "2026-11-30T08:00:02+00:00"


def test_an_error_in_a_200_answer_still_becomes_a_500_and_is_retried():
    for body in (ERROR_IN_200, LISTING[: len(LISTING) // 2]):  # an error document; a page cut short
        response, customized = before_parse(client(), body)
        assert response["status_code"] == 500 and response["body"] == body and not customized


def test_other_operations_are_left_to_botocore():
    response, customized = before_parse(client(), LISTING, operation="ListObjects")
    assert response["body"] == LISTING and not customized


def test_the_quick_parser_runs_before_botocores_200_error_check_so_a_page_is_parsed_once():
    """White-box (the emitter's handler order): the check parses the whole body it sees."""
    s3 = client()
    handlers = list(s3.meta.events._emitter._handlers.prefix_search("before-parse.s3.ListObjectsV2"))
    names = [getattr(handler, "__name__", "") for handler in handlers]
    assert names.index("_parse_listing_quickly") < names.index("_handle_200_error")
    assert handlers[names.index("_handle_200_error")] is botocore.handlers._handle_200_error


def test_a_shards_listing_keeps_only_its_own_keys_in_key_order(s3, s3_client, prefix, tmp_path):
    """Against SeaweedFS, over more than one page and folders listed in parallel: every own key once, no other."""
    keys = [f"d{folder}/f{index:04d}" for folder in range(3) for index in range(400)] + ["top-a", "top-b"]
    for key in keys:
        s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=key.encode())
    shard = Shard(1, 3)
    listing = RemoteListing(s3_client, BUCKET, f"{prefix}/", parallel=4, owns=shard.owns)
    listed = list(listing.in_key_order(listing.first_page(), tmp_path / "index.sqlite"))
    own = sorted(key for key in keys if shard.owns(key))
    assert [item.key for item in listed] == own and 0 < len(own) < len(keys)
    assert (listing.count, listing.bytes) == (len(own), sum(len(key) for key in own))
    assert listing.any_listed
