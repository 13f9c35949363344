"""Cron expressions and their slots in a time zone: `Cron.parse("0 3 * * *", "Europe/Paris")`.

croniter parses the expressions and finds the slots, run in the schedule's zone (zoneinfo). This
module owns what is around it: the five-field grammar (croniter would also take 6 or 7 fields),
error messages that name the bad field, the time zone, and one correction of croniter's slots at
a DST fall-back (`Cron._slot`).

Five fields, as in crontab(5): minute (0-59), hour (0-23), day of month (1-31), month (1-12 or
jan-dec), day of week (0-7 or sun-sat, 0 and 7 both Sunday). A field is `*`, a number, a range
`a-b`, any of these with a step (`*/15`, `10-50/20`), or a comma-separated list of them;
croniter also reads a range that wraps (`22-1` is 22, 23, 0, 1) and its extensions `L`, `W`,
`#` and `?`. `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly` and `@yearly`
(`@annually`) stand for their usual expressions. As in Vixie cron, when both day fields are
restricted (neither is `*` nor starts with `*`), a day matches if either does; otherwise it
must match both.

Slots are wall-clock times in the expression's time zone, turned into instants (as croniter
7.0 does, pinned in tests/unit/test_schedule_slots.py, except where said):

- a wall time that a DST jump skips (02:30 on a spring-forward night in Europe/Paris) fires when
  the clock jumps (at 03:00), once even if several skipped times map to that instant; with the
  hour field `*` it is not made up (`30 * * * *` fires at 01:30 CET, then 03:30 CEST: an hour
  apart, as ever; in a zone whose jump is not a whole hour, Australia/Lord_Howe, `0 * * * *`
  has 90 minutes between two slots that night);
- a wall time that happens twice (02:30 on a fall-back night) fires at its first occurrence,
  and at the second too when the hour field is `*` (so `*/15 * * * *` keeps firing every quarter
  hour through the repeated hour, and `30 2 * * *` fires once: the correction, as croniter
  alone fires it at both).

`following(after)` is the first slot after an instant, `previous(at)` the last one at or before
it; both are aware UTC datetimes, increasing with their argument, with
previous(following(x)) == following(x); None when croniter finds no slot within its search span
(50 years).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

#: The five fields in order: their names in error messages and what each accepts.
_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day of week", "0-7 or sun-sat"),
)
_MACROS = "@hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually"
_MINUTE = timedelta(minutes=1)


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message says which part."""


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
    #: Whether the hour field is `*` (every hour): then a repeated wall time fires twice.
    every_hour: bool = field(default=False, compare=False)

    @classmethod
    def parse(cls, expression: str, tz: str = "UTC") -> Cron:
        if not isinstance(expression, str):
            raise CronError(f"a cron expression is a string, not {expression!r}")
        text = expression.strip()
        parts = text.split()
        if not text.startswith("@") and len(parts) != 5:  # croniter would take 6 or 7
            raise CronError(
                f"cron {expression!r} has {len(parts)} fields; it needs 5: "
                "minute hour day-of-month month day-of-week"
            )
        try:
            expanded, _ = croniter.expand(text)
        except CroniterBadCronError as exc:
            raise CronError(_problem(expression, text, exc)) from None
        cron = cls(expression=expression, tz=zone(tz), every_hour=expanded[1] == ["*"])
        if cron.following(datetime(2000, 1, 1, tzinfo=UTC)) is None:
            raise CronError(f"cron {expression!r} matches no date")
        return cron

    def following(self, after: datetime) -> datetime | None:
        """The first slot strictly after `after` (aware), in UTC."""
        # Slots are on whole minutes: the first one after `after` is the first one after the
        # start of its minute.
        steps = self._steps(self._minute_of(after))
        return self._slot(steps.get_next)

    def previous(self, at: datetime) -> datetime | None:
        """The last slot at or before `at` (aware), in UTC."""
        steps = self._steps(self._minute_of(at) + _MINUTE)  # croniter's get_prev is strictly before
        return self._slot(steps.get_prev)

    def _minute_of(self, moment: datetime) -> datetime:
        """The start of `moment`'s wall-clock minute in the zone, in UTC (so also for offsets
        that are not whole minutes, as before 1900)."""
        instant = moment.astimezone(UTC)
        local = instant.astimezone(self.tz)
        return instant - timedelta(seconds=local.second, microseconds=local.microsecond)

    def _steps(self, start: datetime) -> croniter:
        # implement_cron_bug: Vixie's day rule (a day field starting with `*` makes the two
        # day fields both apply), which croniter's default (`day_or`) applies only to `*` itself.
        return croniter(self.expression.strip(), start.astimezone(self.tz), implement_cron_bug=True)

    def _slot(self, step: Callable[[type[datetime]], datetime]) -> datetime | None:
        """The next slot `step` (a croniter's get_next or get_prev) gives, in UTC, passing
        over the second occurrence of a repeated wall time unless the hour field is `*`.

        The correction: at a fall-back, croniter gives a wall time of the repeated hour at both
        of its occurrences (`30 2 * * *` fires at 02:30 CEST and again at 02:30 CET), which would
        run a daily job twice that night; as in Vixie cron, only `*` hours fire twice.
        """
        while True:
            try:
                found = step(datetime)
            except (CroniterBadDateError, OverflowError):
                return None
            if self.every_hour or not _second_occurrence(found, self.tz):
                return found.astimezone(UTC)


def _second_occurrence(slot: datetime, tz: tzinfo) -> bool:
    """Whether a slot is a wall time's second occurrence (in the repeated hour of a fall-back)."""
    local = slot.astimezone(UTC).astimezone(tz)  # croniter's `fold` is not always meaningful
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _problem(expression: str, text: str, exc: CroniterBadCronError) -> str:
    """One line naming the bad field of `expression` and croniter's reason."""
    if text.startswith("@"):
        return f"cron {expression!r} is not a known macro ({_MACROS})"
    parts = text.split()
    for index, ((name, accepts), part) in enumerate(zip(_FIELDS, parts, strict=True)):
        alone = " ".join(part if other == index else "*" for other in range(5))
        try:
            croniter.expand(alone)
        except CroniterBadCronError as field_exc:
            reason = _reason(field_exc, alone)
            return f"cron {expression!r}: {name} field {part!r}: {reason} (the {name} is {accepts})"
    return f"cron {expression!r}: {_reason(exc, text)}"


def _reason(exc: CroniterBadCronError, text: str) -> str:
    """croniter's message without the expression it repeats (`[0 25 * * *] is not ...`)."""
    reason = str(exc).replace(f"[{text}]", "").replace(text, "").strip()
    return reason.removeprefix("is ").strip() or "not valid"
