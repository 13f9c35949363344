"""Celery's result meta written by the acquire and complete scripts (bot/jobs/celery_meta.py),
against a real redis-server: SET with its TTL, PUBLISHed on a final outcome (what wakes
`AsyncResult.get()`), and never by an attempt that lost its fence."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from bot.jobs.store import Acquired, JobStore, Outcome, ResultMeta
from tests.integration.test_leases import KEYS, alive, delivery

pytestmark = pytest.mark.integration

META_KEY = "celery-task-meta-job-1"


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, KEYS)


def meta(status: str, ttl_s: int = 600) -> ResultMeta:
    return ResultMeta(META_KEY, json.dumps({"status": status, "task_id": "job-1"}), ttl_s)


def outcome(state: str = "succeeded") -> Outcome:
    report = "" if state == "retrying" else json.dumps({"job_id": "job-1", "status": state})
    return Outcome(state, {"result": 3}, report, "touch", 0.01)


def take(store: JobStore, owner: str = "A", result_meta: ResultMeta | None = None) -> Acquired:
    verdict = store.acquire(delivery(), owner, 1, result_meta=result_meta)
    assert isinstance(verdict, Acquired), verdict
    return verdict


def published(pubsub: Any) -> list[dict[str, Any]]:
    """The messages the subscription got (waiting briefly for them to arrive)."""
    out, deadline = [], time.monotonic() + 1.0
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            out.append(json.loads(message["data"]))
    return out


def test_acquire_writes_started_with_its_ttl(store: JobStore, client: redis.Redis) -> None:
    alive(client, "A")
    take(store, result_meta=meta("STARTED", ttl_s=120))
    assert json.loads(client.get(META_KEY))["status"] == "STARTED"
    assert 0 < client.ttl(META_KEY) <= 120


def test_acquire_without_meta_leaves_the_result_to_celery(
    store: JobStore, client: redis.Redis
) -> None:
    alive(client, "A")
    take(store)
    assert client.get(META_KEY) is None


def test_a_final_outcome_writes_and_publishes_the_meta(
    store: JobStore, client: redis.Redis
) -> None:
    alive(client, "A")
    got = take(store, result_meta=meta("STARTED"))
    pubsub = client.pubsub()
    pubsub.subscribe(META_KEY)

    entry = store.complete("job-1", "A", got.fence, outcome(), 60, meta("SUCCESS", ttl_s=90))

    assert entry
    assert json.loads(client.get(META_KEY))["status"] == "SUCCESS"
    assert 0 < client.ttl(META_KEY) <= 90
    assert [m["status"] for m in published(pubsub)] == ["SUCCESS"]
    pubsub.close()


def test_a_meta_without_ttl_does_not_expire(store: JobStore, client: redis.Redis) -> None:
    alive(client, "A")
    got = take(store, result_meta=meta("STARTED", ttl_s=0))
    assert client.ttl(META_KEY) == -1
    store.complete("job-1", "A", got.fence, outcome(), 60, meta("SUCCESS", ttl_s=0))
    assert client.ttl(META_KEY) == -1


def test_an_attempt_that_lost_its_fence_writes_no_meta(
    store: JobStore, client: redis.Redis
) -> None:
    # Given A's attempt was taken over by B (A's lease gone), which runs the job
    alive(client, "A")
    first = take(store, "A", meta("STARTED"))
    client.delete(KEYS.lease("A"))
    alive(client, "B")
    take(store, "B", meta("STARTED"))
    pubsub = client.pubsub()
    pubsub.subscribe(META_KEY)

    # When A's late outcome arrives, Then it is refused and B's STARTED stays
    assert store.complete("job-1", "A", first.fence, outcome(), 60, meta("SUCCESS")) is None
    assert json.loads(client.get(META_KEY))["status"] == "STARTED"
    assert published(pubsub) == []
    pubsub.close()


def test_a_repeat_after_a_lost_reply_publishes_once(store: JobStore, client: redis.Redis) -> None:
    alive(client, "A")
    got = take(store, result_meta=meta("STARTED"))
    pubsub = client.pubsub()
    pubsub.subscribe(META_KEY)

    first = store.complete("job-1", "A", got.fence, outcome(), 60, meta("SUCCESS"))
    again = store.complete("job-1", "A", got.fence, outcome(), 60, meta("SUCCESS"))

    assert first == again
    assert len(published(pubsub)) == 1
    pubsub.close()
