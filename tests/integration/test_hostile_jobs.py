"""Hostile input on the job path, against a real redis-server, without a worker process.

Covers: a job id is bound to the op and payload first submitted (a delivery reusing it never
runs); acquire itself enforces BOT_MAX_RECOVERIES (no path runs a job more than
BOT_MAX_RECOVERIES + 1 times); positional arguments bind in declared order; forged headers
and kwargs named `task` end with a record and a report; a result that cannot be reported still
ends the job with one (minimal) report; the main-process rejection of a malformed message
(bot/jobs/intake.py) records, reports, marks the result FAILURE, acks once, and leaves another
job's record alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from bot.application import BotApp
from bot.client import Client
from bot.errors import InvalidJobId
from bot.jobs.envelope import Malformed, payload_digest, raw_digest
from bot.jobs.intake import guarded, problem_of, reject_message, rejected_delivery
from bot.jobs.outcome import Attempt
from bot.jobs.store import REAPER_COUNTER, Acquired, Delivery, JobStore, Skipped, reap_job
from bot.runtime.process import RUNTIME
from bot.store.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys("bot")
MAX_RECOVERIES = 3


@pytest.fixture
def owner(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run as worker instance "A" with a live lease, as a pool child would."""
    monkeypatch.setattr(RUNTIME, "instance_id", "A")
    client.set(KEYS.lease("A"), "1", px=60_000)
    return "A"


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, KEYS)


def sum_delivery(job_id: str, kwargs: dict[str, Any], op: str = "sum") -> Delivery:
    message = {"task": f"ops.{op}", "args": [], "kwargs": kwargs, "queue": "celery"}
    return Delivery(job_id, op, "celery", "tag", message, digest=payload_digest([], kwargs))


def reports(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(f["report"]) for _, f in client.xrange(KEYS.outbox)]


# -- a job id is bound to what was submitted ---------------------------------------------------


def test_a_reused_id_with_another_payload_never_runs(
    bot_app: BotApp, client: redis.Redis, owner: str
) -> None:
    # Given a job submitted under the caller's id, still queued
    Client(bot_app).submit("sum", {"a": 1, "b": 2}, job_id="order-7")
    # When someone sends a message with that id and another payload
    forged = bot_app.tasks["ops.sum"].apply(kwargs={"a": 600, "b": 66}, task_id="order-7")
    # Then it does not run: the record is untouched and no report exists
    assert forged.state == "IGNORED"
    record = client.hgetall(KEYS.job("order-7"))
    assert (record["state"], record.get("attempts")) == ("queued", None)
    assert client.xlen(KEYS.outbox) == 0
    assert client.hget(KEYS.stats, "id_reused") == "1"
    # and the submitted payload still runs under its id
    real = bot_app.tasks["ops.sum"].apply(kwargs={"a": 1, "b": 2}, task_id="order-7")
    assert real.get() == 3
    assert [r["result"] for r in reports(client)] == [3]


def test_the_first_delivery_binds_an_id_sent_without_a_record(
    store: JobStore, client: redis.Redis
) -> None:
    # Given a job sent with plain send_task (no record) and acquired once
    client.set(KEYS.lease("A"), "1", px=60_000)
    first = store.acquire(sum_delivery("job-9", {"a": 1, "b": 2}), "A", 1)
    assert isinstance(first, Acquired)
    reap_job(client, KEYS, "job-9", "A", REAPER_COUNTER)  # handed back: queued again
    # When a delivery with another payload, or another op, comes for the same id
    other_payload = store.acquire(sum_delivery("job-9", {"a": 9, "b": 9}), "B", 1)
    other_op = store.acquire(sum_delivery("job-9", {"a": 1, "b": 2}, op="subtract"), "B", 1)
    # Then both are refused as reuses; the faithful copy runs
    assert isinstance(other_payload, Skipped) and other_payload.reason == "reused"
    assert isinstance(other_op, Skipped) and other_op.reason == "reused"
    again = store.acquire(sum_delivery("job-9", {"b": 2, "a": 1}), "B", 1)
    assert isinstance(again, Acquired) and again.recoveries == 1


def test_a_callers_job_id_of_the_wrong_form_is_refused_before_anything_is_stored(
    bot_app: BotApp, client: redis.Redis
) -> None:
    for bad in ("a\r\nb", "caf\u00e9", "x" * 201, ""):
        with pytest.raises(InvalidJobId) as raised:
            Client(bot_app).submit("sum", {"a": 1, "b": 2}, job_id=bad)
        assert raised.value.errors[0]["loc"] == ["job_id"]
    assert client.dbsize() == 0


