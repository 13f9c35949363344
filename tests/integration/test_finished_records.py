"""What a finished job's record keeps (bot/jobs/record.py), against a real redis-server.

At its end (complete.lua with a final state) the record drops the fields only a queued or
running job needs (`RUNNING_ONLY_FIELDS`: the message, the claim, the delivery tag, the pid...)
in the same step, and is stored compactly; every reader of a finished job still gets what it
got before: `bot status`, a second delivery (acked without running), a repeat of the complete
after a lost reply, a resubmission of the same id. A job that is not finished (retrying,
handed back) keeps everything: the reaper publishes it again from its message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from bot.application import BotApp, create_app
from bot.client import status_from_record
from bot.flows.submit import as_sent, still_queued, submit_op
from bot.jobs.envelope import payload_digest
from bot.jobs.record import RUNNING_ONLY_FIELDS
from bot.jobs.store import Acquired, Delivery, JobStore, Outcome, Skipped
from bot.recovery.reaper import REAPER_COUNTER, reap_job
from tests.integration.test_leases import KEYS, alive, delivery

pytestmark = pytest.mark.integration

#: Every field of a finished record of a job that ran, was handed back once, ran again and
#: reported progress: what its readers need, and nothing else.
FINISHED_FIELDS = {
    "job_id",
    "state",
    "op",
    "queue",
    "digest",
    "owner",
    "fence",
    "attempts",
    "recoveries",
    "outcome",
    "progress",
    "report_id",
    "enqueued_at",
    "started_at",
    "updated_at",
    "finished_at",
}
JOB_TTL_S = 600
SUM = {"a": 2, "b": 3}


def touch_job() -> Delivery:
    """job-1's delivery (test_leases.delivery), bound to its payload by a digest."""
    return replace(delivery(), digest=payload_digest([], {"seconds": 0}))


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, KEYS)


@pytest.fixture
def app(make_settings: Callable[..., Any]) -> Iterator[BotApp]:
    app = create_app(make_settings(), fleet=False)
    yield app
    app.close()


def take(store: JobStore, owner: str, claim: str = "", job: Delivery | None = None) -> Acquired:
    verdict = store.acquire(job or touch_job(), owner, 4242, claim)
    assert isinstance(verdict, Acquired), verdict
    return verdict


def end(store: JobStore, owner: str, fence: int, state: str, job_id: str = "job-1") -> str | None:
    report = "" if state == "retrying" else json.dumps({"job_id": job_id, "status": state})
    detail = {"result": 5} if state == "succeeded" else {"error": {"type": "E", "message": "m"}}
    return store.complete(job_id, owner, fence, Outcome(state, detail, report, "touch", 0.01), 600)


def ran_twice(store: JobStore, client: redis.Redis) -> Acquired:
    """job-1 taken by A (with a claim), handed back by the reaper, taken by B with progress."""
    alive(client, "B")
    take(store, "A", claim="attempt-a")
    assert reap_job(client, KEYS, "job-1", "A", REAPER_COUNTER) is not None
    second = take(store, "B", claim="attempt-b")
    store.set_progress("job-1", {"current": 2, "total": 2, "note": None})
    running = client.hgetall(KEYS.job("job-1"))
    assert set(RUNNING_ONLY_FIELDS) <= set(running)  # every one of them is really written
    return second


@pytest.mark.parametrize("state", ["succeeded", "failed", "rejected", "dead"])
def test_a_finished_record_keeps_only_what_its_readers_need(
    state: str, store: JobStore, client: redis.Redis
) -> None:
    # Given a job that ran, was handed back, and ran again
    second = ran_twice(store, client)
    before = status_from_record("job-1", client.hgetall(KEYS.job("job-1")))

    # When it ends
    entry = end(store, "B", second.fence, state)

    # Then its record holds the fields its readers need and no running-only one, compactly
    key = KEYS.job("job-1")
    record = client.hgetall(key)
    assert set(record) == FINISHED_FIELDS
    assert client.object("encoding", key) == "listpack"
    assert 0 < client.ttl(key) <= JOB_TTL_S
    # `bot status` reads what it read before, plus the end
    status = status_from_record("job-1", record)
    assert (status.state, status.owner, status.attempts, status.recoveries) == (state, "B", 2, 1)
    assert status.progress == before.progress == {"current": 2, "total": 2, "note": None}
    assert (status.enqueued_at, status.started_at) == (before.enqueued_at, before.started_at)
    assert status.finished_at is not None
    assert status.result == (5 if state == "succeeded" else None)
    # a repeat of the complete after a lost reply finds the same end (one report)
    assert end(store, "B", second.fence, state) == entry
    # and a second delivery, to any worker, is acked without running
    assert store.acquire(touch_job(), "C", 1) == Skipped("duplicate", state)
    assert store.acquire(touch_job(), "B", 1) == Skipped("duplicate", state)
    reused = replace(touch_job(), digest=payload_digest([], {"seconds": 1}))
    assert store.acquire(reused, "C", 1).reason == "reused"  # type: ignore[union-attr]
    assert client.hget(key, "attempts") == "2"
    assert [f["job_id"] for _, f in client.xrange(KEYS.outbox)] == ["job-1"]


def test_a_retrying_job_keeps_what_a_running_one_needs(
    store: JobStore, client: redis.Redis
) -> None:
    alive(client, "A")
    got = take(store, "A", claim="attempt-a")

    assert end(store, "A", got.fence, "retrying") == ""

    record = client.hgetall(KEYS.job("job-1"))
    assert record["state"] == "retrying"
    assert json.loads(record["message"])["task"] == "ops.touch"
    assert (record["delivery_tag"], record["pid"]) == ("tag-1", "4242")
    assert (record["claim"], record["exhausted"]) == ("attempt-a", "0")
    assert client.ttl(KEYS.job("job-1")) == -1


def test_a_job_handed_back_keeps_its_message_to_be_published_again(
    store: JobStore, client: redis.Redis
) -> None:
    # Given a running job whose owner is lost
    take(store, "A")
    # When the reaper hands it back, Then the message to publish it again is there
    requeued = reap_job(client, KEYS, "job-1", "A", REAPER_COUNTER)
    assert requeued is not None and requeued.delivery_tag == "tag-1"
    assert json.loads(requeued.message) == delivery().message
    assert client.hget(KEYS.job("job-1"), "message") == requeued.message


def test_a_resubmission_of_a_finished_id_is_not_enqueued_again(
    app: BotApp, store: JobStore, client: redis.Redis
) -> None:
    # Given a caller's id, submitted, run and finished
    assert submit_op(app, "sum", SUM, job_id="order-7").enqueued
    client.delete("celery")  # the worker took the message
    digest = payload_digest([], as_sent(SUM))
    copy = Delivery("order-7", "sum", "celery", "t7", {"task": "ops.sum"}, None, digest)
    alive(client, "A")
    got = take(store, "A", job=copy)
    assert end(store, "A", got.fence, "succeeded", job_id="order-7")
    assert "message" not in client.hgetall(KEYS.job("order-7"))

    # When the caller submits it again (as a trigger would: resend what is still queued), with
    # the same payload or another
    again = submit_op(app, "sum", SUM, job_id="order-7", resend_queued=True)
    other = submit_op(app, "sum", {"a": 9, "b": 9}, job_id="order-7")

    # Then nothing is enqueued: the finished record still says the id ran, and for what
    assert (again.enqueued, again.resent, other.enqueued) == (False, False, False)
    assert client.llen("celery") == 0
    assert not still_queued(app, KEYS.job("order-7"), digest)
    assert store.acquire(copy, "B", 1) == Skipped("duplicate", "succeeded")
