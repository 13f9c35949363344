"""A finished job end to end, with a real `celery -A bot worker`: its record keeps only what a
finished job needs (bot/jobs/record.py), its Celery result lives BOT_RESULT_TTL and the record
BOT_JOB_TTL, and every reader still gets what it did: `AsyncResult.get`, `bot status`, a
resubmission of the same id (not enqueued), a second delivery (acked without running)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from bot.application import BotApp
from bot.client import Client
from tests.e2e.test_recovery import record, reports, touches
from tests.integration.test_finished_records import FINISHED_FIELDS
from tests.support.processes import WorkerProcess, run_bot, wait_for

pytestmark = pytest.mark.e2e

RESULT_TTL_S, JOB_TTL_S = 120, 900
TTLS = {"BOT_RESULT_TTL": str(RESULT_TTL_S), "BOT_JOB_TTL": str(JOB_TTL_S)}


def settled(client: redis.Redis) -> bool:
    """Nothing queued, nothing delivered and not yet acked."""
    return client.llen("celery") == 0 and client.hlen("unacked") == 0


def test_a_finished_job_keeps_its_outcome_its_id_and_nothing_more(
    bot_app: BotApp,
    client: redis.Redis,
    env: dict[str, str],
    workers: Callable[..., WorkerProcess],
) -> None:
    # Given a worker with its own lifetimes for records and results
    workers("w1", extra_env=TTLS)
    submitter = Client(bot_app)

    # When a job with a caller's id runs to its end
    assert submitter.submit("touch", {"seconds": 0.05, "steps": 1}, job_id="keep-1").enqueued
    assert bot_app.AsyncResult("keep-1").get(timeout=30) == {"executions": 1}

    # Then its record holds what a finished job needs, for BOT_JOB_TTL; its result, RESULT_TTL
    kept = record(client, "keep-1")
    assert set(kept) == FINISHED_FIELDS
    assert RESULT_TTL_S < client.ttl("bot:job:keep-1") <= JOB_TTL_S
    assert 0 < client.ttl("celery-task-meta-keep-1") <= RESULT_TTL_S
    # `bot status` shows the outcome as before
    shown: dict[str, Any] = json.loads(run_bot(env, "status", "keep-1", "--json").stdout)
    assert (shown["state"], shown["attempts"]) == ("succeeded", 1)
    assert shown["result"] == {"executions": 1}
    assert shown["progress"]["current"] == 1 and shown["finished_at"]

    # When the caller submits the same id again, Then nothing is enqueued
    assert not submitter.submit("touch", {"seconds": 0.05, "steps": 1}, job_id="keep-1").enqueued
    # When a copy of its message is delivered anyway, Then it is acked without running
    bot_app.send_task("ops.touch", kwargs={"seconds": 0.05, "steps": 1}, task_id="keep-1")
    wait_for(lambda: client.hget("bot:stats", "duplicates_skipped") == "1", 20, "the skip")
    wait_for(lambda: settled(client), 20, "the copy to be acked")
    assert touches(client, "keep-1") == 1
    assert [r["job_id"] for r in reports(client)] == ["keep-1"]
    assert bot_app.AsyncResult("keep-1").get(timeout=5) == {"executions": 1}
