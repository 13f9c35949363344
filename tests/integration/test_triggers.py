"""The trigger consumer (bot/flows/triggers.py) against a real redis-server, in-process: reports
are appended to `bot:outbox` as complete.lua appends them, the consumer runs pass by pass, and
what it submits is read back from the job records and the broker queue.

Covered: one submission per trigger and report under a derived id; a report delivered again
(pending on a consumer that never acked it and claimed by another, or appended twice) starts
nothing new; the failure policy (a raising trigger, a refused payload: dead-lettered at once,
the reports behind still fire, replay fires it; a broker error: retried until it fires once);
a pipeline target; the group's start, its hold on trimming and its line in `bot outbox`."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

from bot.application import BotApp
from bot.flows.triggers import TRIGGER_GROUP, trigger_consumer, trigger_job_id
from bot.jobs.reports import Report, ReportWorker
from bot.outbox.relay import Relay
from bot.outbox.stream import Outbox
from bot.pipelines.triggers import Target, Trigger, TriggerRegistry
from tests.support.processes import run_bot

pytestmark = pytest.mark.integration

OUTBOX = "bot:outbox"
QUEUE = "celery"
SUM, TOUCH = Target("op", "sum"), Target("op", "touch")
#: Fast retries for the consumer; claim_idle_ms=0 for one that takes over another's entries.
FAST: dict[str, Any] = {"retry_base_s": 0.01, "retry_max_s": 0.02}


def a_touch(report: Report) -> dict[str, Any]:
    return {"seconds": 0}


def registry_of(*triggers: Trigger) -> TriggerRegistry:
    registry = TriggerRegistry()
    for trigger in triggers:
        registry.define(trigger)
    return registry


def touch_on_sum(fn: Callable[[Report], Any] = a_touch, name: str = "t.touch") -> Trigger:
    return Trigger(name, ("succeeded",), SUM, TOUCH, fn)


def add_report(
    client: redis.Redis, job_id: str, *, op: str = "sum", status: str = "succeeded", result: Any = 3
) -> str:
    """Append a report as complete.lua does; returns its entry id."""
    report = Report(
        job_id=job_id,
        op=op,
        status=status,  # type: ignore[arg-type]
        result=result,
        attempts=1,
        recoveries=0,
        worker=ReportWorker(bot_id=None, instance_id=None, hostname="test"),
        finished_at=datetime.now(UTC),
    )
    return str(client.xadd(OUTBOX, {"job_id": job_id, "report": report.model_dump_json()}))


def consumer(app: BotApp, name: str, registry: TriggerRegistry, **config: Any) -> Relay:
    """A trigger consumer after its first pass, as a started one is: its group exists."""
    started = trigger_consumer(app, name, registry, **{**FAST, **config})
    started.run_once()
    return started


def job(client: redis.Redis, job_id: str) -> dict[str, str]:
    return client.hgetall(f"bot:job:{job_id}")  # type: ignore[return-value]


def group_stats(app: BotApp) -> dict[str, Any]:
    groups = Outbox(app.redis(), app.keys).stats()["groups"]
    return next(g for g in groups if g["group"] == TRIGGER_GROUP)


def test_a_matching_report_submits_the_target_once_under_an_id_derived_from_it(
    bot_app: BotApp, client: redis.Redis
) -> None:
    trigger_consumer_ = consumer(bot_app, "c1", registry_of(touch_on_sum()))
    add_report(client, "j1")
    add_report(client, "j2", status="failed")
    add_report(client, "j3", op="subtract")

    trigger_consumer_.run_once()

    assert trigger_consumer_.sink.counters["fired"] == 1  # type: ignore[attr-defined]
    record = job(client, "trg.t.touch.j1")
    assert (record["op"], record["state"]) == ("touch", "queued")
    assert client.llen(QUEUE) == 1
    assert [k for k in client.scan_iter("bot:job:*")] == ["bot:job:trg.t.touch.j1"]
    assert group_stats(bot_app)["owed"] == 0


def test_reports_older_than_the_group_fire_nothing(bot_app: BotApp, client: redis.Redis) -> None:
    add_report(client, "before")
    trigger_consumer_ = consumer(bot_app, "c1", registry_of(touch_on_sum()))
    add_report(client, "after")

    trigger_consumer_.run_once()

    assert client.llen(QUEUE) == 1 and job(client, "trg.t.touch.after")
    assert not job(client, "trg.t.touch.before")


def queued_ids(client: redis.Redis) -> list[str]:
    """The task id of every message on the queue."""
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(QUEUE, 0, -1)]


def test_a_report_delivered_again_starts_nothing_new(
    bot_app: BotApp, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = registry_of(touch_on_sum())
    first = consumer(bot_app, "dies-before-ack", registry)
    monkeypatch.setattr(first.outbox, "ack", lambda *args: 0)  # killed between submit and XACK
    entry_id = add_report(client, "j1")
    first.run_once()
    assert group_stats(bot_app)["pending"] == 1 and client.llen(QUEUE) == 1

    second = consumer(bot_app, "survivor", registry, claim_idle_ms=0)
    second.run_once()  # claims the entry the first one never acked, fires it again
    report = client.xrange(OUTBOX, entry_id, entry_id)[0][1]
    client.xadd(OUTBOX, report)  # the same report appended a second time
    second.run_once()

    assert second.counters["claimed"] == 1
    assert second.sink.counters == {  # type: ignore[attr-defined]
        "fired": 0,
        "already_fired": 2,
        "not_fired": 0,
        "trigger_errors": 0,
    }
    # while its job is still queued, the message is sent again (a submitter may have died
    # between claiming the id and sending: bot/flows/submit.py), always under the one job id
    assert queued_ids(client) == ["trg.t.touch.j1"] * 3
    assert [k for k in client.scan_iter("bot:job:*")] == ["bot:job:trg.t.touch.j1"]
    assert group_stats(bot_app)["owed"] == 0


def test_a_trigger_that_raises_is_dead_lettered_at_once_the_rest_fire_and_replay_fires_it(
    bot_app: BotApp, client: redis.Redis
) -> None:
    broken = {"yes": True}

    def fragile(report: Report) -> dict[str, Any]:
        if broken["yes"] and report.result == "boom":
            raise ValueError("cannot read this one")
        return {"seconds": 0}

    trigger_consumer_ = consumer(bot_app, "c1", registry_of(touch_on_sum(fragile)))
    add_report(client, "j1", result="boom")
    add_report(client, "j2")

    trigger_consumer_.run_once()

    dead = Outbox(client, bot_app.keys).dead()
    assert [(d["job_id"], d["group"], d["deliveries"]) for d in dead] == [
        ("j1", TRIGGER_GROUP, "1")
    ]
    assert (
        dead[0]["reason"] == "trigger t.touch: its function raised ValueError: cannot read this one"
    )
    assert job(client, "trg.t.touch.j2") and not job(client, "trg.t.touch.j1")
    assert group_stats(bot_app)["owed"] == 0
    assert trigger_consumer_.counters["rejected"] == 1

    broken["yes"] = False  # the function is fixed; the operator replays the dead report
    assert Outbox(client, bot_app.keys).replay(dead[0]["id"]) is not None
    trigger_consumer_.run_once()

    assert job(client, "trg.t.touch.j1")["state"] == "queued"
    assert client.llen(QUEUE) == 2


def test_payloads_the_target_refuses_are_dead_lettered_naming_each_trigger(
    bot_app: BotApp, client: redis.Redis
) -> None:
    registry = registry_of(
        touch_on_sum(lambda report: {"seconds": -1}, name="t.negative"),
        touch_on_sum(lambda report: 5, name="t.number"),
        touch_on_sum(lambda report: None, name="t.never"),
        touch_on_sum(name="t.good"),
    )
    trigger_consumer_ = consumer(bot_app, "c1", registry)
    add_report(client, "j1")

    trigger_consumer_.run_once()

    [dead] = Outbox(client, bot_app.keys).dead()
    reason = dead["reason"]
    assert "trigger t.negative: op 'touch' refused its payload: invalid payload for op" in reason
    assert "seconds" in reason
    assert "trigger t.number: its function returned int, not a payload" in reason
    assert [k for k in client.scan_iter("bot:job:*")] == ["bot:job:trg.t.good.j1"]
    assert trigger_consumer_.sink.counters == {  # type: ignore[attr-defined]
        "fired": 1,
        "already_fired": 0,
        "not_fired": 1,
        "trigger_errors": 2,
    }


def test_a_broker_error_is_retried_and_the_target_still_starts_once(
    bot_app: BotApp, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    send_task = bot_app.send_task
    failures = {"left": 2}

    def flaky_send(*args: Any, **kwargs: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("broker away")
        return send_task(*args, **kwargs)

    monkeypatch.setattr(bot_app, "send_task", flaky_send)
    trigger_consumer_ = consumer(bot_app, "c1", registry_of(touch_on_sum()))
    add_report(client, "j1")

    trigger_consumer_.run_once()
    assert group_stats(bot_app)["pending"] == 1 and not job(client, "trg.t.touch.j1")
    for _ in range(100):
        if not group_stats(bot_app)["pending"]:
            break
        trigger_consumer_.run_once()

    assert trigger_consumer_.counters["failed"] == 2
    assert job(client, "trg.t.touch.j1")["state"] == "queued" and client.llen(QUEUE) == 1
    assert Outbox(client, bot_app.keys).dead() == []


def test_a_pipeline_target_is_started_once_under_a_run_id_of_at_most_180_characters(
    bot_app: BotApp, client: redis.Redis
) -> None:
    trigger = Trigger(
        "t.squares",
        ("succeeded", "failed"),
        SUM,
        Target("pipeline", "difference_of_squares"),
        None,
        {"a": 3, "b": 2},
    )
    trigger_consumer_ = consumer(bot_app, "c1", registry_of(trigger))
    long_job_id = "j" * 190
    add_report(client, long_job_id, status="failed")
    add_report(client, long_job_id, status="failed")

    trigger_consumer_.run_once()

    run_id = trigger_job_id("t.squares", long_job_id, 180)
    assert len(run_id) <= 180
    assert client.hget(f"bot:pipeline:{run_id}", "state") == "queued"
    assert queued_ids(client) == [run_id, run_id]  # one run, its start sent again (queued)


def test_the_group_holds_trimming_until_it_has_read_and_shows_in_bot_outbox(
    bot_app: BotApp, client: redis.Redis, env: dict[str, str]
) -> None:
    trigger_consumer_ = consumer(bot_app, "c1", registry_of(touch_on_sum()))
    for n in range(3):
        add_report(client, f"j{n}", op="subtract")
    box = Outbox(client, bot_app.keys)

    trimmed_unread = box.trim(max_age_s=0, max_len=0)
    shown = run_bot(env, "outbox")
    trigger_consumer_.run_once()
    trimmed_read = box.trim(max_age_s=0, max_len=0)

    assert trimmed_unread == 0
    assert shown.returncode == 0, shown.stderr
    [line] = [line for line in shown.stdout.splitlines() if line.startswith(TRIGGER_GROUP)]
    # consumers (none read one yet), owed, pending, unread
    assert line.split()[1:5] == ["0", "3", "0", "3"]
    assert trimmed_read == 3 and client.xlen(OUTBOX) == 0


def test_an_entry_that_is_not_a_report_is_dead_lettered_and_the_next_report_fires(
    bot_app: BotApp, client: redis.Redis
) -> None:
    trigger_consumer_ = consumer(bot_app, "c1", registry_of(touch_on_sum()))
    client.xadd(OUTBOX, {"job_id": "forged", "report": '{"job_id": "forged", "op": 1}'})
    add_report(client, "j1")

    trigger_consumer_.run_once()

    [dead] = Outbox(client, bot_app.keys).dead()
    assert (dead["job_id"], dead["group"]) == ("forged", TRIGGER_GROUP)
    assert dead["reason"].startswith("not a report: ")
    assert job(client, "trg.t.touch.j1") and group_stats(bot_app)["owed"] == 0
