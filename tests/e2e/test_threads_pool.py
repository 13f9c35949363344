"""bot on Celery's threads pool (`-P threads -c 8`), end to end: real redis-server, real
`celery -A bot worker -P threads` processes, the real `bot` CLI.

Under the threads pool every job of a worker runs in one process (the worker's main process):
the job record's `pid` is the worker's own pid, `progress()` must follow the job of the calling
thread, and a worker that dies loses every job it held at once, which the reaper hands to
another worker. Short lease settings, as in test_recovery.py.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable

import pytest
import redis

from bot.application import BotApp
from bot.client import Client
from tests.e2e.test_fleet import fleet_json, heartbeats_while, registered, wait_state
from tests.e2e.test_recovery import (
    LEASE_ENV,
    LEASE_TTL_S,
    REAPER_S,
    final,
    kill_group,
    record,
    reports,
    touches,
)
from tests.support.processes import WorkerProcess, run_bot, wait_for

pytestmark = pytest.mark.e2e

THREADS = ("-P", "threads")
CONCURRENCY = 8
JOBS = 200


def threads_worker(
    workers: Callable[..., WorkerProcess], name: str, **extra_env: str
) -> WorkerProcess:
    return workers(
        name, extra_env={**LEASE_ENV, **extra_env}, extra_args=THREADS, concurrency=CONCURRENCY
    )


def running_on(client: redis.Redis, job_ids: list[str], owner: str) -> list[str]:
    return [
        job_id
        for job_id in job_ids
        if (rec := record(client, job_id)).get("state") == "running" and rec.get("owner") == owner
    ]


def test_200_short_jobs_end_once_each_with_their_own_progress(
    workers: Callable[..., WorkerProcess], bot_app: BotApp, client: redis.Redis, env: dict[str, str]
) -> None:
    # Given one worker on the threads pool, 8 threads
    worker = threads_worker(workers, "t1")
    instance_id = registered(client, worker)
    # When 200 jobs of ~20 ms are submitted, two ops interleaved so that 8 threads run
    # jobs of both ops at once, each reporting progress
    submitter = Client(bot_app)
    touch_ids = [f"touch-{n}" for n in range(JOBS // 2)]
    sleep_ids = [f"sleep-{n}" for n in range(JOBS // 2)]
    for touch_id, sleep_id in zip(touch_ids, sleep_ids, strict=True):
        submitter.submit("touch", {"seconds": 0.02, "steps": 1}, job_id=touch_id)
        submitter.submit("sleep", {"seconds": 0.02, "steps": 2}, job_id=sleep_id)
    wait_for(lambda: len(reports(client)) >= JOBS, 90, "every job's report")

    # Then every job succeeded, ran its body once, and has exactly one report
    per_job = Counter(r["job_id"] for r in reports(client))
    assert set(per_job) == {*touch_ids, *sleep_ids}
    assert max(per_job.values()) == 1
    assert {r["status"] for r in reports(client)} == {"succeeded"}
    assert all(touches(client, job_id) == 1 for job_id in touch_ids)
    # ... every job ran in the worker's own process (no pool children; a finished record
    # keeps no pid, only its owner: this worker) ...
    assert worker.children() == []
    assert {record(client, job_id)["owner"] for job_id in touch_ids} == {instance_id}
    # ... and each job's last progress report is its own, on its own record
    for job_id in touch_ids:
        assert json.loads(record(client, job_id)["progress"]) == {
            "current": 1,
            "total": 1,
            "note": None,
        }
    for job_id in sleep_ids:
        progress = json.loads(record(client, job_id)["progress"])
        assert (progress["current"], progress["total"]) == (2, 2), job_id
    assert not client.exists("bot:job:None")
    # and `bot fleet --json` shows the worker with its 8 threads, all 200 done
    [row] = [row for row in fleet_json(env) if row["instance_id"] == instance_id]
    assert row["pool"] == str(CONCURRENCY)
    assert row["pool_kind"] == "celery.concurrency.thread"
    assert f"{CONCURRENCY} threads" in run_bot(env, "fleet").stdout
    wait_for(
        lambda: client.hget(f"bot:worker:{instance_id}", "done") == str(JOBS),
        5,
        "the done counter in the record",
    )
    assert "Traceback" not in worker.log()


def test_kill9_of_a_threads_worker_its_jobs_run_again_on_the_other(
    workers: Callable[..., WorkerProcess], bot_app: BotApp, client: redis.Redis
) -> None:
    # Given two threads workers, each running 8 jobs of 4 s
    pair = [threads_worker(workers, "t1"), threads_worker(workers, "t2")]
    owners = {registered(client, worker): worker for worker in pair}
    ids = [f"long-{n}" for n in range(2 * CONCURRENCY)]
    for job_id in ids:
        Client(bot_app).submit("touch", {"seconds": 4, "steps": 4}, job_id=job_id)
    wait_for(
        lambda: all(record(client, j).get("state") == "running" for j in ids),
        30,
        "all 16 jobs to run",
    )
    victim_id = record(client, ids[0])["owner"]
    victim = owners[victim_id]
    victims_jobs = running_on(client, ids, victim_id)
    assert len(victims_jobs) == CONCURRENCY
    # When one worker is killed with SIGKILL while its 8 jobs run
    os.kill(victim.pid, signal.SIGKILL)
    try:
        # Then the other worker runs all of them again (after the lease expired) ...
        for job_id in ids:
            rec = final(client, job_id, 4 + LEASE_TTL_S + REAPER_S + 4 + 4 + 15)
            assert rec["state"] == "succeeded", job_id
    finally:
        kill_group(victim)
    # ... and every job has exactly one report, the recovered ones written by the survivor
    per_job = Counter(r["job_id"] for r in reports(client))
    assert set(per_job) == set(ids) and max(per_job.values()) == 1
    by_id = {r["job_id"]: r for r in reports(client)}
    for job_id in victims_jobs:
        assert by_id[job_id]["recoveries"] == 1
        assert by_id[job_id]["worker"]["instance_id"] != victim_id
        assert touches(client, job_id) == 2
    assert int(client.hget("bot:stats", "reaper_recovered") or 0) == CONCURRENCY
    survivor = next(w for w in pair if w is not victim)
    assert survivor.alive()


def test_sigterm_keeps_beating_while_the_threads_drain_then_leaves(
    workers: Callable[..., WorkerProcess], bot_app: BotApp, client: redis.Redis
) -> None:
    # Given a threads worker running 8 jobs of 3 s
    worker = threads_worker(workers, "t1")
    instance_id = registered(client, worker)
    ids = [f"drain-{n}" for n in range(CONCURRENCY)]
    for job_id in ids:
        Client(bot_app).submit("touch", {"seconds": 3, "steps": 3}, job_id=job_id)
    wait_for(lambda: len(running_on(client, ids, instance_id)) == CONCURRENCY, 20, "8 running")
    wait_state(client, instance_id, "PROCESSING")
    # When it gets SIGTERM
    worker.signal(signal.SIGTERM)
    # Then it keeps heartbeating as SHUTTING_DOWN while the threads finish their jobs ...
    beats = heartbeats_while(client, instance_id, "SHUTTING_DOWN", 3)
    assert beats == sorted(beats)
    assert client.pttl(f"bot:lease:{instance_id}") > 0
    # ... then exits 0, every job ended once, and its record and lease are gone
    assert worker.wait(timeout_s=20) == 0
    assert all(record(client, job_id)["state"] == "succeeded" for job_id in ids)
    assert all(touches(client, job_id) == 1 for job_id in ids)
    assert sorted(r["job_id"] for r in reports(client)) == sorted(ids)
    assert not client.exists(f"bot:worker:{instance_id}", f"bot:lease:{instance_id}")


def test_sys_exit_in_an_op_is_handed_back_and_bounded_like_a_lost_child(
    workers: Callable[..., WorkerProcess], bot_app: BotApp, client: redis.Redis
) -> None:
    # Given a threads worker allowing 2 recoveries
    worker = threads_worker(workers, "t1", BOT_MAX_RECOVERIES="2")
    submitter = Client(bot_app)
    # When one op raises SystemExit on its first run, another on every run
    submitter.submit("crash", {"how": "sys_exit", "times": 1}, job_id="exit-once")
    submitter.submit("crash", {"how": "sys_exit", "times": -1}, job_id="exit-always")
    # Then the first is handed back and succeeds on its second run ...
    rec = final(client, "exit-once", 20)
    assert rec["state"] == "succeeded" and rec["recoveries"] == "1"
    assert touches(client, "exit-once") == 2
    # ... the second ends dead after 3 runs (instead of hanging `running` for good) ...
    rec = final(client, "exit-always", 20)
    assert rec["state"] == "dead" and rec["recoveries"] == "3"
    assert touches(client, "exit-always") == 3
    assert int(client.hget("bot:stats", "child_lost_recovered") or 0) == 4
    assert sorted(r["job_id"] for r in reports(client)) == ["exit-always", "exit-once"]
    # ... and the worker lives on and keeps serving
    assert worker.alive()
    submitter.submit("touch", {"seconds": 0}, job_id="after")
    assert final(client, "after", 20)["state"] == "succeeded"
