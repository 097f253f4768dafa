"""Schedules: cron, macros and the hashed form, resolved to a plain Kubernetes cron (pure functions).

The hashed form spreads many backups deterministically, like Jenkins' `H` or k8up's `@daily-random`:
`H` in a field becomes a value derived from the resource's identity (namespace/name), so re-rendering
never moves a run, and two backups usually land on different minutes.

    H 2 * * *        minute hashed, at 02:xx every day
    H H(1-5) * * *   minute hashed, hour hashed between 01 and 05
    H/15 * * * *     every 15 minutes, offset hashed
    @daily-random    = H H * * *   (also @hourly-random, @weekly-random, @monthly-random, @yearly-random)
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import re
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache


class ScheduleError(ValueError):
    """The schedule cannot be understood; the message is one line, meant for the user."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    hash_high: int  # `H` in day-of-month stays within 1-28 so that every month has the day (as Jenkins does)
    names: tuple[str, ...] = ()  # accepted names, index + low = value


_FIELDS = (
    _Field("minute", 0, 59, 59),
    _Field("hour", 0, 23, 23),
    _Field("day-of-month", 1, 31, 28),
    _Field("month", 1, 12, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    _Field("day-of-week", 0, 7, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

RANDOM_MACROS = {
    "@hourly-random": "H * * * *",
    "@daily-random": "H H * * *",
    "@weekly-random": "H H * * H",
    "@monthly-random": "H H H * *",
    "@yearly-random": "H H H H *",
    "@annually-random": "H H H H *",
}

_HASH = re.compile(r"^H(?:\((\d+)-(\d+)\))?(?:/(\d+))?$")


def _hash(identity: str, field_index: int, span: int) -> int:
    digest = hashlib.sha256(f"{identity}#{field_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % span


def _resolve_hash(token: str, field: _Field, index: int, identity: str) -> str:
    match = _HASH.match(token)
    if not match:
        raise ScheduleError(f"invalid {field.name} {token!r}: use H, H(a-b), H/n or H(a-b)/n")
    low, high = field.low, field.hash_high
    if match.group(1) is not None:
        low, high = int(match.group(1)), int(match.group(2))
        if not field.low <= low <= high <= field.high:
            raise ScheduleError(f"invalid {field.name} range in {token!r}: must be within {field.low}-{field.high}")
    if match.group(3) is None:
        return str(low + _hash(identity, index, high - low + 1))
    step = int(match.group(3))
    if step < 1:
        raise ScheduleError(f"invalid step in {field.name} {token!r}")
    start = low + _hash(identity, index, min(step, high - low + 1))
    return f"{start}-{high}/{step}"


def resolve(schedule: str, identity: str) -> str:
    """The schedule as a plain 5-field cron or standard macro that a CronJob accepts.

    `identity` (e.g. "namespace/name") seeds the hashed fields. Raises ScheduleError on invalid input.
    """
    text = " ".join(schedule.split())
    if not text:
        raise ScheduleError("the schedule is empty")
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise ScheduleError("set the time zone in spec.timeZone, not in the schedule")
    lowered = text.lower()
    if lowered in MACROS:
        parse(MACROS[lowered])
        return lowered
    if lowered in RANDOM_MACROS:
        text = RANDOM_MACROS[lowered]
    elif text.startswith("@"):
        known = ", ".join([*MACROS, *RANDOM_MACROS])
        raise ScheduleError(f"unknown schedule macro {text!r} (known: {known})")
    tokens = text.split(" ")
    if len(tokens) != 5:
        raise ScheduleError(
            f"a cron schedule has 5 fields (minute hour day-of-month month day-of-week), got {len(tokens)}")
    resolved = [
        _resolve_hash(token, field, index, identity) if token.startswith("H") else token
        for index, (token, field) in enumerate(zip(tokens, _FIELDS, strict=True))
    ]
    result = " ".join(resolved)
    parse(result)
    return result


def _value(text: str, field: _Field) -> int:
    if text.isdigit():
        value = int(text)
    elif text.lower() in field.names:
        value = field.names.index(text.lower()) + field.low
    else:
        raise ScheduleError(f"invalid {field.name} value {text!r}")
    if not field.low <= value <= field.high:
        raise ScheduleError(f"{field.name} {value} is out of range {field.low}-{field.high}")
    return value


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ScheduleError(f"invalid step in {field.name} {item!r}")
            step = int(step_text)
        if body in ("*", "?"):
            if body == "?" and field.name not in ("day-of-month", "day-of-week"):
                raise ScheduleError(f"'?' is only allowed in day-of-month and day-of-week, not in {field.name}")
            low, high = field.low, field.high
        elif "-" in body:
            first, _, last = body.partition("-")
            low, high = _value(first, field), _value(last, field)
            if low > high:
                raise ScheduleError(f"invalid {field.name} range {body!r}")
        else:
            low = _value(body, field)
            high = field.high if step_text else low
        values.update(range(low, high + 1, step))
    if field.name == "day-of-week" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def matches_day(self, day: datetime.date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week  # classic cron: either matches
        return in_month and in_week


def parse(expression: str) -> Cron:
    """Parse a resolved 5-field cron (or a standard macro). Raises ScheduleError."""
    text = MACROS.get(expression.strip().lower(), expression.strip())
    tokens = text.split()
    if len(tokens) != 5:
        raise ScheduleError(f"a cron schedule has 5 fields, got {len(tokens)}")
    sets = [_parse_field(token, field) for token, field in zip(tokens, _FIELDS, strict=True)]
    return Cron(*sets, days_restricted=tokens[2] not in ("*", "?"), weekdays_restricted=tokens[4] not in ("*", "?"))


# A fixed window of 5 years (a leap cycle plus one) starting on a Monday: every allowed day pattern shows up.
_WINDOW_START = datetime.date(2024, 1, 1)
_WINDOW_DAYS = 366 + 365 * 4


@lru_cache(maxsize=1024)
def expected_interval_seconds(expression: str) -> int:
    """The longest gap between two consecutive runs, in seconds (daylight saving time ignored).

    Exported by the syncer as a metric, so that a single alert ("no success for twice the interval")
    fits every schedule: a weekday-only backup has a longest gap of 3 days, not 1.
    """
    cron = parse(expression)
    times = sorted(hour * 60 + minute for hour in cron.hours for minute in cron.minutes)
    if not cron.days_restricted and not cron.weekdays_restricted and len(cron.months) == 12:
        days = [0, 1]  # every day (the common case, no need to walk the calendar)
    else:
        days = [index for index in range(_WINDOW_DAYS)
                if cron.matches_day(_WINDOW_START + datetime.timedelta(days=index))]
    if not days:
        raise ScheduleError(f"the schedule {expression!r} never runs")
    longest = max((later - earlier for earlier, later in itertools.pairwise(times)), default=0)
    day_gaps = [later - earlier for earlier, later in itertools.pairwise(days)] or [_WINDOW_DAYS]
    longest = max(longest, max(day_gaps) * 1440 - times[-1] + times[0])
    return longest * 60


def format_duration(seconds: int) -> str:
    """The largest whole unit the syncer understands: 86400 -> "1d", 5400 -> "90m"."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def validate_time_zone(name: str) -> None:
    """Raise ScheduleError for an unknown IANA time zone (skipped when no tz database is installed)."""
    if not name:
        return
    known = zoneinfo.available_timezones()
    if known and name not in known:
        raise ScheduleError(f"unknown time zone {name!r} (use an IANA name such as Etc/UTC or Europe/Berlin)")
