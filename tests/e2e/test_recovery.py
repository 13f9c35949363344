"""Crash recovery with real `celery -A bot worker` processes (issue 4), and the same set-ups
on stock Celery for comparison.

Short lease settings: heartbeat 0.5 s, lease TTL 1.5 s, reaper every 0.5 s. Side effects of
op bodies are counted in Redis (`touch`/`crash` fault ops), reports in `bot:outbox`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.application import BotApp
from bot.client import Client
from bot.jobs.store import Acquired, Delivery, JobStore
from bot.store.keys import Keys
from tests.support import stock_app
from tests.support.processes import WorkerProcess, wait_for

pytestmark = pytest.mark.e2e

HEARTBEAT_S = 0.5
LEASE_TTL_S = 1.5
REAPER_S = 0.5
KEYS = Keys("bot")
LEASE_ENV = {
    "BOT_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
    "BOT_LEASE_TTL": str(LEASE_TTL_S),
    "BOT_REAPER_INTERVAL": str(REAPER_S),
}
#: kombu's visibility sweep made frequent: restore after 5 s, scan every second.
SHORT_VISIBILITY = {
    "BOT_VISIBILITY_TIMEOUT": "5",
    "BOT_BROKER_TRANSPORT_OPTIONS": json.dumps(
        {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
    ),
}


def submit(app: BotApp, op: str, job_id: str, countdown: float | None = None, **payload: Any):
    return Client(app).submit(op, payload, job_id=job_id, countdown=countdown)


def record(client: redis.Redis, job_id: str) -> dict[str, str]:
    return client.hgetall(KEYS.job(job_id))  # type: ignore[return-value]


def reports(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(f["report"]) for _, f in client.xrange(KEYS.outbox)]


def touches(client: redis.Redis, job_id: str) -> int:
    return int(client.get(KEYS.fault_touches(job_id)) or 0)


def final(client: redis.Redis, job_id: str, timeout_s: float) -> dict[str, str]:
    def ended() -> dict[str, str] | None:
        rec = record(client, job_id)
        return rec if rec.get("state") in ("succeeded", "failed", "rejected", "dead") else None

    return wait_for(ended, timeout_s, f"job {job_id} to end")  # type: ignore[return-value]


def owner_worker(client: redis.Redis, job_id: str, workers: list[WorkerProcess]) -> WorkerProcess:
    """The worker whose pool child runs the job (the record's pid is that child)."""

    def find() -> WorkerProcess | None:
        rec = record(client, job_id)
        if rec.get("state") != "running":
            return None
        pid = int(rec.get("pid") or 0)
        return next((w for w in workers if pid in w.children()), None)

    return wait_for(find, 30, f"job {job_id} to run")  # type: ignore[return-value]


def kill_group(worker: WorkerProcess) -> None:
    """SIGKILL whatever is left of the worker's process group (orphaned pool children)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)


def test_kill9_of_worker_main_process_job_runs_again_on_the_other(workers, bot_app, client):
    # Given two workers and a 4 s job running on one of them
    pair = [workers("w1", extra_env=LEASE_ENV), workers("w2", extra_env=LEASE_ENV)]
    submit(bot_app, "touch", "job-k", seconds=4, steps=4)
    victim = owner_worker(client, "job-k", pair)
    survivor = next(w for w in pair if w is not victim)
    first_owner = record(client, "job-k")["owner"]
    # When the worker's main process is killed with SIGKILL
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        # Then the job is running again elsewhere within lease TTL + one reaper interval
        # (+ the time the survivor needs to be handed the message and acquire it)
        def taken_over() -> bool:
            rec = record(client, "job-k")
            return rec.get("owner") not in ("", first_owner) and rec.get("state") == "running"

        wait_for(taken_over, LEASE_TTL_S + REAPER_S + 3, "the job to run on the other worker")
        recovery_s = time.monotonic() - killed_at
        rec = final(client, "job-k", 30)
    finally:
        kill_group(victim)
    # and it ends with exactly one report, written by the survivor
    assert rec["state"] == "succeeded" and rec["recoveries"] == "1"
    job_reports = [r for r in reports(client) if r["job_id"] == "job-k"]
    assert len(job_reports) == 1
    assert job_reports[0]["worker"]["instance_id"] != first_owner
    assert job_reports[0]["recoveries"] == 1
    assert recovery_s <= LEASE_TTL_S + REAPER_S + 3
    assert survivor.alive()


def test_kill9_of_only_the_pool_child_is_handed_back_and_runs_again(workers, bot_app, client):
    # Given two workers and a 4 s job running in a pool child of one of them
    pair = [workers("w1", extra_env=LEASE_ENV), workers("w2", extra_env=LEASE_ENV)]
    submit(bot_app, "touch", "job-c", seconds=4, steps=4)
    victim = owner_worker(client, "job-c", pair)
    child = int(record(client, "job-c")["pid"])
    # When only that pool child is killed with SIGKILL
    os.kill(child, signal.SIGKILL)
    # Then the worker's main process hands the job back (lost-child path, not the reaper),
    # Celery requeues the message, and the job runs again and ends with one report
    rec = final(client, "job-c", 30)
    assert rec["state"] == "succeeded" and rec["recoveries"] == "1"
    assert client.hget(KEYS.stats, "child_lost_recovered") == "1"
    assert not client.hget(KEYS.stats, "reaper_recovered")
    assert touches(client, "job-c") == 2
    assert [r["job_id"] for r in reports(client)] == ["job-c"]
    assert victim.alive()


def test_a_job_a_live_worker_claims_but_does_not_hold_runs_again(workers, client):
    # Given a live worker, and a job recorded as acquired by it though no request of it holds
    # the job and its message is gone: what an acquire whose reply was lost leaves behind
    # once the redelivered copy was skipped as busy
    workers("w1", extra_env=LEASE_ENV)
    [instance] = client.zrange(KEYS.workers, 0, -1)
    message = {"task": "ops.touch", "args": [], "kwargs": {"seconds": 0}, "queue": "celery"}
    lost = Delivery("job-u", "touch", "celery", "tag-gone", message, enqueued_at_ms=1)
    assert isinstance(JobStore(client, KEYS).acquire(lost, instance, os.getpid()), Acquired)

    # Then the worker's unheld-job audit hands it back, publishes it again, and it runs once
    rec = final(client, "job-u", 15)
    assert rec["state"] == "succeeded" and rec["recoveries"] == "1"
    assert client.hget(KEYS.stats, "unheld_recovered") == "1"
    assert client.hget(KEYS.stats, "reaper_republished") == "1"
    assert touches(client, "job-u") == 1
    assert [r["job_id"] for r in reports(client)] == ["job-u"]


def test_a_job_over_its_hard_time_limit_fails_once_with_a_report(workers, bot_app, client):
    # Given a worker, and a 6 s job sent with a hard time limit of 1 s
    worker = workers("w1", extra_env=LEASE_ENV)
    kwargs = {"seconds": 6, "steps": 6}
    bot_app.send_task("ops.touch", kwargs=kwargs, task_id="job-t", time_limit=1)

    # Then its pool child is killed and the job ends failed, once, with one report
    rec = final(client, "job-t", 20)
    assert rec["state"] == "failed" and rec["recoveries"] == "0"
    assert json.loads(rec["outcome"])["error"]["type"] == "TimeLimitExceeded"
    [report] = reports(client)
    assert (report["job_id"], report["status"]) == ("job-t", "failed")
    assert report["error"]["type"] == "TimeLimitExceeded"
    assert 900 <= report["duration_ms"] < 6000
    # and it does not run again: not recovered by the unheld-job audit, not redelivered
    time.sleep(3 * REAPER_S + LEASE_TTL_S)
    assert touches(client, "job-t") == 1
    assert record(client, "job-t")["state"] == "failed"
    assert not client.hget(KEYS.stats, "unheld_recovered")
    assert worker.alive()
    submit(bot_app, "touch", "job-next", seconds=0)
    assert final(client, "job-next", 20)["state"] == "succeeded"


@pytest.mark.parametrize(
    ("seconds", "countdown"), [(15, None), (1, 12)], ids=["15s-job", "12s-countdown"]
)
def test_job_outliving_the_visibility_timeout_runs_once(
    workers, bot_app, client, seconds, countdown
):
    # Given two workers, visibility timeout 5 s and kombu's sweep every second
    env = {**LEASE_ENV, **SHORT_VISIBILITY}
    workers("w1", extra_env=env)
    workers("w2", extra_env=env)
    # When a job longer than the visibility timeout (or held that long for its countdown) runs
    submit(bot_app, "touch", "job-v", countdown=countdown, seconds=seconds)
    rec = final(client, "job-v", seconds + (countdown or 0) + 20)
    # Then its body executed exactly once: heartbeats renewed the message's unacked score
    assert rec["state"] == "succeeded"
    assert touches(client, "job-v") == 1
    assert int(client.hget(KEYS.stats, "duplicates_skipped") or 0) == 0
    assert [r["job_id"] for r in reports(client)] == ["job-v"]


@pytest.fixture
def stock_workers(tmp_path: Path, redis_server) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str, transport_options: dict[str, Any]) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
        env.update(
            STOCK_REDIS_URL=redis_server.url(1),
            STOCK_TRANSPORT_OPTIONS=json.dumps(transport_options),
            PYTHONUNBUFFERED="1",
        )
        worker = WorkerProcess(name, env, tmp_path)
        worker.args = stock_app.worker_args(name)
        started.append(worker.start())
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop(timeout_s=10)


@pytest.mark.parametrize(
    ("seconds", "countdown", "expected"),
    [(15, None, 3), (1, 12, 3)],
    ids=["15s-job", "12s-countdown"],
)
def test_stock_celery_runs_it_again_in_the_same_setup(
    stock_workers, redis_server, seconds, countdown, expected
):
    # Given stock Celery (acks_late) with the same visibility settings, two workers
    options = {
        "visibility_timeout": 5,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
    stock_workers("s1", options)
    stock_workers("s2", options)
    stock = redis_server.client(1)
    stock.flushdb()
    # When the same long job (or countdown) runs
    stock_app.app.conf.broker_url = redis_server.url(1)
    stock_app.app.conf.result_backend = redis_server.url(1)
    stock_app.touch.apply_async(kwargs={"seconds": seconds}, task_id="stock-v", countdown=countdown)
    # Then its body runs three times: the sweep redelivers it every ~5 s until the first ack
    key = stock_app.touches_key("stock-v")
    wait_for(lambda: int(stock.get(key) or 0) >= expected, 60, f"{expected} executions")
    # and not a 4th time: wait until the first copy acked and every copy finished
    result = stock_app.touch.AsyncResult("stock-v")
    wait_for(result.ready, 60, "the stock job's result")
    wait_for(
        lambda: not stock.exists("unacked") and not stock.llen(stock_app.QUEUE),
        30,
        "no copy left unacked or queued",
    )
    assert int(stock.get(key) or 0) == expected


def test_poison_job_ends_dead_and_the_fleet_keeps_serving(workers, bot_app, client):
    # Given two workers allowing 2 recoveries, and a job that kills its pool child every time
    env = {**LEASE_ENV, "BOT_MAX_RECOVERIES": "2"}
    workers("w1", extra_env=env)
    workers("w2", extra_env=env)
    submit(bot_app, "crash", "poison")
    # and ordinary jobs submitted meanwhile
    for n in range(10):
        submit(bot_app, "sum", f"ok-{n}", a=n, b=1)
    # Then the poison job ends dead after 3 executions, with one dead report
    rec = final(client, "poison", 60)
    assert rec["state"] == "dead" and rec["recoveries"] == "3"
    assert touches(client, "poison") == 3
    dead = [r for r in reports(client) if r["job_id"] == "poison"]
    assert len(dead) == 1 and dead[0]["status"] == "dead"
    # and every other job succeeded
    for n in range(10):
        assert final(client, f"ok-{n}", 30)["state"] == "succeeded"


def test_succeeded_job_published_again_is_not_executed_again(workers, bot_app, client):
    workers("w1", extra_env=LEASE_ENV)
    submit(bot_app, "touch", "once")
    assert final(client, "once", 30)["state"] == "succeeded"
    # When a copy of the job is published again with the same id (bypassing the client)
    bot_app.send_task("ops.touch", kwargs={}, task_id="once")
    wait_for(lambda: client.hget(KEYS.stats, "duplicates_skipped") == "1", 30, "the duplicate skip")
    # Then the body did not run again, there is one report, and the caller reads the outcome
    assert touches(client, "once") == 1
    assert [r["job_id"] for r in reports(client)] == ["once"]
    status = Client(bot_app).status("once")
    assert status.state == "succeeded" and status.result == {"executions": 1}


CHAOS_JOBS = 200
CHAOS_BUDGET_S = 180


# Its own budget (CHAOS_BUDGET_S) bounds it, not the suite's 120 s per test: up to 12 kills,
# each with a replacement worker started and waited for, then the drain (~35 s on a quiet
# machine, more under load).
@pytest.mark.timeout(CHAOS_BUDGET_S + 60)
def test_random_kill9_of_workers_every_job_ends_exactly_once(workers, bot_app, client):
    # Given three workers and 200 short jobs
    env = {**LEASE_ENV, "BOT_MAX_RECOVERIES": "20"}
    fleet = [workers(f"w{n}", extra_env=env) for n in range(3)]
    ids = [f"chaos-{n}" for n in range(CHAOS_JOBS)]
    for job_id in ids:
        submit(bot_app, "touch", job_id, seconds=0.6)
    rng = random.Random(4)
    deadline = time.monotonic() + CHAOS_BUDGET_S
    kills = 0
    killed: list[WorkerProcess] = []
    # When a random worker is kill -9'd every few seconds (and replaced), while jobs remain
    while time.monotonic() < deadline and len(reports(client)) < CHAOS_JOBS and kills < 12:
        time.sleep(rng.uniform(2, 4))
        victim = fleet.pop(rng.randrange(len(fleet)))
        victim.kill()
        killed.append(victim)
        kills += 1
        fleet.append(workers(f"r{kills}", extra_env=env))
    # Then every job ends, exactly once: one report per job, none lost
    wait_for(
        lambda: len(reports(client)) >= CHAOS_JOBS,
        max(10.0, deadline - time.monotonic()),
        "every job's report",
    )
    per_job = Counter(r["job_id"] for r in reports(client))
    assert set(per_job) == set(ids)
    assert max(per_job.values()) == 1
    assert all(record(client, j)["state"] == "succeeded" for j in ids)
    # and the kills really cut jobs short: some were recovered
    assert kills >= 3
    assert int(client.hget(KEYS.stats, "recoveries") or 0) >= 1
