"""`--include` / `--exclude` globs (pure), against a reference where one exists: `fnmatch.fnmatchcase`.

Within one path segment our globs mean what `fnmatch` means (`*`, `?`, `[seq]`, `[!seq]`), so a pattern
without `/` must agree with `fnmatchcase` on a key's last segment, at any depth, and a pattern with `/`
(and no `**`) segment by segment. Backslashes (an escape for us, a plain character for fnmatch) and `^`
(a negation at the start of a class for us, as in bash) are left out of the comparison and tested apart.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from s3backup_syncer.errors import ConfigError
from s3backup_syncer.filters import Filters

PATTERN_CHARS = "ab.!-[]*?"
NAME_CHARS = "ab.!-[]*?^ "

segment_patterns = st.text(PATTERN_CHARS, min_size=1, max_size=8).filter(lambda p: p.strip("/"))
names = st.text(NAME_CHARS, min_size=1, max_size=8).filter(lambda n: n not in (".", ".."))
parents = st.lists(names, max_size=3)


def matches(pattern: str, key: str) -> bool:
    return not Filters(excludes=(pattern,)).wants_file(key)


@given(segment_patterns, parents, names)
@example("[a!].txt", [], "!.txt")
@example("[!a]", ["d"], "b")
@example("[]a]", [], "]")
@example("[z-a]", [], "z")
@example("*", [".git"], ".hidden")
def test_a_pattern_without_slash_is_fnmatch_on_the_last_segment_at_any_depth(pattern, parent, name):
    key = "/".join([*parent, name])
    assert matches(pattern, key) == fnmatchcase(name, pattern)


@given(st.lists(segment_patterns, min_size=2, max_size=3), st.lists(names, min_size=1, max_size=4))
def test_a_pattern_with_slashes_is_fnmatch_segment_by_segment_from_the_root(pattern_parts, key_parts):
    assume(not any("**" in part for part in pattern_parts))
    pattern, key = "/".join(pattern_parts), "/".join(key_parts)
    expected = len(pattern_parts) == len(key_parts) and all(map(fnmatchcase, key_parts, pattern_parts))
    assert matches(pattern, key) == expected


@given(parents, names, parents)
def test_double_star_as_a_segment_crosses_any_number_of_segments(before, middle, after):
    key = "/".join(["top", *before, "cache", *after, middle])
    assert matches("top/**/cache/**", key)
    assert matches("**/cache/*", key) == (not after)
    assert not matches("other/**", key)


def test_a_bang_inside_a_class_is_a_literal_character():
    """`[a!]` is `a` or `!`; the old translation made it `[a^]`."""
    only = Filters(includes=("[a!].txt",))
    assert only.wants_file("!.txt") and only.wants_file("a.txt") and only.wants_file("d/!.txt")
    assert not only.wants_file("^.txt") and not only.wants_file("b.txt")


@pytest.mark.parametrize("negation", ["[!a]", "[^a]"])
def test_a_class_negated_by_bang_or_caret(negation):
    assert matches(negation + ".log", "b.log") and not matches(negation + ".log", "a.log")


def test_no_wildcard_or_class_crosses_a_slash():
    for pattern in ("a?b", "a*b", "a[!x]b", "a[/]b", "a[^x]b"):
        assert not matches(pattern, "a/b"), pattern


def test_a_backslash_escapes_the_next_character():
    assert matches(r"a\*b", "a*b") and not matches(r"a\*b", "axb")


@pytest.mark.parametrize("pattern", ["", "/", "//"])
def test_an_empty_pattern_is_refused(pattern):
    with pytest.raises(ConfigError):
        Filters(includes=(pattern,))


def test_filters_documented_cases():
    f = Filters(includes=("*.sql", "vm/**"), excludes=("tmp", "*.partial.sql"))
    assert f.wants_file("db/a.sql")
    assert f.wants_file("vm/x/disk.img")
    assert not f.wants_file("db/a.partial.sql")
    assert not f.wants_file("notes.txt")
    assert not f.wants_directory("x/tmp")
    assert not f.in_scope("tmp/a.sql")
    assert f.in_scope("db/a.sql")
    anchored = Filters(excludes=("db/*.gz", "/logs/"))
    assert not anchored.wants_file("db/x.gz")
    assert anchored.wants_file("other/db/x.gz")
    assert anchored.wants_file("db/sub/x.gz")
    assert not anchored.wants_directory("logs") and not anchored.wants_directory("a/logs")  # ends stripped


def test_lost_found_at_the_root_is_out_unless_asked_for_and_data_deeper_down():
    default, included = Filters(), Filters(include_lost_found=True)
    assert not default.wants_directory("lost+found")
    assert not default.in_scope("lost+found/#1234"), "what an earlier run with the flag stored is never recycled"
    assert default.wants_directory("data/lost+found") and default.in_scope("data/lost+found/x")
    assert default.wants_file("lost+found"), "only the directory is fsck's; a file of that name is data"
    assert included.wants_directory("lost+found") and included.in_scope("lost+found/#1234")
