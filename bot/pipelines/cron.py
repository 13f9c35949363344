"""Cron expressions and their slots in a time zone: `Cron.parse("0 3 * * *", "Europe/Paris")`.

Five fields, as in crontab(5): minute (0-59), hour (0-23), day of month (1-31), month (1-12 or
jan-dec), day of week (0-7 or sun-sat, 0 and 7 both Sunday). A field is `*`, a number, a range
`a-b`, any of these with a step (`*/15`, `10-50/20`), or a comma-separated list of them.
`@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly` and `@yearly` (`@annually`) stand for
their usual expressions. As in Vixie cron, when both day fields are restricted (neither starts
with `*`), a day matches if either does; otherwise it must match both.

Slots are wall-clock times in the expression's time zone, turned into instants:

- a wall time that a DST jump skips (02:30 on a spring-forward night in Europe/Paris) fires when
  the clock jumps past it, shifted by the jump (03:30), once even if several skipped times map
  to the same instant;
- a wall time that happens twice (02:30 on a fall-back night) fires at its first occurrence,
  and at the second too when the hour field is `*` (so `*/15 * * * *` keeps firing every quarter
  hour through the repeated hour, and `30 2 * * *` fires once).

`following(after)` is the first slot after an instant, `previous(at)` the last one at or before
it; both are aware UTC datetimes, or None when no slot exists within `HORIZON_DAYS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: How far `following` and `previous` search: 8 years covers Feb 29 on a given weekday.
HORIZON_DAYS = 8 * 366

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message says which part."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    #: The first name's number (jan is 1, sun is 0).
    names_from: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day of week", 0, 7, _WEEKDAYS, 0),
)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. "Europe/Paris", "UTC"); CronError if there is none."""
    if not isinstance(name, str) or not name:
        raise CronError(f"time zone {name!r} is not a name like 'Europe/Paris' or 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r} (an IANA name like 'Europe/Paris')") from None


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression in a time zone; see the module docstring for its slots."""

    expression: str
    tz: tzinfo
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str, tz: str = "UTC") -> Cron:
        if not isinstance(expression, str):
            raise CronError(f"a cron expression is a string, not {expression!r}")
        text = _MACROS.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise CronError(
                f"cron {expression!r} has {len(parts)} fields; it needs 5: "
                "minute hour day-of-month month day-of-week"
            )
        values = [
            _parse_field(spec, part, expression) for spec, part in zip(_FIELDS, parts, strict=True)
        ]
        cron = cls(
            expression=expression,
            tz=zone(tz),
            minutes=tuple(sorted(values[0])),
            hours=tuple(sorted(values[1])),
            days=frozenset(values[2]),
            months=frozenset(values[3]),
            weekdays=frozenset(day % 7 for day in values[4]),
            days_restricted=not parts[2].startswith("*"),
            weekdays_restricted=not parts[4].startswith("*"),
        )
        if cron.following(datetime(2000, 1, 1, tzinfo=UTC)) is None:
            raise CronError(f"cron {expression!r} matches no date")
        return cron

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = day.isoweekday() % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    def following(self, after: datetime) -> datetime | None:
        """The first slot strictly after `after` (aware), in UTC."""
        start = after.astimezone(self.tz).date() - timedelta(days=1)
        best: datetime | None = None
        for day in _days(start, 1):
            if best is not None and day > best.astimezone(self.tz).date() + timedelta(days=1):
                return best
            later = [slot for slot in self.slots_on(day) if slot > after]
            if later and (best is None or later[0] < best):
                best = later[0]
        return best

    def previous(self, at: datetime) -> datetime | None:
        """The last slot at or before `at` (aware), in UTC."""
        start = at.astimezone(self.tz).date() + timedelta(days=1)
        best: datetime | None = None
        for day in _days(start, -1):
            if best is not None and day < best.astimezone(self.tz).date() - timedelta(days=1):
                return best
            earlier = [slot for slot in self.slots_on(day) if slot <= at]
            if earlier and (best is None or earlier[-1] > best):
                best = earlier[-1]
        return best

    def slots_on(self, day: date) -> list[datetime]:
        """The instants (UTC, sorted) of the wall times this expression names on a local day."""
        if not self.matches_day(day):
            return []
        steady = _steady_offset(day, self.tz)
        if steady is not None:  # no DST change that day: wall time minus one offset
            midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) - steady
            return [
                midnight + timedelta(hours=hour, minutes=minute)
                for hour in self.hours
                for minute in self.minutes
            ]
        instants: set[datetime] = set()
        for hour in self.hours:
            for minute in self.minutes:
                wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz)
                instants.add(wall.astimezone(UTC))
                if len(self.hours) == 24 and _happens_twice(wall):
                    instants.add(wall.replace(fold=1).astimezone(UTC))
        return sorted(instants)


def _days(start: date, step: int) -> Iterator[date]:
    for offset in range(HORIZON_DAYS):
        try:
            yield start + timedelta(days=offset * step)
        except OverflowError:
            return


def _steady_offset(day: date, tz: tzinfo) -> timedelta | None:
    """The zone's UTC offset all through a local day, or None if it changes that day."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    end = start + timedelta(days=1)
    offset = start.utcoffset()
    if offset is None or end.utcoffset() != offset:
        return None
    # An offset that changes and changes back within one day would escape this check; no zone
    # in the IANA database does that.
    return offset


def _happens_twice(wall: datetime) -> bool:
    """Whether a local wall time occurs twice (the repeated hour of a fall-back night)."""
    second = wall.replace(fold=1)
    if second.utcoffset() == wall.utcoffset():
        return False
    back = second.astimezone(UTC).astimezone(wall.tzinfo)
    return back.replace(tzinfo=None) == wall.replace(tzinfo=None)


def _parse_field(spec: _Field, text: str, expression: str) -> set[int]:
    where = f"cron {expression!r}: {spec.name} field {text!r}"
    values: set[int] = set()
    for item in text.split(","):
        values |= _parse_item(spec, item.strip().lower(), where)
    return values


def _parse_item(spec: _Field, item: str, where: str) -> set[int]:
    base, _, step_text = item.partition("/")
    step = _number(step_text, where, "step") if step_text else 1
    if step < 1:
        raise CronError(f"{where}: a step must be 1 or more")
    if base == "*":
        low, high = spec.low, spec.high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(spec, first, where), _value(spec, last, where)
        if low > high:
            raise CronError(f"{where}: range {base!r} runs backwards")
    else:
        low = _value(spec, base, where)
        high = spec.high if step_text else low
    return set(range(low, high + 1, step))


def _value(spec: _Field, text: str, where: str) -> int:
    if text in spec.names:
        return spec.names.index(text) + spec.names_from
    value = _number(text, where, "value")
    if not spec.low <= value <= spec.high:
        raise CronError(f"{where}: {value} is outside {spec.low}-{spec.high}")
    return value


def _number(text: str, where: str, what: str) -> int:
    if not text.isdigit():
        raise CronError(f"{where}: {what} {text!r} is not a number")
    return int(text)
