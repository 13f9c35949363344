"""Op labels stay bounded through the real complete script: a job whose op name a sender chose
(not a registered op) is counted under `op="unknown"`, never under its own hash field."""

from __future__ import annotations

import json

import pytest
import redis

from bot.jobs.store import Acquired, Delivery, JobStore, Outcome
from bot.observe.metrics import job_metrics
from bot.store.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys("bot")
OWNER = "instance-a"


def run_to_end(store: JobStore, client: redis.Redis, job_id: str, op: str) -> None:
    """Acquire and complete one attempt of `op` as the complete path does after a rejection."""
    client.set(KEYS.lease(OWNER), "1", px=60_000)
    message = {"task": f"ops.{op}", "args": [], "kwargs": {}, "queue": "celery"}
    got = store.acquire(Delivery(job_id, op, "celery", f"tag-{job_id}", message, 1), OWNER, 1)
    assert isinstance(got, Acquired), got
    report = json.dumps({"job_id": job_id, "status": "rejected"})
    outcome = Outcome("rejected", {"error": {"type": "UnknownOp"}}, report, op, 0.002)
    assert store.complete(job_id, OWNER, got.fence, outcome, 60)


def test_an_unknown_long_op_name_counts_under_unknown(client: redis.Redis) -> None:
    store = JobStore(client, KEYS)
    long_name = "x" * 5000

    run_to_end(store, client, "job-long", long_name)
    run_to_end(store, client, "job-sum", "sum")

    counts = client.hgetall(KEYS.metrics(OWNER))
    assert not any(long_name in field for field in counts)
    assert max(len(field) for field in counts) < 64
    assert counts["jobs|unknown|rejected"] == "1"
    assert counts["jobs|sum|rejected"] == "1"
    assert counts["duration_ms_sum|unknown|total"] == "2"
    jobs, histogram = list(job_metrics(counts))
    assert {s.labels["op"] for s in jobs.samples} == {"unknown", "sum"}
    assert {s.labels["op"] for s in histogram.samples} == {"unknown", "sum"}