# -- the recovery bound is acquire's -----------------------------------------------------------


def test_past_the_bound_acquire_takes_the_job_exhausted_and_counts_no_attempt(
    store: JobStore, client: redis.Redis
) -> None:
    client.set(KEYS.lease("A"), "1", px=60_000)
    delivery = sum_delivery("poison", {"a": 1, "b": 2})
    # Given a job taken and handed back BOT_MAX_RECOVERIES + 1 times (any path hands back so)
    for _ in range(MAX_RECOVERIES + 1):
        verdict = store.acquire(delivery, "A", 1, max_recoveries=MAX_RECOVERIES)
        assert isinstance(verdict, Acquired) and not verdict.exhausted
        assert reap_job(client, KEYS, "poison", "A", REAPER_COUNTER) is not None
    # When it is delivered again, even repeatedly by the same attempt after a lost reply
    last = store.acquire(delivery, "A", 1, "claim-1", max_recoveries=MAX_RECOVERIES)
    repeat = store.acquire(delivery, "A", 1, "claim-1", max_recoveries=MAX_RECOVERIES)
    # Then it is taken only to be ended: exhausted, not counted as an attempt
    assert isinstance(last, Acquired) and last.exhausted
    assert isinstance(repeat, Acquired) and repeat.exhausted
    assert last.attempts == MAX_RECOVERIES + 1
    assert client.hget(KEYS.job("poison"), "attempts") == str(MAX_RECOVERIES + 1)


def test_an_exhausted_job_ends_dead_without_running_its_op(
    bot_app: BotApp, client: redis.Redis, owner: str
) -> None:
    for _ in range(MAX_RECOVERIES + 1):
        bot_app.job_store().acquire(
            sum_delivery("poison", {"a": 1, "b": 2}), owner, 1, max_recoveries=MAX_RECOVERIES
        )
        reap_job(client, KEYS, "poison", owner, REAPER_COUNTER)

    result = bot_app.tasks["ops.sum"].apply(kwargs={"a": 1, "b": 2}, task_id="poison")

    assert type(result.result).__name__ == "JobDead"
    (report,) = reports(client)
    assert (report["status"], report["attempts"]) == ("dead", MAX_RECOVERIES + 1)


# -- arguments and headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "outcome"),
    [
        ([4, 5], {}, ("succeeded", 9)),
        ([4], {"b": 6}, ("succeeded", 10)),
        ([1, 2, 3], {}, ("rejected", ["args"])),
        ([1], {"a": 1, "b": 2}, ("rejected", ["a"])),
        ([], {"a": 1, "b": 2, "task": 3}, ("rejected", ["task"])),
    ],
)
def test_positional_arguments_bind_in_declared_order(
    args: list[Any],
    kwargs: dict[str, Any],
    outcome: tuple[str, Any],
    bot_app: BotApp,
    client: redis.Redis,
    owner: str,
) -> None:
    bot_app.tasks["ops.sum"].apply(args=args, kwargs=kwargs, task_id="pos-1")

    (report,) = reports(client)
    status, detail = outcome
    assert report["status"] == status
    if status == "succeeded":
        assert report["result"] == detail
    else:
        assert report["error"]["details"][0]["loc"] == detail
        assert report["attempts"] == 1


@pytest.mark.parametrize("enqueued_at", ["1e20", "soon", "-5", ""])
def test_a_forged_enqueued_at_header_never_stops_a_job(
    enqueued_at: str, bot_app: BotApp, client: redis.Redis, owner: str
) -> None:
    result = bot_app.tasks["ops.sum"].apply(
        kwargs={"a": 1, "b": 2}, task_id="hdr-1", headers={"bot_enqueued_at": enqueued_at}
    )

    assert result.get() == 3
    (report,) = reports(client)
    assert (report["status"], report["enqueued_at"]) == ("succeeded", None)


