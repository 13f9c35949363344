"""`schedule()` is checked when declared (timing, zone, target, policy, static payload) or, for a
target registered later, when discovery ends; a bad schedule stops start-up with one line and
exit code 2 (`bot` and `celery -A bot beat` alike). In-process tests use a fresh registry in
place of the process-wide one; discovery runs in fresh interpreters."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.base.exits import EXIT_USAGE
from bot.pipelines import schedules as schedules_module
from bot.pipelines.schedules import Interval, ScheduleDefinitionError, ScheduleRegistry, schedule
from tests.support.processes import REPO_ROOT, run_to_end
from tests.unit.test_pipeline_discovery import env_with


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScheduleRegistry]:
    """A fresh registry in place of SCHEDULES, over the ops and pipelines of this process."""
    fresh = ScheduleRegistry()
    monkeypatch.setattr(schedules_module, "SCHEDULES", fresh)
    yield fresh


def refused(**kwargs: Any) -> str:
    """The message `schedule("job", **kwargs)` is refused with."""
    with pytest.raises(ScheduleDefinitionError) as caught:
        schedule("job", **kwargs)
    assert caught.value.module == __name__
    return str(caught.value)


SUM = {"op": "sum", "payload": {"a": 1, "b": 2}}


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "0 25 * * *", **SUM}, "schedule 'job': cron '0 25 * * *': hour field '25'"),
        (
            {"cron": "0 3 * * *", "tz": "Mars/Olympus", **SUM},
            "schedule 'job': unknown time zone 'Mars/Olympus'",
        ),
        ({**SUM}, "schedule 'job': give exactly one of every= (seconds) and cron="),
        ({"every": 5, "cron": "* * * * *", **SUM}, "give exactly one of every="),
        ({"every": 0.5, **SUM}, "every=0.5 must be a whole number of seconds, 1 or more"),
        ({"every": 1, "payload": {}}, "schedule 'job': give exactly one target, op= or pipeline="),
        (
            {"every": 1, "op": "sum", "pipeline": "difference_of_squares"},
            "give exactly one target",
        ),
        ({"every": 1, "catch_up": "later", **SUM}, "catch_up must be 'run' or 'skip'"),
        ({"every": 1, "max_catch_up": 0, **SUM}, "max_catch_up must be a whole number from 1"),
        (
            {"every": 1, "op": "sum", "payload": {"a": 1}},
            "schedule 'job': its payload {'a': 1} does not fit op 'sum': b: Field required",
        ),
        (
            {"every": 1, "pipeline": "difference_of_squares", "payload": {"a": "x", "b": 1}},
            "does not fit pipeline 'difference_of_squares'",
        ),
    ],
)
def test_a_bad_schedule_is_refused_when_declared(kwargs: dict[str, Any], message: str) -> None:
    assert message in refused(**kwargs)


def test_a_bad_name_is_refused(registry: ScheduleRegistry) -> None:
    with pytest.raises(ScheduleDefinitionError, match="schedule name 'Bad Name' is not valid"):
        schedule("Bad Name", every=1, **SUM)


def test_a_good_schedule_enters_the_registry_at_once(registry: ScheduleRegistry) -> None:
    schedule("tick", every=timedelta(minutes=1), **SUM, description="Adds.")
    item = registry.get("tick")
    assert item.timing == Interval(60, item.timing.tz) and item.tz_name == "UTC"
    assert item.target_kind == "op" and item.target == "sum"
    assert (item.catch_up, item.max_catch_up) == ("run", 1)  # the defaults
    assert item.describe() == {
        "every": 60,
        "tz": "UTC",
        "op": "sum",
        "payload": {"a": 1, "b": 2},
        "catch_up": "run",
        "max_catch_up": 1,
        "description": "Adds.",
        "module": __name__,
    }
    assert item.spec_label() == "every 60s" and item.catch_up_label() == "run (newest 1)"


def test_an_unknown_target_is_refused_when_discovery_ends(registry: ScheduleRegistry) -> None:
    schedule("later", every=1, op="not_yet", payload={})
    assert registry.pending() == ["later"] and registry.names() == []
    with pytest.raises(ScheduleDefinitionError) as caught:
        registry.resolve()
    assert str(caught.value).startswith("schedule 'later': op 'not_yet' is not registered (known: ")


def test_a_decorated_function_builds_the_payload_of_each_slot(registry: ScheduleRegistry) -> None:
    @schedule("nightly", cron="0 3 * * *", tz="Europe/Paris", op="sum", max_catch_up=3)
    def nightly(slot: datetime) -> dict[str, Any]:
        return {"a": slot.hour, "b": slot.day}

    registry.resolve()  # a payload function: its output is validated when each slot is submitted
    item = registry.get("nightly")
    slot = datetime.fromisoformat("2024-03-31T01:00:00+00:00")
    assert item.payload_for(slot) == {"a": 3, "b": 31}  # the slot in Europe/Paris
    assert nightly(slot) == {"a": 1, "b": 31}  # the function itself is left as it was
    assert item.spec_label() == "cron '0 3 * * *' Europe/Paris"


def test_a_payload_function_must_take_the_slot(registry: ScheduleRegistry) -> None:
    declare = schedule("built", every=1, op="sum")
    with pytest.raises(ScheduleDefinitionError, match="must take one argument, the slot"):
        declare(lambda: {"a": 1, "b": 2})  # type: ignore[arg-type,return-value]


def test_a_payload_and_a_payload_function_are_not_both_allowed(
    registry: ScheduleRegistry,
) -> None:
    declare = schedule("both", every=1, **SUM)
    with pytest.raises(ScheduleDefinitionError, match="give a payload or decorate a function"):
        declare(lambda slot: {"a": 1, "b": 2})


def test_a_schedule_without_payload_is_checked_with_an_empty_one(
    registry: ScheduleRegistry,
) -> None:
    schedule("empty", every=1, op="sum")
    with pytest.raises(ScheduleDefinitionError, match=r"its payload \{\} does not fit op 'sum'"):
        registry.resolve()


def test_a_second_schedule_of_the_same_name_from_another_module_is_refused(
    registry: ScheduleRegistry,
) -> None:
    schedule("twice", every=1, **SUM)
    declared = registry.get("twice")
    with pytest.raises(ScheduleDefinitionError, match="'twice' is already defined"):
        registry.define(schedules_module.replace(declared, module="elsewhere"))


#: A schedule with a bad cron expression, in a module of BOT_OPS_MODULES.
BAD = """
from bot import schedule

