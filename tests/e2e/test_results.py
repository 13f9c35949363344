"""Celery's results of bot jobs, written by bot's own scripts (bot/jobs/celery_meta.py): what
a Celery client reads is what Celery itself would have written, `AsyncResult.get()` still
wakes on the publish, and canvas (a chain), which Celery keeps writing itself, still works."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery import chain

from bot.application import BotApp, create_app
from tests.support.processes import WorkerProcess, wait_for

pytestmark = pytest.mark.e2e

#: Fields that differ between the two runs by nature (the id, the time, who ran it, where).
PER_RUN = {"task_id", "date_done", "worker", "queue"}


def stored_meta(client: Any, job_id: str) -> dict[str, Any]:
    return json.loads(client.get(f"celery-task-meta-{job_id}"))


def same_server_other_spelling(redis_url: str) -> str:
    """The same Redis database named differently, so bot treats results as living elsewhere
    and Celery writes them itself (the reference to compare with)."""
    return redis_url.replace("127.0.0.1", "localhost")


def test_folded_result_meta_is_what_celery_writes(
    bot_app: BotApp,
    client: Any,
    env: dict[str, str],
    redis_url: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    """Given one worker whose scripts write the results and one where Celery writes them,
    when each runs the same job, then the stored metas are the same, field for field."""
    assert "127.0.0.1" in redis_url
    folded = workers("folded", queues="folded")
    reference = workers(
        "reference",
        queues="reference",
        extra_env={"BOT_RESULT_URL": same_server_other_spelling(redis_url)},
    )

    mine = bot_app.send_task("ops.sum", kwargs={"a": 1, "b": 2}, queue="folded")
    celerys = bot_app.send_task("ops.sum", kwargs={"a": 1, "b": 2}, queue="reference")

    assert mine.get(timeout=30) == celerys.get(timeout=30) == 3
    ours, theirs = stored_meta(client, mine.id), stored_meta(client, celerys.id)
    assert {k: v for k, v in ours.items() if k not in PER_RUN} == {
        k: v for k, v in theirs.items() if k not in PER_RUN
    }
    assert ours["status"] == "SUCCESS" and ours["task_id"] == mine.id
    done_at = datetime.fromisoformat(ours["date_done"]), datetime.fromisoformat(theirs["date_done"])
    assert done_at[0].utcoffset() == done_at[1].utcoffset() is not None
    assert abs(done_at[0] - done_at[1]) < timedelta(seconds=30)
    assert ours["worker"].startswith("folded@") and theirs["worker"].startswith("reference@")
    assert (ours["queue"], theirs["queue"]) == ("folded", "reference")
    # the result lives as long as Celery's (result_expires = BOT_RESULT_TTL)
    assert (
        0
        < client.ttl(f"celery-task-meta-{mine.id}")
        <= client.ttl(f"celery-task-meta-{celerys.id}") + 5
    )
    assert folded.alive() and reference.alive()


def test_a_running_job_reads_started_with_its_pool_process(
    bot_app: BotApp, client: Any, workers: Callable[..., WorkerProcess]
) -> None:
    """STARTED (Celery's `task_track_started` meta) is written by the acquire script."""
    worker = workers("w1")

    result = bot_app.send_task("ops.touch", kwargs={"seconds": 2, "steps": 1})

    wait_for(lambda: result.state == "STARTED", 20, "the job to read STARTED")
    meta = stored_meta(client, result.id)
    assert meta["result"]["pid"] in worker.children()
    assert meta["result"]["hostname"].startswith("w1@")
    assert meta["result"]["pid"] == int(client.hget(f"bot:job:{result.id}", "pid"))
    assert result.get(timeout=30) == {"executions": 1}


def test_get_wakes_on_the_publish_of_the_complete_script(
    bot_app: BotApp, workers: Callable[..., WorkerProcess]
) -> None:
    """`AsyncResult.get()` returns as soon as the job ends, not at a poll: 20 sequential
    round trips take well under a second each."""
    workers("w1")
    bot_app.send_task("ops.sum", kwargs={"a": 0, "b": 0}).get(timeout=30)  # warm

    started = time.monotonic()
    for i in range(20):
        assert bot_app.send_task("ops.sum", kwargs={"a": i, "b": 1}).get(timeout=10) == i + 1

    assert time.monotonic() - started < 10


def test_a_chain_of_ops_passes_each_result_on(
    make_settings: Callable[..., Any], workers: Callable[..., WorkerProcess]
) -> None:
    """Canvas keeps Celery's own result writes (its children are filled in after the body):
    a chain still runs every stage and its last result arrives."""
    workers("w1")
    app = create_app(make_settings(), fleet=False)
    try:
        flow = chain(
            app.signature("ops.sum", kwargs={"a": 1, "b": 2}),
            app.signature("ops.sum", kwargs={"b": 10}),
            app.signature("ops.subtract", kwargs={"b": 3}),
        )
        result = flow.apply_async()
        assert result.get(timeout=30) == 10
        assert result.parent is not None and result.parent.get(timeout=5) == 13
    finally:
        app.close()
