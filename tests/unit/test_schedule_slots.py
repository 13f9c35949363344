"""Slot arithmetic: cron expressions in a time zone (DST both ways), intervals, slot ids, and
which slots a beat submits (`bot.flows.slots.due`): steady ticks, catch-up on start, new
schedules. Pure: no Redis, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.flows.slots import due
from bot.jobs.envelope import JOB_ID_PATTERN
from bot.pipelines.cron import Cron, CronError
from bot.pipelines.schedules import Interval, Schedule, slot_id

PARIS = "Europe/Paris"


def at(text: str) -> datetime:
    """An instant from `2024-03-31T01:00:00Z`-style text."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def walk(cron: Cron, start: str, count: int) -> list[str]:
    """The next `count` slots after `start`, as local ISO times."""
    slots, moment = [], at(start)
    for _ in range(count):
        found = cron.following(moment)
        assert found is not None
        slots.append(found.astimezone(cron.tz).isoformat())
        moment = found
    return slots


def test_a_daily_cron_in_paris_fires_at_local_time_across_the_spring_jump() -> None:
    cron = Cron.parse("0 3 * * *", PARIS)
    assert walk(cron, "2024-03-30T12:00:00Z", 2) == [
        "2024-03-31T03:00:00+02:00",  # the night the clocks go 02:00 -> 03:00
        "2024-04-01T03:00:00+02:00",
    ]


def test_a_wall_time_skipped_by_the_spring_jump_fires_when_the_clock_jumps() -> None:
    cron = Cron.parse("30 2 * * *", PARIS)
    assert walk(cron, "2024-03-30T12:00:00Z", 2) == [
        "2024-03-31T03:00:00+02:00",  # 02:30 does not exist that night: croniter fires at 03:00
        "2024-04-01T02:30:00+02:00",
    ]


def test_an_hourly_slot_in_the_skipped_hour_is_not_made_up() -> None:
    # croniter: with the hour `*`, the slots stay an hour apart (01:30 CET, 03:30 CEST)
    cron = Cron.parse("30 * * * *", PARIS)
    assert walk(cron, "2024-03-31T00:00:00Z", 2) == [
        "2024-03-31T01:30:00+01:00",
        "2024-03-31T03:30:00+02:00",
    ]


def test_every_quarter_hour_through_the_spring_jump_has_no_double_slot() -> None:
    cron = Cron.parse("*/30 * * * *", PARIS)
    # 02:00 and 02:30 do not exist: the 03:00 and 03:30 slots follow 01:30, each fired once
    assert walk(cron, "2024-03-31T00:00:00Z", 3) == [
        "2024-03-31T01:30:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-03-31T03:30:00+02:00",
    ]


def test_a_fixed_wall_time_in_the_repeated_hour_fires_once_at_its_first_occurrence() -> None:
    # croniter alone gives 02:30 CEST and 02:30 CET; bot.pipelines.cron drops the second
    cron = Cron.parse("30 2 * * *", PARIS)
    assert walk(cron, "2024-10-26T12:00:00Z", 2) == [
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
    ]
    assert cron.previous(at("2024-10-28T00:00:00Z")) == at("2024-10-27T00:30:00Z")
    assert cron.following(at("2024-10-27T01:00:00Z")) == at("2024-10-28T01:30:00Z")


def test_a_wildcard_hour_keeps_firing_through_the_repeated_hour() -> None:
    cron = Cron.parse("*/15 * * * *", PARIS)
    forward = walk(cron, "2024-10-26T23:50:00Z", 10)
    assert forward == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:15:00+02:00",
        "2024-10-27T02:30:00+02:00",
        "2024-10-27T02:45:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T02:15:00+01:00",
        "2024-10-27T02:30:00+01:00",
        "2024-10-27T02:45:00+01:00",
        "2024-10-27T03:00:00+01:00",
        "2024-10-27T03:15:00+01:00",
    ]
    backward, moment = [], at("2024-10-27T02:15:00Z")
    for _ in range(10):
        found = cron.previous(moment)
        assert found is not None
        backward.append(found.astimezone(cron.tz).isoformat())
        moment = found - timedelta(seconds=1)
    assert backward == forward[::-1]


