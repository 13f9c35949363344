"""The fenced acquire / complete / reap scripts against a real redis-server.

Covers: a stale owner cannot complete (lease_lost), whether another worker or the same one
took the job over (the fence, not the owner, tells two attempts of one worker apart); a
duplicate of an ended job is skipped and the caller reads the recorded outcome; a job running
under a live owner is `busy`; recovery is counted once per lost attempt on both paths (reaper,
lost pool child) and past BOT_MAX_RECOVERIES the next acquire ends the job `dead` with one
report.

"A running process" is this test process (`os.getpid()`) and "a dead one" a child it started
and reaped: no verdict depends on which pids happen to exist on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis

from bot.application import BotApp, create_app
from bot.client import status_from_record
from bot.jobs.child_lost import hand_back
from bot.jobs.store import Acquired, Delivery, JobStore, Outcome, Skipped, process_alive
from bot.recovery.reaper import REAPER_COUNTER, reap_job
from bot.runtime.process import RUNTIME
from bot.store.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys("bot")
#: A process that runs as long as the test does: the test's own.
LIVE_PID = os.getpid()


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    return JobStore(client, KEYS)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a child this test started and reaped: known dead (no reuse until the kernel's
    pids wrap around, far beyond a test's lifetime)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)
    return child.pid


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
    # Given an acquire that went through in Redis though its caller (a running process: this
    # one) saw an error
    alive(client, "A")
    first = store.acquire(delivery(), "A", LIVE_PID, claim="attempt-1")
    assert isinstance(first, Acquired)

    # When the same attempt calls again, it is acquired: same fence, nothing counted twice
    again = store.acquire(delivery(), "A", LIVE_PID, claim="attempt-1")
    assert again == first
    assert store.read("job-1")["attempts"] == "1"
    # while another attempt of the same worker, or another worker, is told the job is busy
    other_attempt = store.acquire(delivery(), "A", LIVE_PID, claim="attempt-2")
    other_worker = store.acquire(delivery(), "B", LIVE_PID, claim="attempt-1")
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


@pytest.mark.parametrize("end", ["succeeded", "failed", "rejected", "dead"])
def test_a_copy_of_a_job_that_ended_in_any_final_state_is_a_duplicate(
    end: str, store: JobStore, client: redis.Redis
):
    alive(client, "A")
    got = acquire(store, "A")
    assert complete(store, "A", got.fence, state=end)
    # the copy comes to another worker, or to the same one: either way it does not run
    alive(client, "B")
    assert store.acquire(delivery(), "B", 1) == Skipped("duplicate", end)
    assert store.acquire(delivery(), "A", 1) == Skipped("duplicate", end)
    assert client.hget(KEYS.job("job-1"), "attempts") == "1"


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


def test_same_worker_takes_over_a_job_of_its_own_dead_child(
    store: JobStore, client: redis.Redis, dead_pid: int
):
    alive(client, "A")
    acquire(store, "A", pid=dead_pid)
    got = acquire(store, "A", pid=LIVE_PID)
    assert (got.recoveries, got.attempts) == (1, 2)


def test_another_attempt_of_the_same_worker_on_a_live_process_is_busy(
    store: JobStore, client: redis.Redis
):
    alive(client, "A")
    acquire(store, "A", pid=LIVE_PID)
    assert store.acquire(delivery(), "A", LIVE_PID) == Skipped("busy", "A")


def test_acquire_is_fenced_on_what_its_caller_read(
    store: JobStore, client: redis.Redis, dead_pid: int, monkeypatch
):
    # Given A's attempt on a dead process, and a new delivery to A that reads it (fence 1, that
    # pid: its own dead process, to be taken over)
    alive(client, "A")
    acquire(store, "A", pid=dead_pid)
    script = store._acquire
    calls = 0

    def another_attempt_gets_there_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # between the caller's read and its script call
            rival = JobStore(client, KEYS).acquire(delivery(), "A", LIVE_PID, claim="rival")
            assert isinstance(rival, Acquired) and rival.fence == 2
        return script(*args, **kwargs)

    monkeypatch.setattr(store, "_acquire", another_attempt_gets_there_first)
    # When that delivery's script runs, the job is at fence 2 on a live process
    verdict = store.acquire(delivery(), "A", LIVE_PID, claim="late")
    # Then what it read is stale ('retry'): it reads again and finds the job busy
    assert verdict == Skipped("busy", "A")
    assert store.read("job-1")["fence"] == "2"


@pytest.mark.parametrize("how", ["reaper_hands_it_back", "own_process_died"])
def test_an_attempt_superseded_by_the_same_worker_cannot_complete(
    how: str, store: JobStore, client: redis.Redis, dead_pid: int
):
    # Given worker A runs the job (attempt 1)
    alive(client, "A")
    first = acquire(store, "A", pid=dead_pid if how == "own_process_died" else LIVE_PID)
    # and the same worker takes it again (attempt 2): after the reaper handed it back (A's lease
    # lapsed for a while), or because attempt 1's pool process died
    if how == "reaper_hands_it_back":
        assert reap_job(client, KEYS, "job-1", "A", REAPER_COUNTER) is not None
    second = acquire(store, "A", pid=LIVE_PID)
    assert second.fence == first.fence + 1
    # When attempt 1 tries to record its outcome with its old fence (same owner)
    # Then it is refused and counted as lease_lost; the job still runs attempt 2
    assert complete(store, "A", first.fence) is None
    assert client.hget(KEYS.stats, "lease_lost") == "1"
    assert client.hget(KEYS.job("job-1"), "state") == "running"
    assert outbox_job_ids(client) == []
    # and attempt 2's outcome is the one report
    assert complete(store, "A", second.fence)
    assert outbox_job_ids(client) == ["job-1"]
    # after which attempt 1's same outcome is still refused (not taken for a repeat)
    assert complete(store, "A", first.fence) is None
    assert outbox_job_ids(client) == ["job-1"]


def test_the_current_fence_with_another_owner_cannot_complete(store: JobStore, client: redis.Redis):
    alive(client, "A")
    got = acquire(store, "A")
    assert complete(store, "B", got.fence) is None
    assert client.hget(KEYS.stats, "lease_lost") == "1"
    assert outbox_job_ids(client) == []


@pytest.fixture
def app(make_settings: Callable[..., Any]) -> BotApp:
    return create_app(make_settings(max_recoveries=3), fleet=False)


def recover(path: str, times: int, app: BotApp, client: redis.Redis, store: JobStore) -> None:
    """Run job "poison" and lose it `times` times, through the reaper or a lost pool child."""
    for _ in range(times):
        acquire(store, "A", pid=4242, job_id="poison")
        if path == "reaper":
            assert reap_job(client, KEYS, "poison", "A", REAPER_COUNTER)
        else:
            assert hand_back(app, "poison", 4242)


@pytest.mark.parametrize("path", ["reaper", "lost_child"])
def test_a_job_recovered_max_recoveries_times_still_runs(
    path: str, app: BotApp, client: redis.Redis, store: JobStore, monkeypatch
):
    # Given a job recovered exactly BOT_MAX_RECOVERIES (3) times
    monkeypatch.setattr(RUNTIME, "instance_id", "A")
    alive(client, "A")
    recover(path, 3, app, client, store)
    # When its message is delivered again, then it runs and succeeds
    result = app.tasks["ops.touch"].apply(kwargs={"seconds": 0}, task_id="poison")
    assert result.successful(), result.result
    record = client.hgetall(KEYS.job("poison"))
    assert (record["state"], record["recoveries"], record["attempts"]) == ("succeeded", "3", "4")
    assert client.get(KEYS.fault_touches("poison")) == "1"


@pytest.mark.parametrize("path", ["reaper", "lost_child"])
def test_past_max_recoveries_the_next_acquire_ends_the_job_dead(
    path: str, app: BotApp, client: redis.Redis, store: JobStore, monkeypatch
):
    # Given a job recovered BOT_MAX_RECOVERIES + 1 times, through either path
    monkeypatch.setattr(RUNTIME, "instance_id", "A")
    alive(client, "A")
    recover(path, 4, app, client, store)
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