def test_a_result_no_report_can_hold_still_ends_the_job_with_one_report(
    bot_app: BotApp, client: redis.Redis, owner: str
) -> None:
    # Given an attempt whose outcome cannot be serialised (a circular structure)
    delivery = sum_delivery("odd-1", {"a": 1, "b": 2})
    acquired = bot_app.job_store().acquire(delivery, owner, 1)
    assert isinstance(acquired, Acquired)
    circular: list[Any] = []
    circular.append(circular)
    # When it finishes
    assert Attempt(bot_app, delivery, acquired, owner).finish("succeeded", result=circular)
    # Then the job ended with exactly one, minimal, report saying why
    (report,) = reports(client)
    assert report["status"] == "succeeded"
    assert report["error"]["type"] == "ReportNotBuilt"
    assert client.hget(KEYS.job("odd-1"), "state") == "succeeded"


# -- the main-process rejection of a malformed message -------------------------------------------


@dataclass
class RawMessage:
    """What the intake reads of a kombu message."""

    headers: dict[str, Any]
    body: bytes
    content_type: str = "application/json"
    delivery_info: dict[str, Any] = field(default_factory=lambda: {"routing_key": "celery"})
    delivery_tag: str = "tag-9"

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass
class Consumer:
    event_dispatcher: Any = None
    connection_errors: tuple[type[BaseException], ...] = ()


class Acks:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_: Any) -> None:
        self.count += 1


def test_a_malformed_message_is_rejected_with_record_report_and_result_then_acked(
    bot_app: BotApp, client: redis.Redis, owner: str
) -> None:
    message = RawMessage({"id": "mal-1", "task": "ops.sum"}, b"[[], [], {}]")
    problem = Malformed("message kwargs must be an object", [{"loc": ["kwargs"]}])
    ack = Acks()

    reject_message(bot_app, Consumer(), message, "sum", problem, ack)
    reject_message(bot_app, Consumer(), message, "sum", problem, ack)  # redelivered

    assert ack.count == 2
    record = client.hgetall(KEYS.job("mal-1"))
    assert (record["state"], record["attempts"]) == ("rejected", "1")
    assert "message" not in record  # nothing of the body is kept (nor the finished job's {})
    assert record["digest"] == raw_digest(message.body)
    (report,) = reports(client)
    assert report["error"]["type"] == "Malformed"
    assert report["error"]["details"] == [{"loc": ["kwargs"]}]
    assert bot_app.AsyncResult("mal-1").state == "FAILURE"


def test_a_malformed_message_reusing_a_queued_jobs_id_leaves_that_job_alone(
    bot_app: BotApp, client: redis.Redis, owner: str
) -> None:
    Client(bot_app).submit("sum", {"a": 1, "b": 2}, job_id="order-8")
    message = RawMessage({"id": "order-8", "task": "ops.sum"}, b"null")

    reject_message(bot_app, Consumer(), message, "sum", Malformed("bad"), Acks())

    assert client.hget(KEYS.job("order-8"), "state") == "queued"
    assert client.xlen(KEYS.outbox) == 0


def test_a_message_with_an_unusable_id_gets_a_stand_in_and_keeps_nothing_of_its_body(
    bot_app: BotApp, client: redis.Redis, owner: str
) -> None:
    message = RawMessage({"id": "a\r\nb", "task": "ops.sum"}, b"x" * 100_000)

    delivery = rejected_delivery(bot_app, message, "sum")
    reject_message(bot_app, Consumer(), message, "sum", Malformed("bad id"), Acks())

    assert delivery.job_id.startswith("malformed-") and delivery.message == {}
    (report,) = reports(client)
    assert report["job_id"] == delivery.job_id
    assert (client.memory_usage(KEYS.job(delivery.job_id)) or 0) < 4096


