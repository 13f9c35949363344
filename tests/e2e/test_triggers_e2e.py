"""Triggers end to end: real `celery -A bot worker` processes run the source ops and the jobs
the triggers start; the triggers fire from the worker's own consumer or from real `bot triggers
run` processes, one of them kill -9'd while it holds reports. The test ops and triggers are
tests/support/trigger_ops.py (`emit` fires `touch`, which counts each execution of its body).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.application import BotApp
from bot.flows.triggers import TRIGGER_GROUP, trigger_job_id
from bot.store.keys import Keys
from tests.support.processes import FAST_FLEET, WorkerProcess, run_bot, wait_for
from tests.support.trigger_process import (
    ON_EMIT,
    ON_EMIT_FAILED,
    ON_EMIT_PIPELINE,
    ON_SQUARES,
    TRIGGER_OPS,
    TriggerProcess,
)

pytestmark = pytest.mark.e2e

KEYS = Keys("bot")


@pytest.fixture
def trigger_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, **FAST_FLEET, "BOT_OPS_MODULES": TRIGGER_OPS}


@pytest.fixture
def consumers(
    tmp_path: Path, trigger_env: dict[str, str]
) -> Iterator[Callable[[str], TriggerProcess]]:
    started: list[TriggerProcess] = []

    def start(name: str) -> TriggerProcess:
        process = TriggerProcess(
            name, {**trigger_env, "BOT_TRIGGER_CLAIM_IDLE": "1"}, tmp_path
        ).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def emit(app: BotApp, job_id: str, **payload: Any) -> None:
    """Send `ops.emit` as any Celery client would."""
    app.send_task("ops.emit", kwargs=payload, task_id=job_id)


def state(client: redis.Redis, job_id: str) -> str | None:
    return client.hget(KEYS.job(job_id), "state")  # type: ignore[return-value]


def touches(client: redis.Redis, job_id: str) -> int:
    return int(client.get(KEYS.fault_touches(job_id)) or 0)


def trigger_group(client: redis.Redis) -> dict[str, Any] | None:
    if not client.exists(KEYS.outbox):
        return None
    groups = client.xinfo_groups(KEYS.outbox)
    return next((g for g in groups if g["name"] == TRIGGER_GROUP), None)


def owed(client: redis.Redis) -> int:
    group = trigger_group(client)
    assert group is not None
    return int(group["pending"]) + int(group["lag"] or 0)


def triggered_records(client: redis.Redis) -> list[str]:
    return sorted(client.scan_iter(KEYS.job("trg*")))  # type: ignore[arg-type]


def reports_of(client: redis.Redis, job_id: str) -> int:
    return sum(1 for _, fields in client.xrange(KEYS.outbox) if fields["job_id"] == job_id)


def test_a_succeeded_report_triggers_an_op_that_runs_once_in_a_real_worker(
    workers: Callable[..., WorkerProcess],
    trigger_env: dict[str, str],
    bot_app: BotApp,
    client: redis.Redis,
) -> None:
    workers("w1", extra_env=trigger_env)
    wait_for(lambda: trigger_group(client), 20, "the worker's trigger consumer group")

    emit(bot_app, "src-ok", tag="ok")
    emit(bot_app, "src-fail", mode="fail")
    emit(bot_app, "src-skip", mode="skip")
    fired = trigger_job_id(ON_EMIT, "src-ok")
    fired_on_failure = trigger_job_id(ON_EMIT_FAILED, "src-fail")
    wait_for(
        lambda: state(client, fired) == state(client, fired_on_failure) == "succeeded",
        30,
        "the triggered touch jobs to succeed",
    )
    wait_for(lambda: state(client, "src-skip") == "succeeded" and owed(client) == 0, 10, "drain")

    assert state(client, "src-fail") == "failed"
    assert touches(client, fired) == touches(client, fired_on_failure) == 1
    assert triggered_records(client) == [KEYS.job(fired), KEYS.job(fired_on_failure)]
    assert reports_of(client, fired) == reports_of(client, fired_on_failure) == 1
    listed = run_bot(trigger_env, "triggers", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)] == [
        ON_EMIT,
        ON_EMIT_FAILED,
        ON_EMIT_PIPELINE,
        ON_SQUARES,
    ]


def test_an_op_starts_a_pipeline_whose_report_starts_an_op(
    workers: Callable[..., WorkerProcess],
    trigger_env: dict[str, str],
    bot_app: BotApp,
    client: redis.Redis,
) -> None:
    workers("w1", extra_env=trigger_env)
    wait_for(lambda: trigger_group(client), 20, "the worker's trigger consumer group")

    emit(bot_app, "src-p", mode="pipeline")
    run_id = trigger_job_id(ON_EMIT_PIPELINE, "src-p", 180)
    after_run = trigger_job_id(ON_SQUARES, run_id)
    wait_for(lambda: state(client, after_run) == "succeeded", 45, "the touch after the run")

    run = client.hgetall(KEYS.pipeline(run_id))
    assert run["state"] == "succeeded", run
    assert reports_of(client, run_id) == 1 and touches(client, after_run) == 1
    assert not client.exists(KEYS.job(trigger_job_id(ON_EMIT, "src-p")))  # it said None


def test_a_trigger_fires_once_per_report_under_a_consumer_kill_and_a_redelivery(
    workers: Callable[..., WorkerProcess],
    consumers: Callable[[str], TriggerProcess],
    trigger_env: dict[str, str],
    bot_app: BotApp,
    client: redis.Redis,
) -> None:
    workers("w1", extra_env={**trigger_env, "BOT_TRIGGERS": "false"})
    doomed = consumers("doomed")
    sources = [f"src-{n}" for n in range(10)]
    for job_id in sources:  # each report's trigger takes 0.3 s: the consumer holds a backlog
        emit(bot_app, job_id, tag=job_id, trigger_sleep_s=0.3)
    wait_for(lambda: doomed.status().get("sink", {}).get("fired", 0) >= 3, 30, "3 fired")

    doomed.kill()
    held = client.xpending(KEYS.outbox, TRIGGER_GROUP)
    survivor = consumers("survivor")
    fired = {job_id: trigger_job_id(ON_EMIT, job_id) for job_id in sources}
    wait_for(
        lambda: all(state(client, j) == "succeeded" for j in fired.values()),
        40,
        "every triggered touch job to succeed",
    )
    wait_for(lambda: owed(client) == 0, 10, "the trigger group to owe nothing")

    assert held["pending"] >= 2, held  # the killed consumer held reports it had not acked
    assert survivor.status()["claimed"] >= 1
    assert {j: touches(client, t) for j, t in fired.items()} == dict.fromkeys(sources, 1)
    assert triggered_records(client) == sorted(KEYS.job(t) for t in fired.values())
    assert all(reports_of(client, t) == 1 for t in fired.values())

    # A forced redelivery: the report of src-0 appended again, as a replay would.
    [report] = [f for _, f in client.xrange(KEYS.outbox) if f["job_id"] == "src-0"]
    before = survivor.status()["sink"]["already_fired"]
    client.xadd(KEYS.outbox, report)
    wait_for(
        lambda: survivor.status()["sink"]["already_fired"] == before + 1,
        10,
        "the survivor to see the report again",
    )

    assert owed(client) == 0 and client.llen("celery") == 0
    assert touches(client, fired["src-0"]) == 1 and len(triggered_records(client)) == 10
