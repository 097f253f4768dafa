"""The recorded-attributes table on its own (the bucket side is in tests/reliability/test_metadata.py)."""

from __future__ import annotations

from s3backup_syncer.attributes_state import AttributeState


def test_a_row_applies_only_to_the_etag_it_was_recorded_for(tmp_path):
    state = AttributeState(tmp_path / "a.sqlite")
    state.record("dir/f.txt", '"abc"', 1_700_000_000_000_000_000, 0o640)
    assert state.lookup("dir/f.txt", "abc") == (1_700_000_000_000_000_000, 0o640)
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
