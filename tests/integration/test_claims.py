"""The unheld-job audit (bot/recovery/unheld_audit.py) against a real redis-server: a live
instance recorded as running a job it no longer holds hands it back; one it holds, or took after
the snapshot, stays; a lost acquire reply followed by a `busy` skip ends with the job queued
again."""

from __future__ import annotations

import pytest
import redis

from bot.jobs.store import UNHELD_COUNTER, Acquired, Delivery, JobStore, Requeued, Skipped, now_ms
from bot.recovery.unheld_audit import UnheldAudit
from bot.store.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys("bot")
OWNER = "instance-live"
MESSAGE = {"task": "ops.touch", "args": [], "kwargs": {"seconds": 0}, "queue": "celery"}


def acquired(store: JobStore, job_id: str, owner: str = OWNER, pid: int = 1) -> Acquired:
    verdict = store.acquire(
        Delivery(job_id, "touch", "celery", f"tag-{job_id}", MESSAGE, 1), owner, pid
    )
    assert isinstance(verdict, Acquired), verdict
    return verdict


class Audit:
    """A UnheldAudit over `client` with a given set of held ids, recording what it put back."""

    def __init__(self, client: redis.Redis, held: set[str], clock_ms: int | None = None) -> None:
        self.put_back: list[Requeued] = []
        self.audit = UnheldAudit(
            client,
            KEYS,
            owner=lambda: OWNER,
            held_job_ids=lambda: held,
            put_back=self.put_back.append,
            # By default the audit's snapshot comes a second after the acquires above it.
            clock_ms=lambda: clock_ms if clock_ms is not None else now_ms() + 1000,
        )

    def run(self) -> list[str]:
        return self.audit.run_once()


@pytest.fixture
def store(client: redis.Redis) -> JobStore:
    client.set(KEYS.lease(OWNER), "1", px=60_000)  # the owner is alive throughout
    return JobStore(client, KEYS)


def test_a_claimed_job_held_by_no_request_is_handed_back_and_put_back(
    client: redis.Redis, store: JobStore
) -> None:
    # Given job-1 acquired by this live instance, and no request for it held any more
    first = acquired(store, "job-1")

    # When the audit runs twice (the first pass only suspects it)
    audit = Audit(client, held=set())
    assert audit.run() == []
    assert store.read("job-1")["state"] == "running"
    handed = audit.run()

    # Then the job is queued again, one recovery, out of the in-flight set, its message put back
    assert handed == ["job-1"]
    record = store.read("job-1")
    assert (record["state"], record["owner"], record["recoveries"]) == ("queued", "", "1")
    assert record["fence"] == str(first.fence)
    assert client.smembers(KEYS.inflight(OWNER)) == set()
    assert client.hget(KEYS.stats, UNHELD_COUNTER) == "1"
    [requeued] = audit.put_back
    assert (requeued.job_id, requeued.recoveries, requeued.delivery_tag) == (
        "job-1",
        1,
        "tag-job-1",
    )
    assert '"ops.touch"' in requeued.message
    assert audit.audit.handed_back == 1


def test_held_jobs_and_jobs_taken_after_the_snapshot_stay(
    client: redis.Redis, store: JobStore
) -> None:
    # Given job-1 held by a request, and job-2 acquired after the audit's snapshot time
    acquired(store, "job-1")
    snapshot = now_ms() - 60_000
    acquired(store, "job-2")

    # When the audit runs with job-1 held and a snapshot older than job-2's start
    audit = Audit(client, held={"job-1"}, clock_ms=snapshot)

    # Then neither is touched, however often it runs
    assert audit.run() == []
    assert audit.run() == []
    assert audit.put_back == []
    assert {store.read(j)["state"] for j in ("job-1", "job-2")} == {"running"}
    assert client.smembers(KEYS.inflight(OWNER)) == {"job-1", "job-2"}


def test_a_lost_acquire_reply_no_longer_strands_the_job(
    client: redis.Redis, store: JobStore
) -> None:
    # Given an acquire that ran in Redis though its caller saw an error and handed the message
    # back, and the redelivered copy skipped as busy (the owner is alive)
    acquired(store, "job-1", pid=101)
    again = store.acquire(Delivery("job-1", "touch", "celery", "tag-job-1", MESSAGE, 1), "other", 7)
    assert isinstance(again, Skipped)
    assert again.reason == "busy"

    # When the owner's audit runs (no request for job-1 held) on two passes
    audit = Audit(client, held=set())
    audit.run()
    audit.run()

    # Then the next delivery acquires it and runs it
    verdict = store.acquire(
        Delivery("job-1", "touch", "celery", "tag-job-1", MESSAGE, 1), "other", 7
    )
    assert isinstance(verdict, Acquired)
    assert verdict.recoveries == 1


def test_a_job_unheld_for_a_moment_only_is_not_handed_back(
    client: redis.Redis, store: JobStore
) -> None:
    # Given job-1 acquired here, missing from the held requests on one pass only (Celery
    # drops not-yet-accepted requests when its broker connection closes)
    acquired(store, "job-1")
    held: set[str] = set()
    audit = Audit(client, held=held)
    assert audit.run() == []

    # When the next pass finds it held again, and the one after that unheld once more
    held.add("job-1")
    assert audit.run() == []
    held.clear()

    # Then it is still only a suspect: it stays running
    assert audit.run() == []
    assert store.read("job-1")["state"] == "running"


def test_an_audit_while_redis_is_unreachable_does_nothing(store: JobStore) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    put_back: list[Requeued] = []
    audit = UnheldAudit(unreachable, KEYS, lambda: OWNER, set, put_back.append)

    assert audit.run_once() == []
    assert put_back == []
