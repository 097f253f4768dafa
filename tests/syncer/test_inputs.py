"""Parsing user input (pure): sizes, durations, URLs, caps (filters: test_filters.py)."""

import pytest
from s3backup_syncer.config import MiB, parse_duration, parse_recycle_cap, parse_s3_url, parse_size
from s3backup_syncer.errors import ConfigError


@pytest.mark.parametrize(("text", "expected"), [
    ("5MiB", 5 * MiB), ("5M", 5 * MiB), ("5m", 5 * MiB), ("1GiB", 1024 * MiB), ("1G", 1024 * MiB),
    ("512k", 512 * 1024), ("100", 100), ("1.5MiB", int(1.5 * MiB)),
])
def test_sizes_are_binary(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("0s", 0), ("36h", 36 * 3600), ("30d", 30 * 86400), ("1w", 7 * 86400), ("90m", 5400), ("1d12h", 129600),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "30", "30x", "-1d", "d", "1d 2h", "ten days"])
def test_bad_durations_name_the_problem(bad):
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", ["", "5XB", "-5M", "lots"])
def test_bad_sizes_name_the_problem(bad):
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size(bad)


def test_s3_urls():
    assert parse_s3_url("s3://my-bucket") == ("my-bucket", "")
    assert parse_s3_url("s3://my-bucket/") == ("my-bucket", "")
    assert parse_s3_url("s3://my-bucket/a/b/") == ("my-bucket", "a/b/")
    for bad in ("my-bucket/x", "http://b/x", "s3://", "s3://UPPER", "s3://ab", "s3://b_ad", "s3://bkt/a//b"):
        with pytest.raises(ConfigError):
            parse_s3_url(bad)


def test_recycle_caps():
    assert parse_recycle_cap("10").limit(1000) == 10
    assert parse_recycle_cap("10%").limit(1000) == 100
    assert parse_recycle_cap("0%").limit(1000) == 0
    for bad in ("ten", "101%", "1.5", "-1"):
        with pytest.raises(ConfigError):
            parse_recycle_cap(bad)