schedule("broken", cron="0 3 * * 8", op="sum", payload={"a": 1, "b": 2})
"""

#: A schedule naming an op of a module discovered after it, and that op.
EARLY = """
from bot import schedule

schedule("early", every=60, op="late_op", payload={"n": 1})
"""
LATE = """
from bot.ops import op


@op("late_op")
def late_op(n: int) -> int:
    return n
"""

BAD_LINE = (
    "bot: invalid configuration: schedule 'broken': cron '0 3 * * 8': day of week field '8': "
    "not acceptable, out of range (the day of week is 0-7 or sun-sat) (declared in bad_schedule)"
)


def test_a_bad_schedule_stops_the_cli_and_the_beat_with_one_line(tmp_path: Path) -> None:
    env = env_with(tmp_path, {"bad_schedule": BAD}, "bad_schedule")
    for argv in (
        [sys.executable, "-m", "bot", "schedules"],
        [sys.executable, "-m", "celery", "-A", "bot", "beat"],
    ):
        done = run_to_end(argv, env, REPO_ROOT, 60)
        assert done.returncode == EXIT_USAGE, done.stderr
        assert done.stderr.splitlines() == [BAD_LINE], done.stderr


def test_a_schedule_naming_an_op_of_a_later_module_is_checked_when_discovery_ends(
    tmp_path: Path,
) -> None:
    env = env_with(tmp_path, {"early_sched": EARLY, "late_ops": LATE}, "early_sched,late_ops")
    env["BOT_REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing there: the listing needs Redis
    done = run_to_end([sys.executable, "-m", "bot", "schedules"], env, REPO_ROOT, 60)
    assert done.returncode == 1 and "unreachable" in done.stderr  # start-up passed the checks
    env["BOT_OPS_MODULES"] = "early_sched"
    done = run_to_end([sys.executable, "-m", "bot", "schedules"], env, REPO_ROOT, 60)
    assert done.returncode == EXIT_USAGE
    assert done.stderr.startswith(
        "bot: invalid configuration: schedule 'early': op 'late_op' is not registered"
    )
