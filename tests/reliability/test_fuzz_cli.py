"""Bad input on the command line: any text for any option gives either a run, or one clear line and
exit 2; never a traceback, never an "internal error"."""

from __future__ import annotations

import math
import os
import secrets
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from s3backup_syncer.config import parse_duration, parse_recycle_cap, parse_s3_url, parse_size
from s3backup_syncer.errors import ConfigError

from tests.conftest import BUCKET
from tests.reliability.helpers import FIGURES, SYNCER, run_syncer

# Text as argv delivers it: anything but NUL, undecodable bytes as surrogates.
argv_text = st.one_of(
    st.text(st.characters(exclude_characters="\0"), max_size=30),
    st.binary(max_size=20).map(lambda raw: os.fsdecode(raw.replace(b"\0", b""))),
    st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{0,5})?[a-zA-Z%]{0,4}\Z"),
    st.sampled_from(["0", "-1", "1e9", "inf", "nan", "5MiB", "5GiB", "5.5G", "0s", "1d12h", "30d", "1w", "100%",
                     "101%", "0.5%", "", " ", "--", "-h", "[", "a[]b", "[z-a]", "**", "/", "s3://", "s3://a/b//c",
                     "a\nb", "x\r\ny"]),
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(text=argv_text)
def test_parsers_raise_config_error_or_return_sane_values(text):
    for parse in (parse_size, parse_duration):
        try:
            value = parse(text)
        except ConfigError as exc:
            assert "\n" not in str(exc)
        else:
            assert value >= 0 and math.isfinite(value)
    try:
        cap = parse_recycle_cap(text)
    except ConfigError:
        pass
    else:
        assert cap.limit(1000) >= 0
    try:
        bucket, prefix = parse_s3_url(text)
    except ConfigError:
        pass
    else:
        assert 3 <= len(bucket) <= 63 and (prefix == "" or prefix.endswith("/"))
        prefix.encode("utf-8")


OPTIONS = ["--part-size", "--bwlimit", "--recycle-after", "--expected-interval", "--max-recycle", "--concurrency",
           "--compare", "--sse", "--include", "--exclude", "--storage-class", "--backup-name"]


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    (path / "a.txt").write_text("a")
    return path


@SETTINGS
@given(option=st.sampled_from(OPTIONS), value=argv_text, destination=st.one_of(st.none(), argv_text))
def test_any_option_value(option, value, destination, tiny_source, s3_env):
    """`s3backup sync` (in-process) against the real server: a run (exit 0/1), or exit 2 with one line.
    (A real process's stderr escapes undecodable bytes; `run_syncer` captures into a str the same way.)"""
    url = f"s3://{BUCKET}/fuzz-cli-{secrets.token_hex(3)}" if destination is None else destination
    run = run_syncer(tiny_source, url, os.environ["AWS_ENDPOINT_URL"], option, value)
    FIGURES["cli invocations fuzzed"] += 1
    assert run.returncode in (0, 1, 2), run
    if run.returncode == 2:
        assert run.stderr.count("\n") == 1 and run.stderr.endswith("\n") and "error" in run.stderr, run.stderr


@settings(SETTINGS, max_examples=30)
@given(value=argv_text)
def test_timeouts_from_the_environment(value, tiny_source, s3_env):
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        assume(False)  # not a value an environment can hold
    run = run_syncer(tiny_source, f"s3://{BUCKET}/fuzz-env-{secrets.token_hex(3)}", os.environ["AWS_ENDPOINT_URL"],
                     env={"S3BACKUP_READ_TIMEOUT": value})
    assert run.returncode in (0, 2), run.stderr
    if run.returncode == 2:
        assert "S3BACKUP_READ_TIMEOUT" in run.stderr and run.stderr.count("\n") == 1, run.stderr


@pytest.mark.parametrize("args", [
    ["--part-size", "9" * 400],
    ["--bwlimit", "9" * 400],
    ["--recycle-after", "9" * 400 + "d"],
    ["--include", "/"],
    ["--exclude", ""],
    ["--concurrency", "0"],
    ["--concurrency", "x"],
    ["--max-recycle", "101%"],
    ["--sse-kms-key-id", "k"],
    ["--no-such-option"],
])
def test_known_bad_arguments(args, tiny_source, s3_env):
    """Values that once gave a traceback or a wrong exit code: one line, exit 2."""
    run = run_syncer(tiny_source, f"s3://{BUCKET}/fuzz-known", os.environ["AWS_ENDPOINT_URL"], *args)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr


@pytest.mark.parametrize("args", [["unexpected\nsecond line"], ["--part-size", "9" * 400]])
def test_bad_arguments_through_a_real_process(args, tiny_source, s3_env):
    """The same through a real process: stderr is one line, exit 2, no traceback."""
    result = subprocess.run([*SYNCER, "sync", str(tiny_source), f"s3://{BUCKET}/fuzz-proc", "--path-style", *args],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    FIGURES["syncer runs"] += 1
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


def test_non_utf8_destination_through_a_real_process(tiny_source, s3_env):
    result = subprocess.run([os.fsencode(SYNCER[0]), b"sync", os.fsencode(tiny_source), b"s3://" + BUCKET.encode()
                             + b"/\xff", b"--path-style"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and result.stderr.count(b"\n") == 1 and b"UTF-8" in result.stderr, result.stderr