def test_redis_down_during_a_rejection_propagates_and_nothing_is_acked(
    bot_app: BotApp, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The consumer then reconnects and the message, unacked, is read again: nothing is lost
    def down(*_: Any, **__: Any) -> None:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(JobStore, "acquire", down)
    ack = Acks()
    with pytest.raises(redis.ConnectionError):
        message = RawMessage({"id": "j", "task": "ops.sum"}, b"1")
        reject_message(bot_app, Consumer(), message, "sum", Malformed("bad"), ack)
    assert ack.count == 0


@pytest.mark.parametrize(
    ("headers", "body", "problem"),
    [
        ({"id": "j-1"}, b"[[], {}, {}]", None),
        ({"id": "a b"}, b"[[], {}, {}]", "job id must match"),
        ({}, b"[[], {}, {}]", "job id is missing"),
        ({"id": "j-1"}, b"null", "3-item array"),
        ({"id": "j-1"}, b"{not json", "not valid JSON"),
        ({"id": "j-1"}, b"[" * 100 + b"]" * 100, "deeper than"),
        ({"id": "j-1", "timelimit": "x"}, b"[[], {}, {}]", "timelimit"),
    ],
)
def test_problem_of_says_what_is_wrong_before_celery_unpacks_anything(
    headers: dict[str, Any], body: bytes, problem: str | None
) -> None:
    found = problem_of(RawMessage({"task": "ops.sum", **headers}, body), None, 1024)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in str(found)


def test_a_protocol_1_message_is_refused() -> None:
    decoded_by_celery = {"task": "ops.sum", "id": "j-1", "args": [], "kwargs": {}}
    found = problem_of(RawMessage({"id": "j-1"}, b"{}"), decoded_by_celery, 1024)
    assert found is not None and "protocol 1" in str(found)


class InnerStrategy:
    """Stands in for Celery's default strategy: records what it was given, or raises."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.raises = raises
        self.taken: list[Any] = []

    def __call__(self, message: Any, *_: Any, **__: Any) -> None:
        if self.raises is not None:
            raise self.raises
        self.taken.append(message)


def guarded_handler(bot_app: BotApp, monkeypatch: pytest.MonkeyPatch, inner: InnerStrategy) -> Any:
    monkeypatch.setattr("bot.jobs.intake.default_strategy", lambda *_, **__: inner)
    consumer = Consumer(connection_errors=(redis.ConnectionError,))
    return lambda message, ack: guarded(bot_app.tasks["ops.sum"], bot_app, consumer)(
        message, None, ack, None, None
    )


def test_the_guarded_strategy_hands_a_sound_message_to_celery(
    bot_app: BotApp, client: redis.Redis, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = InnerStrategy()
    message = RawMessage({"id": "ok-1", "task": "ops.sum"}, b'[[], {"a": 1, "b": 2}, {}]')

    guarded_handler(bot_app, monkeypatch, inner)(message, Acks())

    assert inner.taken == [message]
    assert client.xlen(KEYS.outbox) == 0


def test_the_guarded_strategy_rejects_a_malformed_message_before_celery_sees_it(
    bot_app: BotApp, client: redis.Redis, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner, ack = InnerStrategy(), Acks()

    guarded_handler(bot_app, monkeypatch, inner)(
        RawMessage({"id": "bad-2", "task": "ops.sum"}, b"null"), ack
    )

    assert inner.taken == [] and ack.count == 1
    (report,) = reports(client)
    assert (report["job_id"], report["status"]) == ("bad-2", "rejected")


def test_what_celery_cannot_take_is_rejected_and_a_connection_error_propagates(
    bot_app: BotApp, client: redis.Redis, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sound = b'[[], {"a": 1, "b": 2}, {}]'
    ack = Acks()
    guarded_handler(bot_app, monkeypatch, InnerStrategy(TypeError("not iterable")))(
        RawMessage({"id": "odd-2", "task": "ops.sum"}, sound), ack
    )
    (report,) = reports(client)
    assert report["job_id"] == "odd-2" and "TypeError" in report["error"]["message"]
    assert ack.count == 1

    with pytest.raises(redis.ConnectionError):
        guarded_handler(bot_app, monkeypatch, InnerStrategy(redis.ConnectionError("gone")))(
            RawMessage({"id": "odd-3", "task": "ops.sum"}, sound), ack
        )
    assert ack.count == 1


@pytest.mark.parametrize("task", ["pipelines.difference_of_squares", "bot.pipeline.finish"])
def test_a_malformed_message_for_a_pipeline_task_is_dropped_failed_and_acked(
    bot_app: BotApp, client: redis.Redis, monkeypatch: pytest.MonkeyPatch, task: str
) -> None:
    inner, ack = InnerStrategy(), Acks()
    monkeypatch.setattr("bot.jobs.intake.default_strategy", lambda *_, **__: inner)
    consumer = Consumer(connection_errors=(redis.ConnectionError,))

    guarded(bot_app.tasks[task], bot_app, consumer)(
        RawMessage({"id": "bad-run-1", "task": task}, b"[[], 7, {}]"), None, ack, None, None
    )

    # no job or run record to end: Celery's result says FAILURE, nothing reached Celery
    assert inner.taken == [] and ack.count == 1
    assert bot_app.AsyncResult("bad-run-1").state == "FAILURE"
    assert client.xlen(KEYS.outbox) == 0
    assert not client.exists(KEYS.job("bad-run-1"), "bot:pipeline:bad-run-1")
