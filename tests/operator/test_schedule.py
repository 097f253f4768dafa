"""Schedules: macros, cron, the hashed form and the derived expected interval."""

from __future__ import annotations

import pytest
from s3backup_operator.schedule import (
    ScheduleError,
    expected_interval_seconds,
    format_duration,
    parse,
    resolve,
    validate_time_zone,
)

DAY = 86400


@pytest.mark.parametrize("macro", ["@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"])
def test_macros_are_kept(macro):
    assert resolve(macro, "ns/a") == macro
    assert resolve(macro.upper(), "ns/a") == macro


@pytest.mark.parametrize("cron", ["0 2 * * *", "*/5 * * * *", "0 9 * * 1-5", "30 1 1,15 * *", "0 0 * * sun",
                                  "0 0 1 jan *", "0 12 ? * mon-fri", "5-55/10 * * * *"])
def test_plain_cron_is_kept(cron):
    assert resolve(cron, "ns/a") == cron


def test_whitespace_is_normalised():
    assert resolve("  0  2 * *   * ", "ns/a") == "0 2 * * *"


@pytest.mark.parametrize(("hashed", "check"), [
    ("H 2 * * *", lambda f: 0 <= int(f[0]) <= 59 and f[1:] == ["2", "*", "*", "*"]),
    ("H H(1-5) * * *", lambda f: 1 <= int(f[1]) <= 5),
    ("H H H * *", lambda f: 1 <= int(f[2]) <= 28),  # every month has the day
    ("H H * * H", lambda f: 0 <= int(f[4]) <= 6),
    ("H/15 * * * *", lambda f: f[0].endswith("-59/15") and 0 <= int(f[0].split("-")[0]) < 15),
    ("H(10-40)/10 * * * *", lambda f: f[0].endswith("-40/10") and 10 <= int(f[0].split("-")[0]) < 20),
])
def test_hashed_fields_resolve_within_their_range(hashed, check):
    for name in ("a", "b", "c", "dumps", "media"):
        resolved = resolve(hashed, f"backups/{name}")
        assert "H" not in resolved
        assert check(resolved.split()), resolved
        parse(resolved)  # a valid plain cron


@pytest.mark.parametrize(("macro", "equivalent"), [
    ("@hourly-random", "H * * * *"), ("@daily-random", "H H * * *"), ("@weekly-random", "H H * * H"),
    ("@monthly-random", "H H H * *"), ("@yearly-random", "H H H H *"),
])
def test_random_macros(macro, equivalent):
    assert resolve(macro, "ns/x") == resolve(equivalent, "ns/x")


def test_hashing_is_deterministic_and_depends_on_identity():
    assert resolve("H H * * *", "ns/a") == resolve("H H * * *", "ns/a")
    resolved = {resolve("H H * * *", f"ns/backup-{i}") for i in range(200)}
    assert len(resolved) > 170
    minutes = {int(r.split()[0]) for r in resolved}
    hours = {int(r.split()[1]) for r in resolved}
    assert len(minutes) > 50 and len(hours) == 24


@pytest.mark.parametrize(("bad", "message"), [
    ("", "empty"),
    ("* * *", "5 fields"),
    ("* * * * * *", "5 fields"),
    ("61 * * * *", "out of range"),
    ("* 24 * * *", "out of range"),
    ("* * 0 * *", "out of range"),
    ("* * * 13 *", "out of range"),
    ("* * * * 8", "out of range"),
    ("x * * * *", "invalid minute"),
    ("5-1 * * * *", "invalid minute range"),
    ("*/0 * * * *", "invalid step"),
    ("? * * * *", "only allowed"),
    ("@sometimes", "unknown schedule macro"),
    ("TZ=Europe/Berlin 0 2 * * *", "spec.timeZone"),
    ("CRON_TZ=UTC 0 2 * * *", "spec.timeZone"),
    ("H(1-99) * * * *", "range"),
    ("Hx * * * *", "use H"),
])
def test_invalid_schedules_have_one_line_reasons(bad, message):
    with pytest.raises(ScheduleError) as caught:
        resolve(bad, "ns/a")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("cron", "seconds"), [
    ("* * * * *", 60),
    ("*/5 * * * *", 300),
    ("0 * * * *", 3600),
    ("0 2 * * *", DAY),
    ("0 2,14 * * *", 12 * 3600),
    ("0 1,2 * * *", 23 * 3600),  # the longest gap counts
    ("0 9 * * 1-5", 3 * DAY),  # Friday -> Monday
    ("0 0 * * 0", 7 * DAY),
    ("@monthly", 31 * DAY),
    ("@yearly", 366 * DAY),
    ("0 0 1,15 * 1", 7 * DAY),  # day-of-month OR day-of-week, as cron does
])
def test_expected_interval_is_the_longest_gap(cron, seconds):
    assert expected_interval_seconds(cron) == seconds


def test_a_schedule_that_never_runs_is_an_error():
    with pytest.raises(ScheduleError, match="never runs"):
        expected_interval_seconds("0 0 30 2 *")


@pytest.mark.parametrize(("seconds", "text"), [(86400, "1d"), (604800, "1w"), (5400, "90m"), (3600, "1h"),
                                               (259200, "3d"), (45, "45s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_time_zones():
    validate_time_zone("Europe/Berlin")
    validate_time_zone("Etc/UTC")
    validate_time_zone("")
    with pytest.raises(ScheduleError, match="unknown time zone"):
        validate_time_zone("Europe/Atlantis")
