"""File names: any bytes a Linux filesystem allows (everything but `/` and NUL), invalid UTF-8 included.

How names map to keys (decided in scan.py, checked here):
- a name that is valid UTF-8 becomes the key as is: no normalisation (NFC and NFD stay two keys),
  no escaping, whatever the characters (spaces, `\\`, `%`, `+`, `?`, `#`, control characters, emoji);
- a name that is not valid UTF-8 cannot be an S3 key: the file (or the whole directory) is reported as
  failed, with a message that says so and shows the name with `\\xNN` escapes; it is never renamed,
  never uploaded under another key, and the run's exit code is 1 (and nothing is recycled that run).

Server quirk: SeaweedFS stores `\\` in a key as `/` (`a\\b` becomes `a/b`), so names with a backslash
are left out of the fuzzing and get their own test: whatever a server does with a key, a file reported
as uploaded must have a copy after the run (the syncer never recycles an object written during the run).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from s3backup_syncer.config import SyncOptions
from s3backup_syncer.engine import run_sync

from tests.conftest import BUCKET
from tests.reliability.helpers import FIGURES, assert_bucket_matches, remote_objects, run_syncer, write_tree

TRICKY = [b"a", b"b", b"-", b".", b" ", b"\t", b"\n", b"\r", b"%", b"%41", b"+", b"?", b"#", b"&", b"=", b"~",
          b"*", b"[", b"]", b"'", b'"', b"<", b">", b"\x01", b"\x7f", b"\xc3\xa9", b"e\xcc\x81", b"\xf0\x9f\x92\xbe",
          b"\xe2\x80\xae", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80"]

name_bytes = st.one_of(
    st.lists(st.sampled_from(TRICKY), min_size=1, max_size=6).map(b"".join),
    st.binary(min_size=1, max_size=12),
).map(lambda raw: raw.replace(b"/", b"_").replace(b"\0", b"_").replace(b"\\", b"_")[:255]).filter(
    lambda raw: raw not in (b".", b".."))
INVALID_NAME = "name is not valid UTF-8, so it cannot be an S3 key; rename it"
paths = st.lists(st.lists(name_bytes, min_size=1, max_size=3), min_size=1, max_size=8)


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def make_files(root: Path, path_list: list[list[bytes]]) -> dict[bytes, bytes]:
    """Create the files (skipping ones that clash with a directory); returns relative path -> content."""
    made: dict[bytes, bytes] = {}
    base = os.fsencode(root)
    for index, parts in enumerate(path_list):
        relative = b"/".join(parts)
        try:
            if len(parts) > 1:
                os.makedirs(os.path.join(base, *parts[:-1]), exist_ok=True)
            content = b"file %d: " % index + relative
            with open(os.path.join(base, relative), "xb") as handle:
                handle.write(content)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue
        made[relative] = content
    return made


def expected_keys(made: dict[bytes, bytes]) -> dict[str, bytes]:
    """Files whose whole path is valid UTF-8: those, and only those, become objects."""
    return {relative.decode(): content for relative, content in made.items() if is_utf8(relative)}


def expected_failures(made: dict[bytes, bytes]) -> set[str]:
    """The summary's error lines: one per file with an invalid name and one per directory with an invalid
    name (whose whole subtree it stands for), named with `\\xNN` escapes up to that first invalid part."""
    failures = set()
    for relative in made:
        parts = relative.split(b"/")
        for depth in range(len(parts)):
            if not is_utf8(parts[depth]):
                shown = b"/".join(parts[: depth + 1]).decode("utf-8", "backslashreplace")
                failures.add(f"{shown}: {INVALID_NAME}"[:300])
                break
    return failures


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(path_list=paths)
def test_any_file_name(s3, direct, path_list):
    """Two runs over arbitrary names: valid UTF-8 names are objects with the same bytes under the exact
    key, invalid ones are failed with a clear message and uploaded under no other key; the second run
    changes nothing."""
    prefix = "fuzz-names-" + secrets.token_hex(4)
    client = _client(s3)
    with tempfile.TemporaryDirectory() as tmp:
        made = make_files(Path(tmp), path_list)
        wanted = expected_keys(made)
        failures = expected_failures(made)
        options = SyncOptions(source=Path(tmp), bucket=BUCKET, prefix=prefix + "/")
        first = run_sync(options, client=client)
        FIGURES["syncer runs"] += 1
        first.to_json()  # the summary stays writable, whatever the names
        remote = remote_objects(direct, prefix)
        assert sorted(remote) == sorted(wanted), (first.errors, sorted(remote))
        for key, content in wanted.items():
            assert direct.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read() == content
            FIGURES["objects verified"] += 1
        assert first.files_uploaded == len(wanted)
        # Exactly the invalid names failed, each for that reason (the summary keeps the first 5 lines).
        assert first.files_failed == len(failures), (first.errors, sorted(failures))
        assert set(first.errors) <= failures and len(first.errors) == min(len(failures), 5), first.errors
        assert first.exit_code == (1 if failures else 0), first.errors
        second = run_sync(options, client=client)
        FIGURES["syncer runs"] += 1
        assert second.files_uploaded == 0 and second.files_unchanged == len(wanted), second.errors


def test_invalid_utf8_name_on_the_command_line(s3, src, s3_url, prefix, direct):
    """Through a real process: exit 1, one clear message naming the file with escapes, the rest synced."""
    write_tree(src, {"fine.txt": 10, "sub/ok.txt": 3}, seed=1)
    (src / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name")
    run = run_syncer(src, s3_url, s3.endpoint_url, process=True)
    assert run.returncode == 1 and run.summary["files_failed"] == 1
    assert run.summary["errors"] == ["caf\\xe9.txt: name is not valid UTF-8, so it cannot be an S3 key; rename it"]
    assert "caf\\xe9.txt" in run.stderr
    assert sorted(remote_objects(direct, prefix)) == ["fine.txt", "sub/ok.txt"]


def test_backslash_names_are_not_lost(s3, src, s3_url, prefix, direct):
    """SeaweedFS turns `\\` in keys into `/` (`a\\b` is stored as `a/b`; `e\\` becomes an empty
    "directory"). Whatever a server does with a key, a file the syncer reports as uploaded must still
    have a backup after the run, also with recycling on: never upload, then recycle the same object."""
    contents = write_tree(src, {"a\\b.txt": 10, "keep.txt": 5}, seed=3)
    for uploads in (2, 1):
        run = run_syncer(src, s3_url, s3.endpoint_url, "--recycle-after", "0s", "--max-recycle", "100%")
        # Nothing fails: the file is sent (again each run, its key never shows in the listing), and the
        # object the server made of it is written by this run, so it is never recycled.
        assert run.returncode == 0 and run.summary["files_failed"] == 0 and run.summary["errors"] == [], run.stderr
        assert run.summary["files_recycled"] == 0 and run.summary["files_uploaded"] == uploads, run.summary
        stored = {key: direct.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read()
                  for key in remote_objects(direct, prefix)}
        assert stored == {"a/b.txt": contents["a\\b.txt"], "keep.txt": contents["keep.txt"]}, stored


def test_sibling_dir_and_dash_names_sync_twice(s3, src, s3_url, prefix, direct):
    """`a/b` next to `a-b`, `a.b`, `a0`: S3 lists `a-b, a.b, a/b, a0`. The second run must work too."""
    write_tree(src, {"a/b": 1, "a-b": 2, "a.b": 3, "a0": 4, "2024/01.tar": 5, "2024-01.tar": 6}, seed=2)
    for _ in range(2):
        run = run_syncer(src, s3_url, s3.endpoint_url)
        assert run.returncode == 0, run.stderr
    assert run.summary["files_unchanged"] == 6
    assert_bucket_matches(direct, prefix, src)


_CLIENTS: dict = {}


def _client(s3):
    from tests.reliability.helpers import client_for

    return _CLIENTS.setdefault(s3.endpoint_url, client_for(s3))
