"""Firing a schedule's slots against a real Redis (bot/flows/slots.py): deterministic ids, one
message per slot however often it is fired, the ledger only moving forward, the catch-up bound,
and slots whose payload cannot be had. No worker: what is enqueued is read from the queue."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from bot.application import BotApp
from bot.flows.slots import SlotLedger, fire, submit_slot
from bot.pipelines.schedules import Interval, Schedule

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)


def every_second(
    name: str = "tick", target: tuple[str, str] = ("op", "touch"), **changes: Any
) -> Schedule:
    values: dict[str, Any] = {"payload": {}, "catch_up": "run", "max_catch_up": 1, **changes}
    return Schedule(name, Interval(1), target[0], target[1], **values)  # type: ignore[arg-type]


def queued_ids(client: redis.Redis, queue: str = "celery") -> list[str]:
    """The task ids of the messages waiting in `queue`, oldest first."""
    messages = client.lrange(queue, 0, -1)
    return [json.loads(message)["headers"]["id"] for message in reversed(messages)]


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_each_slot_is_submitted_once_under_its_id_however_often_it_is_fired(
    bot_app: BotApp, client: redis.Redis
) -> None:
    ledger = SlotLedger(bot_app.redis(), bot_app.keys)
    tick = every_second()
    assert fire(bot_app, tick, ledger, later(0.5), starting=True).slots == ()  # never fired
    assert ledger.last("tick") == T0 and queued_ids(client) == []

    fire(bot_app, tick, ledger, later(3.2), starting=False)
    ids = [f"sched.tick.2024-01-01T10:00:0{second}Z" for second in (1, 2, 3)]
    assert queued_ids(client) == ids and ledger.last("tick") == later(3)
    assert [client.hget(f"bot:job:{job_id}", "state") for job_id in ids] == ["queued"] * 3

    # a second beat firing the same slots, e.g. one that still read an older ledger: no new
    # job; a slot still queued gets its message again (its first sender may have died between
    # claiming the id and sending), which its job record makes harmless
    for slot in (later(2), later(3)):
        again = submit_slot(bot_app, tick, slot)
        assert again is not None and (again.enqueued, again.resent) == (False, True)
    ledger.advance("tick", later(1))  # never moves back
    assert ledger.last("tick") == later(3)
    assert queued_ids(client) == [*ids, ids[1], ids[2]]
    assert len(list(client.scan_iter("bot:job:sched.tick.*"))) == 3


def test_a_starting_beat_submits_at_most_max_catch_up_missed_slots(
    bot_app: BotApp, client: redis.Redis
) -> None:
    ledger = SlotLedger(bot_app.redis(), bot_app.keys)
    ledger.advance("tick", T0)
    fire(bot_app, every_second(max_catch_up=3), ledger, later(10.5), starting=True)
    assert queued_ids(client) == [f"sched.tick.2024-01-01T10:00:{s:02}Z" for s in (8, 9, 10)]

    ledger.advance("skipper", T0)
    fire(bot_app, every_second("skipper", catch_up="skip"), ledger, later(10.5), starting=True)
    assert ledger.last("skipper") == later(10) and len(queued_ids(client)) == 3


def test_a_pipeline_slot_is_a_run_under_the_slot_id(bot_app: BotApp, client: redis.Redis) -> None:
    report = every_second(
        "squares",
        ("pipeline", "difference_of_squares"),
        payload={"a": 3, "b": 2, "factor": 1},
    )
    submitted = submit_slot(bot_app, report, later(1))
    assert submitted is not None and submitted.id == "sched.squares.2024-01-01T10:00:01Z"
    assert client.exists(f"bot:pipeline:{submitted.id}")
    assert queued_ids(client) == [submitted.id]
    assert submit_slot(bot_app, report, later(1)).enqueued is False  # type: ignore[union-attr]


def broken(slot: datetime) -> dict[str, Any]:
    raise RuntimeError(f"no payload for {slot:%H:%M:%S}")


def test_a_slot_whose_payload_cannot_be_had_is_logged_recorded_and_not_run(
    bot_app: BotApp, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = SlotLedger(bot_app.redis(), bot_app.keys)
    ledger.advance("failing", T0)
    ledger.advance("refused", T0)
    with caplog.at_level(logging.INFO, logger="bot.flows.slots"):
        fire(
            bot_app,
            every_second("failing", payload=None, build=broken),
            ledger,
            later(1.5),
            starting=False,
        )
        refused = every_second("refused", payload=None, build=lambda slot: {"seconds": -1})
        fire(bot_app, refused, ledger, later(1.5), starting=False)
    assert queued_ids(client) == []
    assert ledger.last("failing") == later(1) and ledger.last("refused") == later(1)
    messages = [record.getMessage() for record in caplog.records]
    assert (
        "schedule 'failing': its payload function failed for sched.failing.2024-01-01T10:00:01Z;"
        " not run" in messages
    )
    assert any(
        m.startswith("schedule 'refused': sched.refused.2024-01-01T10:00:01Z refused: ")
        and "seconds" in m
        for m in messages
    ), messages
