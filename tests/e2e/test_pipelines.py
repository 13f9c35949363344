"""Pipeline runs with real `celery -A bot worker` processes (issue 11): a run's stages as
jobs, its record and its one report, what Flower shows, the failure policies, a worker killed
mid-run, and a parallel member that ends `dead`.

The pipelines and their ops are test-only (tests/support/pipeline_ops.py), besides the example
`difference_of_squares` of tasks/squares.py; each op counts its executions per job id.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bot.application import BotApp, create_app
from bot.client import Client
from bot.flows.run_record import RunRecord
from tests.e2e.test_recovery import LEASE_ENV, kill_group, owner_worker, touches
from tests.support.flower import task_info
from tests.support.processes import FAULT_OPS, PIPELINE_OPS, WorkerProcess, run_bot, wait_for

pytestmark = pytest.mark.e2e

OPS_ENV = {"BOT_OPS_MODULES": f"{FAULT_OPS},{PIPELINE_OPS}"}


@pytest.fixture
def app(make_settings: Callable[..., Any]) -> Iterator[BotApp]:
    app = create_app(make_settings(ops_modules=[FAULT_OPS, PIPELINE_OPS]), fleet=False)
    yield app
    app.close()


def reports(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(fields["report"]) for _, fields in client.xrange("bot:outbox")]


def reports_per_job(client: redis.Redis) -> Counter[str]:
    return Counter(report["job_id"] for report in reports(client))


def run_to_end(app: BotApp, name: str, run_id: str, timeout_s: float = 30, **payload: Any):
    Client(app).submit_pipeline(name, payload, run_id=run_id)
    return Client(app).wait_pipeline(run_id, timeout=timeout_s)


def states(record: RunRecord) -> list[tuple[str, ...]]:
    return [view.states for view in record.stages]


def test_a_pipeline_runs_its_stages_as_jobs_and_ends_with_one_report(
    app: BotApp,
    client: redis.Redis,
    env: dict[str, str],
    flower: str,
    workers: Callable[..., WorkerProcess],
) -> None:
    workers("w1", extra_env=OPS_ENV)

    record = run_to_end(app, "difference_of_squares", "dos-1", a=5, b=3, factor=2)

    # (5*2)^2 - (3*2)^2: scale, then sum and subtract side by side, then product
    assert (record.state, record.outcome["result"], record.stage) == ("succeeded", 64, 3)
    assert states(record) == [("succeeded",), ("succeeded", "succeeded"), ("succeeded",)]
    jobs = ["dos-1.s1", "dos-1.s2.1", "dos-1.s2.2", "dos-1.s3"]
    assert [j for view in record.stages for j in view.job_ids] == jobs
    assert reports_per_job(client) == Counter({job: 1 for job in [*jobs, "dos-1"]})
    (run_report,) = [r for r in reports(client) if r["job_id"] == "dos-1"]
    assert (run_report["op"], run_report["status"], run_report["result"]) == (
        "pipelines.difference_of_squares",
        "succeeded",
        64,
    )
    assert [[j["state"] for j in s["jobs"]] for s in run_report["stages"]] == [
        ["succeeded"],
        ["succeeded", "succeeded"],
        ["succeeded"],
    ]
    # Flower shows the run's start and each stage as its own task
    names = {"dos-1": "pipelines.difference_of_squares", "dos-1.s1": "ops.scale"}
    names |= {"dos-1.s2.1": "ops.sum", "dos-1.s2.2": "ops.subtract", "dos-1.s3": "ops.product"}
    for task_id, name in names.items():
        shown = wait_for(
            lambda t=task_id: (info := task_info(flower, t)).get("state") == "SUCCESS" and info,
            20,
            f"Flower to show {task_id}",
        )
        assert shown["name"] == name  # type: ignore[index]

    # Any Celery client starts a run by the task name; the bot CLI starts and shows one
    app.send_task("pipelines.difference_of_squares", kwargs={"a": 2, "b": 1}, task_id="dos-2")
    assert Client(app).wait_pipeline("dos-2", timeout=30).outcome["result"] == 3
    cli_env = {**env, **OPS_ENV}
    started = run_bot(
        cli_env, "pipeline", "submit", "difference_of_squares", "a=4", "b=1", "--wait"
    )
    assert (started.returncode, started.stdout.strip()) == (0, "15"), started.stderr
    shown = run_bot(cli_env, "pipeline", "status", "dos-1")
    assert "stage 2: sum succeeded (dos-1.s2.1), subtract succeeded (dos-1.s2.2)" in shown.stdout
    listed = run_bot(cli_env, "pipeline", "list", "--json")
    assert (listed.returncode, json.loads(listed.stdout)) == (0, [])  # every run has ended


def test_failure_policies_stop_the_run_or_pass_the_default_on(
    app: BotApp, client: redis.Redis, workers: Callable[..., WorkerProcess]
) -> None:
    workers("w1", extra_env=OPS_ENV)

    kept_on = run_to_end(app, "fails_continue", "cont-1", seconds=0)
    stopped = run_to_end(app, "fails_stop", "stop-1", seconds=0)
    retried = run_to_end(app, "flaky_mid", "flaky-1", seconds=0)

    # "continue": stage 2's job failed (with its own report), its default went on to stage 3
    assert kept_on.state == "succeeded" and kept_on.outcome["result"] == {"executions": 1}
    assert states(kept_on) == [("succeeded",), ("failed",), ("succeeded",)]
    assert client.hget("bot:job:cont-1.s2", "state") == "failed"
    # "stop": the run ended failed naming the stage; stage 3 never ran
    assert stopped.state == "failed"
    error = stopped.outcome["error"]
    assert error["message"].startswith("stage 2 (p_fail) ended failed: p_fail fails on purpose")
    assert states(stopped) == [("succeeded",), ("failed",), ("queued",)]
    assert not client.exists("bot:job:stop-1.s3")
    # a transient failure is retried within its stage, which still reports to its run
    assert retried.state == "succeeded"
    assert states(retried) == [("succeeded",), ("succeeded",), ("succeeded",)]
    assert touches(client, "flaky-1.s2") == 2
    assert reports_per_job(client) == Counter(
        {"cont-1.s1": 1, "cont-1.s2": 1, "cont-1.s3": 1, "cont-1": 1}
        | {"stop-1.s1": 1, "stop-1.s2": 1, "stop-1": 1}
        | {"flaky-1.s1": 1, "flaky-1.s2": 1, "flaky-1.s3": 1, "flaky-1": 1}
    )


def test_kill9_of_the_worker_running_stage_2_reruns_stage_2_only(
    app: BotApp, client: redis.Redis, workers: Callable[..., WorkerProcess]
) -> None:
    pair = [
        workers("w1", extra_env={**OPS_ENV, **LEASE_ENV}),
        workers("w2", extra_env={**OPS_ENV, **LEASE_ENV}),
    ]
    Client(app).submit_pipeline("recover_mid", {"seconds": 3}, run_id="mid-1")
    victim = owner_worker(client, "mid-1.s2", pair)
    (running,) = Client(app).running_pipelines()
    assert (running.run_id, running.stage) == ("mid-1", 2)

    os.kill(victim.pid, signal.SIGKILL)
    try:
        record = Client(app).wait_pipeline("mid-1", timeout=40)
    finally:
        kill_group(victim)

    assert record.state == "succeeded"
    assert record.outcome["result"] == {"executions": 1}  # stage 3's body ran once
    assert (touches(client, "mid-1.s1"), touches(client, "mid-1.s2")) == (1, 2)
    assert client.hget("bot:job:mid-1.s2", "recoveries") == "1"
    assert reports_per_job(client) == Counter(
        {"mid-1.s1": 1, "mid-1.s2": 1, "mid-1.s3": 1, "mid-1": 1}
    )
    assert Client(app).running_pipelines() == []


def test_a_parallel_member_that_ends_dead_fails_the_run(
    app: BotApp, client: redis.Redis, workers: Callable[..., WorkerProcess]
) -> None:
    workers("w1", extra_env={**OPS_ENV, **LEASE_ENV, "BOT_MAX_RECOVERIES": "1"})

    # `crash` kills its pool child every time: it ends dead after BOT_MAX_RECOVERIES
    record = run_to_end(app, "poison_chord", "poison-1", timeout_s=60)

    assert record.state == "failed"
    assert record.outcome["error"]["message"].startswith("stage 2 (crash) ended dead")
    assert states(record) == [("succeeded",), ("succeeded", "dead"), ("queued",)]
    assert not client.exists("bot:job:poison-1.s3")
    assert reports_per_job(client)["poison-1"] == 1
    assert client.hget("bot:job:poison-1.s2.2", "state") == "dead"
