"""The fenced acquire / complete / reap scripts against a real redis-server.

Covers: a stale owner cannot complete (lease_lost); a duplicate of an ended job is skipped and
the caller reads the recorded outcome; a job running under a live owner is `busy`; recovery is
counted once per lost attempt on both paths (reaper, lost pool child) and past
BOT_MAX_RECOVERIES the next acquire ends the job `dead` with one report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from bot.application import BotApp, create_app
from bot.client import status_from_record
from bot.jobs import Acquired, Delivery, JobStore, Outcome, Skipped
from bot.keys import Keys
from bot.reaper import REAPER_COUNTER, reap_job
from bot.runtime import RUNTIME
from bot.worker_lost import hand_back

pytestmark = pytest.mark.integration

KEYS = Keys("bot")
DEAD_PID = 2**22 + 12345  # above pid_max on this host: never a live process


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, KEYS)


def delivery(job_id: str = "job-1", tag: str = "tag-1") -> Delivery:
    message = {"task": "ops.touch", "args": [], "kwargs": {"seconds": 0}, "queue": "celery"}
    return Delivery(job_id, "touch", "celery", tag, message, enqueued_at_ms=1)


def alive(client: redis.Redis, owner: str) -> None:
    client.set(KEYS.lease(owner), "1", px=60_000)


def acquire(store: JobStore, owner: str, pid: int = 1, job_id: str = "job-1") -> Acquired:
    verdict = store.acquire(delivery(job_id), owner, pid)
    assert isinstance(verdict, Acquired), verdict
    return verdict


def complete(store: JobStore, owner: str, fence: int, state: str = "succeeded") -> str | None:
    report = json.dumps({"job_id": "job-1", "status": state})
    outcome = Outcome(state, {"result": 42}, report, "touch", 0.01)
    return store.complete("job-1", owner, fence, outcome, 60)


def outbox_job_ids(client: redis.Redis) -> list[str]:
    return [fields["job_id"] for _, fields in client.xrange(KEYS.outbox)]


def test_acquire_records_owner_fence_tag_and_message(store: JobStore, client: redis.Redis):
    alive(client, "A")
    got = acquire(store, "A", pid=77)
    assert (got.fence, got.attempts, got.recoveries) == (1, 1, 0)
    record = client.hgetall(KEYS.job("job-1"))
    assert record["state"] == "running" and record["owner"] == "A" and record["pid"] == "77"
    assert record["delivery_tag"] == "tag-1"
    assert json.loads(record["message"])["task"] == "ops.touch"
    assert client.smembers(KEYS.inflight("A")) == {"job-1"}
    assert client.ttl(KEYS.job("job-1")) == -1  # no expiry while it runs


def test_stale_owner_cannot_complete_after_the_reaper_recovered_its_job(
    store: JobStore, client: redis.Redis
):
    # Given A runs the job, then A's lease is gone and the reaper recovers the job
    alive(client, "A")
    first = acquire(store, "A")
    client.delete(KEYS.lease("A"))
    assert reap_job(client, KEYS, "job-1", "A", REAPER_COUNTER) is not None
    # and B takes it
    alive(client, "B")
    second = acquire(store, "B")
    assert (second.fence, second.recoveries) == (first.fence + 1, 1)
    # When A wakes up and tries to complete
    # Then its outcome is discarded and counted as lease_lost
    assert complete(store, "A", first.fence) is None
    assert client.hget(KEYS.stats, "lease_lost") == "1"
    assert client.hget(KEYS.job("job-1"), "state") == "running"
    # and B's outcome is the one report
    assert complete(store, "B", second.fence)
    assert outbox_job_ids(client) == ["job-1"]


def test_stale_owner_cannot_complete_after_a_takeover(store: JobStore, client: redis.Redis):
    # Given A acquired the job but its lease is gone (never renewed)
    first = acquire(store, "A")
    # When B receives a copy, takes it over (one recovery), and A tries to complete
    alive(client, "B")
    second = acquire(store, "B")
    assert second.recoveries == 1
    assert complete(store, "A", first.fence) is None
    # Then only B can end it
    assert complete(store, "B", second.fence)
    assert outbox_job_ids(client) == ["job-1"]


def test_acquire_repeated_by_the_same_attempt_after_a_lost_reply_is_acquired(
    store: JobStore, client: redis.Redis
):
    # Given an acquire that went through in Redis though its caller saw an error
    alive(client, "A")
    first = store.acquire(delivery(), "A", 11, claim="attempt-1")
    assert isinstance(first, Acquired)

    # When the same attempt calls again, it is acquired: same fence, nothing counted twice
    again = store.acquire(delivery(), "A", 11, claim="attempt-1")
    assert again == first
    assert store.read("job-1")["attempts"] == "1"
    # while another attempt of the same worker, or another worker, is told the job is busy
    other_attempt = store.acquire(delivery(), "A", 12, claim="attempt-2")
    other_worker = store.acquire(delivery(), "B", 13, claim="attempt-1")
    assert isinstance(other_attempt, Skipped) and other_attempt.reason == "busy"
    assert isinstance(other_worker, Skipped) and other_worker.reason == "busy"
    assert client.hget(KEYS.stats, "duplicates_skipped") == "2"


def test_complete_retried_after_a_lost_reply_records_once(store: JobStore, client: redis.Redis):
    # Given an attempt whose complete ran in Redis though its reply never reached the caller
    fence = acquire(store, "worker-a").fence
    entry = complete(store, "worker-a", fence)

    # When the caller records the same outcome again
    again = complete(store, "worker-a", fence)

    # Then it is told it succeeded, with the same outbox entry: one report, no lease_lost
    assert again == entry and entry
    assert outbox_job_ids(client) == ["job-1"]
    assert client.hget(KEYS.stats, "lease_lost") is None
    # and a different outcome under the same fence is still refused
    assert complete(store, "worker-a", fence, state="failed") is None
    assert client.hget(KEYS.stats, "lease_lost") == "1"


def test_duplicate_of_an_ended_job_is_skipped_and_the_outcome_readable(
    store: JobStore, client: redis.Redis
):
    # Given a job that succeeded
    alive(client, "A")
    got = acquire(store, "A")
    assert complete(store, "A", got.fence)
    # When a copy of its message is delivered again, anywhere
    alive(client, "B")
    verdict = store.acquire(delivery(), "B", 1)
    # Then it is skipped (not run) and counted, and the record still holds the outcome
    assert verdict == Skipped("duplicate", "succeeded")
    assert client.hget(KEYS.stats, "duplicates_skipped") == "1"
    status = status_from_record("job-1", client.hgetall(KEYS.job("job-1")))
    assert (status.state, status.result, status.attempts) == ("succeeded", 42, 1)
    assert outbox_job_ids(client) == ["job-1"]
    assert 0 < client.ttl(KEYS.job("job-1")) <= 60  # expires BOT_JOB_TTL after it ended


def test_copy_of_a_job_running_under_a_live_owner_is_busy(store: JobStore, client: redis.Redis):
    alive(client, "A")
    alive(client, "B")
    acquire(store, "A")
    verdict = store.acquire(delivery(), "B", 1)
    assert verdict == Skipped("busy", "A")
    record = client.hgetall(KEYS.job("job-1"))
    assert (record["owner"], record["attempts"], record["recoveries"]) == ("A", "1", "0")


def test_reaper_path_counts_one_recovery_per_lost_attempt(store: JobStore, client: redis.Redis):
    # Given a job whose owner dies three times in a row, recovered by the reaper each time
    for n in range(1, 4):
        owner = f"W{n}"
        got = acquire(store, owner)
        assert got.recoveries == n - 1
        requeued = reap_job(client, KEYS, "job-1", owner, REAPER_COUNTER)
        assert requeued is not None and requeued.recoveries == n
        assert requeued.delivery_tag == "tag-1"
    # Then the next acquire reports 3 recoveries, 4 attempts
    last = acquire(store, "W4")
    assert (last.recoveries, last.attempts) == (3, 4)
    assert client.hget(KEYS.stats, "reaper_recovered") == "3"


def test_reap_is_fenced(store: JobStore, client: redis.Redis, monkeypatch):
    # Given the caller read fence 1, but the job moved on to fence 2 under the same owner
    alive(client, "A")
    acquire(store, "A")
    client.hincrby(KEYS.job("job-1"), "fence", 1)
    real_hmget = client.hmget
    monkeypatch.setattr(client, "hmget", lambda key, *f: ["1", *real_hmget(key, *f)[1:]])
    # When the reap script runs, then it changes nothing
    assert reap_job(client, KEYS, "job-1", "A", REAPER_COUNTER) is None
    assert client.hget(KEYS.job("job-1"), "state") == "running"


def test_lost_pool_child_hands_the_job_back_so_another_worker_runs_it(
    store: JobStore, client: redis.Redis, app: BotApp, monkeypatch
):
    # Given worker A's child (pid 4242) runs the job under A's live lease
    monkeypatch.setattr(RUNTIME, "instance_id", "A")
    alive(client, "A")
    alive(client, "B")
    acquire(store, "A", pid=4242)
    # When A's main process sees that child lost (before Celery requeues the message)
    assert hand_back(app, "job-1", 4242) is True
    # Then the copy that reaches worker B runs (it is not skipped as busy)
    got = acquire(store, "B")
    assert (got.recoveries, got.attempts) == (1, 2)
    assert client.hget(KEYS.stats, "child_lost_recovered") == "1"
    assert not client.sismember(KEYS.inflight("A"), "job-1")


def test_lost_child_of_another_attempt_does_not_hand_back(
    store: JobStore, client: redis.Redis, app: BotApp, monkeypatch
):
    monkeypatch.setattr(RUNTIME, "instance_id", "A")
    alive(client, "A")
    acquire(store, "A", pid=4242)
    assert hand_back(app, "job-1", 999) is False  # another child: not this attempt
    assert hand_back(app, "job-1", None) is False  # never accepted by a child
    assert client.hget(KEYS.job("job-1"), "state") == "running"


def test_same_worker_takes_over_a_job_of_its_own_dead_child(store: JobStore, client: redis.Redis):
    alive(client, "A")
    acquire(store, "A", pid=DEAD_PID)
    got = acquire(store, "A", pid=1)
    assert (got.recoveries, got.attempts) == (1, 2)


@pytest.fixture
def app(make_settings: Callable[..., Any]) -> BotApp:
    return create_app(make_settings(max_recoveries=3), fleet=False)


@pytest.mark.parametrize("path", ["reaper", "lost_child"])
def test_past_max_recoveries_the_next_acquire_ends_the_job_dead(
    path: str, app: BotApp, client: redis.Redis, store: JobStore, monkeypatch
):
    # Given a job recovered BOT_MAX_RECOVERIES + 1 times, through either path
    monkeypatch.setattr(RUNTIME, "instance_id", "A")
    alive(client, "A")
    for _ in range(4):
        acquire(store, "A", pid=4242, job_id="poison")
        if path == "reaper":
            assert reap_job(client, KEYS, "poison", "A", REAPER_COUNTER)
        else:
            assert hand_back(app, "poison", 4242)
    # When its message is delivered again and the task runs (eagerly here)
    result = app.tasks["ops.touch"].apply(kwargs={"seconds": 0}, task_id="poison")
    # Then the op body does not run; the job ends dead with exactly one report, and the
    # acquire that ended it is not counted as an attempt (attempts <= BOT_MAX_RECOVERIES + 1)
    assert result.failed() and type(result.result).__name__ == "JobDead"
    record = client.hgetall(KEYS.job("poison"))
    assert (record["state"], record["recoveries"], record["attempts"]) == ("dead", "4", "4")
    assert not client.exists(KEYS.fault_touches("poison"))
    entries = client.xrange(KEYS.outbox)
    assert [f["job_id"] for _, f in entries] == ["poison"]
    assert json.loads(entries[0][1]["report"])["status"] == "dead"
