"""The recorded-attributes table on its own (the bucket side is in tests/reliability/test_metadata.py)."""

from __future__ import annotations

import sqlite3

from s3backup_syncer.attributes_state import AttributeReader, AttributeState, _Table
from s3backup_syncer.state_layout import _with_donor_columns


def _older_state(path) -> sqlite3.Connection:
    """A state as an s3backup before the content_etag column wrote it, with one row (f, abc, 5, 0o644)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE attributes (key TEXT PRIMARY KEY, etag TEXT NOT NULL, mtime_ns INT NOT NULL, mode INT)")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    db.execute("INSERT INTO attributes VALUES ('f', 'abc', 5, 420)")
    return db

def test_a_row_applies_only_to_the_etag_it_was_recorded_for(tmp_path):
    state = AttributeState(tmp_path / "a.sqlite")
    state.record("dir/f.txt", '"abc"', 1_700_000_000_000_000_000, 0o640)
    assert state.lookup("dir/f.txt", "abc") == (1_700_000_000_000_000_000, 0o640, None)
    assert state.lookup("dir/f.txt", '"abc"').mode == 0o640
    assert state.lookup("dir/f.txt", "other") is None  # the object was replaced: the row says nothing of it
    assert state.lookup("dir/g.txt", "abc") is None
    state.forget("dir/f.txt")  # uploaded again: its metadata is right
    assert state.lookup("dir/f.txt", "abc") is None
    assert state.finish() is True


def test_recording_what_is_already_there_changes_nothing(tmp_path):
    first = AttributeState(tmp_path / "a.sqlite")
    first.record("f", "abc", 5, 0o644)
    assert first.finish() is True
    again = AttributeState(tmp_path / "a.sqlite")
    again.record("f", "abc", 5, 0o644)
    again.forget("never-recorded")
    assert again.finish() is False  # nothing to upload after such a run
    later = AttributeState(tmp_path / "a.sqlite")
    later.record("f", "abc", 6, 0o644)
    assert later.finish() is True


def test_a_content_etag_is_kept_with_the_row_and_a_change_of_it_is_a_change(tmp_path):
    first = AttributeState(tmp_path / "a.sqlite")
    first.record("dump.sql", "opaque-2", 5, 0o600, "0123456789abcdef0123456789abcdef-2")
    first.record("note.txt", "opaque", 5, 0o644)
    assert first.lookup("dump.sql", "opaque-2").content_etag == "0123456789abcdef0123456789abcdef-2"
    assert first.lookup("note.txt", "opaque").content_etag is None
    assert first.finish() is True
    again = AttributeState(tmp_path / "a.sqlite")
    again.record("dump.sql", "opaque-2", 5, 0o600)  # the same attributes, but no content ETag: a change
    assert again.finish() is True
    assert AttributeState(tmp_path / "a.sqlite").lookup("dump.sql", "opaque-2") == (5, 0o600, None)


def test_a_state_written_before_the_content_etag_column_is_read_and_taken_up(tmp_path):
    """An older s3backup's state has no content_etag column: readers find none, writers add the column."""
    path = tmp_path / "old.sqlite"
    _older_state(path).close()
    reader = AttributeReader([_Table(path, read_only=True)])
    assert reader.lookup("f", "abc") == (5, 0o644, None)
    writer = AttributeState(path)
    writer.record("g", "opaque-2", 6, None, "0123456789abcdef0123456789abcdef-2")
    assert writer.lookup("f", "abc") == (5, 0o644, None)
    assert writer.lookup("g", "opaque-2").content_etag == "0123456789abcdef0123456789abcdef-2"
    writer.finish()


def test_a_new_shard_layout_is_seeded_from_states_with_and_without_the_column(tmp_path):
    """state_layout merges the rows of several states into one: an older s3backup's state (no content_etag)
    first, then a newer one's, whose content ETags must survive the merge."""
    older = tmp_path / "older.sqlite"
    db = _older_state(older)
    newer = AttributeState(tmp_path / "newer.sqlite")
    newer.record("g", "opaque-2", 6, None, "0123456789abcdef0123456789abcdef-2")
    newer.finish()
    db.execute("ATTACH DATABASE ? AS donor", (str(tmp_path / "newer.sqlite"),))
    columns = _with_donor_columns(db, "attributes")
    db.execute(f"INSERT OR IGNORE INTO main.attributes ({columns}) SELECT {columns} FROM donor.attributes")
    db.close()
    merged = AttributeReader([_Table(older, read_only=True)])
    assert merged.lookup("f", "abc") == (5, 0o644, None)
    assert merged.lookup("g", "opaque-2") == (6, None, "0123456789abcdef0123456789abcdef-2")