@pytest.mark.parametrize("expression", ["*/15 * * * *", "30 2 * * *", "0 3 * * *", "* 2 * * *"])
@pytest.mark.parametrize("night", ["2024-03-31", "2024-10-27"])
def test_slots_increase_and_previous_agrees_with_following_through_a_dst_night(
    expression: str, night: str
) -> None:
    cron = Cron.parse(expression, PARIS)
    moment, slots = at(f"{night}T00:00:00Z") - timedelta(hours=2), []
    while moment < at(f"{night}T04:00:00Z"):  # every 7.5 minutes through the change
        found = cron.following(moment)
        assert found is not None and found > moment and found.tzinfo is UTC
        assert cron.previous(found) == found
        before = cron.previous(moment)
        assert before is not None and before <= moment and cron.following(before) == found
        slots.append(found)
        moment += timedelta(minutes=7, seconds=30)
    assert slots == sorted(slots)


def test_previous_is_the_last_slot_at_or_before_an_instant() -> None:
    cron = Cron.parse("0 3 * * *", PARIS)
    assert cron.previous(at("2024-04-01T01:00:00Z")) == at("2024-04-01T01:00:00Z")
    assert cron.previous(at("2024-04-01T00:59:59Z")) == at("2024-03-31T01:00:00Z")
    assert cron.previous(at("2024-03-31T00:59:59Z")) == at("2024-03-30T02:00:00Z")  # CET


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        # both day fields restricted: either matches (the 13th, or a Friday)
        ("0 0 13 * 5", "2024-09-01T00:00:00Z", ["2024-09-06", "2024-09-13", "2024-09-20"]),
        # day of week `*`-led: the day of month must match
        ("0 0 13 * *", "2024-09-01T00:00:00Z", ["2024-09-13", "2024-10-13", "2024-11-13"]),
        ("0 0 * * sat,sun", "2024-09-01T00:00:00Z", ["2024-09-07", "2024-09-08", "2024-09-14"]),
        ("0 0 * * 7", "2024-09-01T00:00:00Z", ["2024-09-08", "2024-09-15", "2024-09-22"]),
        ("0 0 29 feb *", "2024-03-01T00:00:00Z", ["2028-02-29", "2032-02-29", "2036-02-29"]),
        # a day field led by `*` (`*/2`) makes both apply, as in Vixie cron: odd days AND Mondays
        ("0 0 */2 * 1", "2024-09-01T00:00:00Z", ["2024-09-09", "2024-09-23", "2024-10-07"]),
        ("@monthly", "2024-09-01T00:00:00Z", ["2024-10-01", "2024-11-01", "2024-12-01"]),
        (" @WEEKLY ", "2024-09-01T00:00:00Z", ["2024-09-08", "2024-09-15", "2024-09-22"]),
    ],
)
def test_day_rules_follow_vixie_cron(expression: str, start: str, expected: list[str]) -> None:
    assert [day[:10] for day in walk(Cron.parse(expression), start, 3)] == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 3 * *", "cron '0 3 * *' has 4 fields; it needs 5"),
        ("0 0 3 * * *", "cron '0 0 3 * * *' has 6 fields; it needs 5"),  # croniter: seconds
        ("61 * * * *", "minute field '61': not acceptable, out of range (the minute is 0-59)"),
        ("* 1-24 * * *", "hour field '1-24': out of bands (the hour is 0-23)"),
        ("*/0 * * * *", "minute field '*/0': step '0' in field 0 is not acceptable"),
        (
            "0 0 * 13 *",
            "month field '13': not acceptable, out of range (the month is 1-12 or jan-dec)",
        ),
        ("0 0 * * funday", "day of week field 'funday': not acceptable (the day of week is 0-7 or"),
        ("@reboot", "cron '@reboot' is not a known macro (@hourly, @daily, @midnight,"),
        ("0 0 30 2 *", "cron '0 0 30 2 *' matches no date"),
    ],
)
def test_a_bad_cron_expression_says_which_part(expression: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        Cron.parse(expression)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_hour_range_may_wrap_past_midnight() -> None:
    # croniter reads `22-1` as 22, 23, 0, 1 (Vixie cron refuses it)
    hours = [slot[11:16] for slot in walk(Cron.parse("0 22-1 * * *"), "2024-09-01T12:00:00Z", 5)]
    assert hours == ["22:00", "23:00", "00:00", "01:00", "22:00"]


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(CronError) as caught:
        Cron.parse("0 3 * * *", "Europe/Atlantis")
    assert str(caught.value) == (
        "unknown time zone 'Europe/Atlantis' (an IANA name like 'Europe/Paris')"
    )


def test_interval_slots_are_multiples_of_the_interval_since_the_epoch() -> None:
    every = Interval(60)
    assert every.previous(at("2024-01-01T10:00:59Z")) == at("2024-01-01T10:00:00Z")
    assert every.previous(at("2024-01-01T10:01:00Z")) == at("2024-01-01T10:01:00Z")
    assert every.following(at("2024-01-01T10:01:00Z")) == at("2024-01-01T10:02:00Z")
    assert Interval(7).previous(at("1970-01-01T00:00:20Z")) == at("1970-01-01T00:00:14Z")


def test_a_slot_id_is_a_valid_job_and_run_id_whatever_the_zone() -> None:
    slot = datetime(2024, 3, 31, 3, 0, tzinfo=Cron.parse("0 3 * * *", PARIS).tz)
    assert slot_id("nightly", slot) == "sched.nightly.2024-03-31T01:00:00Z"
    longest = slot_id("n" * 64, slot)
    assert JOB_ID_PATTERN.match(longest) and len(longest) <= 180  # pipeline run ids: <= 180


def every_second(catch_up: Any = "run", max_catch_up: int = 1) -> Schedule:
    return Schedule("tick", Interval(1), "op", "touch", {}, catch_up, max_catch_up)


T0 = at("2024-01-01T10:00:00Z")


def seconds(*offsets: int) -> tuple[datetime, ...]:
    return tuple(T0 + timedelta(seconds=offset) for offset in offsets)


def test_a_schedule_never_fired_starts_from_the_current_slot_without_running_it() -> None:
    plan = due(every_second(), None, T0 + timedelta(seconds=5.5), starting=True)
    assert plan.slots == () and plan.mark == T0 + timedelta(seconds=5)


def test_a_running_beat_submits_every_slot_since_the_last_even_after_a_stall() -> None:
    plan = due(every_second(), T0, T0 + timedelta(seconds=3.2), starting=False)
    assert plan.slots == seconds(1, 2, 3) and plan.mark == seconds(3)[0] and not plan.dropped


def test_nothing_is_due_before_the_next_slot() -> None:
    assert due(every_second(), T0, T0 + timedelta(seconds=0.9), starting=False).slots == ()


def test_a_starting_beat_runs_the_newest_missed_slots_up_to_max_catch_up() -> None:
    plan = due(every_second("run", 3), T0, T0 + timedelta(seconds=10.5), starting=True)
    assert plan.slots == seconds(8, 9, 10) and plan.dropped


def test_a_starting_beat_runs_every_missed_slot_within_the_bound() -> None:
    plan = due(every_second("run", 100), T0, T0 + timedelta(seconds=10.5), starting=True)
    assert plan.slots == seconds(*range(1, 11)) and not plan.dropped


def test_a_starting_beat_skips_missed_slots_under_skip_and_moves_past_them() -> None:
    plan = due(every_second("skip"), T0, T0 + timedelta(seconds=10.5), starting=True)
    assert plan.slots == () and plan.mark == seconds(10)[0] and plan.dropped


def test_by_default_the_latest_missed_slot_runs_once() -> None:
    plan = due(every_second(), T0, T0 + timedelta(seconds=10.5), starting=True)
    assert plan.slots == seconds(10)


def test_catch_up_walks_cron_slots_back_across_days() -> None:
    nightly = Schedule("nightly", Cron.parse("0 3 * * *", PARIS), "op", "touch", {}, "run", 2)
    plan = due(nightly, at("2024-03-25T02:00:00Z"), at("2024-03-31T12:00:00Z"), starting=True)
    assert plan.slots == (at("2024-03-30T02:00:00Z"), at("2024-03-31T01:00:00Z"))
