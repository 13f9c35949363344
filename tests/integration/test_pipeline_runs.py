"""Pipeline runs against a real Redis, without workers: submission, the run record's scripts,
the canvas a start task sends, the finish guard and the run audit."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bot.application import BotApp, create_app
from bot.client import Client
from bot.errors import InvalidJobId, PayloadRejected, UnknownPipeline
from bot.flows.run_audit import RunAudit
from bot.flows.run_end import end_run, run_store
from bot.flows.run_record import plan
from bot.jobs.reports import Report, ReportError
from bot.jobs.stage import STAGE_HEADER, StageContext, parse
from bot.pipelines import PIPELINES
from bot.runtime.process import RUNTIME
from tests.support.processes import FAULT_OPS, PIPELINE_OPS

pytestmark = pytest.mark.integration


@pytest.fixture
def app(make_settings: Callable[..., Any]) -> Iterator[BotApp]:
    app = create_app(
        make_settings(ops_modules=[FAULT_OPS, PIPELINE_OPS], pipeline_stall_timeout=0.5),
        fleet=False,
    )
    yield app
    app.close()


def outbox(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(fields["report"]) for _, fields in client.xrange("bot:outbox")]


def started(app: BotApp, name: str, run_id: str) -> None:
    verdict = run_store(app).start(run_id, name, plan(PIPELINES.get(name), run_id), 60)
    assert verdict == "started"


@pytest.mark.parametrize(
    ("name", "payload", "run_id", "error", "says"),
    [
        ("difference_of_squares", {"a": "x", "b": 1}, None, PayloadRejected, "stage 1, op 'scale'"),
        ("nope", {}, None, UnknownPipeline, "unknown pipeline 'nope'"),
        ("fails_stop", {}, "r" * 181, InvalidJobId, "at most 180"),
    ],
)
def test_a_refused_submission_enqueues_nothing(
    app: BotApp, client: redis.Redis, name: str, payload: Any, run_id: Any, error: Any, says: str
) -> None:
    with pytest.raises(error) as raised:
        Client(app).submit_pipeline(name, payload, run_id=run_id)

    assert says in str(raised.value)
    assert client.dbsize() == 0


def test_a_run_id_starts_one_run(app: BotApp, client: redis.Redis) -> None:
    first = Client(app).submit_pipeline("fails_stop", {"seconds": 1}, run_id="run-a")
    again = Client(app).submit_pipeline("fails_stop", {"seconds": 1}, run_id="run-a")

    assert (first.job_id, first.enqueued, again.enqueued) == ("run-a", True, False)
    assert client.llen("celery") == 1
    record = Client(app).pipeline_status("run-a")
    assert record is not None and (record.state, record.pipeline) == ("queued", "fails_stop")


def test_the_start_task_sends_the_first_stage_with_its_chain(
    app: BotApp, client: redis.Redis
) -> None:
    app.tasks["pipelines.difference_of_squares"].apply(
        kwargs={"a": 3, "b": 1}, task_id="run-b"
    ).get()

    message = json.loads(client.lrange("celery", 0, -1)[0])
    headers = message["headers"]
    args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
    assert (headers["task"], headers["id"]) == ("ops.scale", "run-b.s1")
    assert (args, kwargs) == ([], {"a": 3, "b": 1})
    stage = parse(headers[STAGE_HEADER])
    assert stage is not None and (stage.run_id, stage.index, stage.stages) == ("run-b", 1, 3)
    rest = [sig["task"] for sig in reversed(embed["chain"])]
    assert rest == ["celery.chord", "ops.product", "bot.pipeline.finish"]
    chord = embed["chain"][-1]["kwargs"]
    assert [sig["options"]["task_id"] for sig in chord["header"]["kwargs"]["tasks"]] == [
        "run-b.s2.1",
        "run-b.s2.2",
    ]
    record = Client(app).pipeline_status("run-b")
    assert record is not None and record.state == "running" and record.stage == 1
    assert [view.job_ids for view in record.stages] == [
        ("run-b.s1",),
        ("run-b.s2.1", "run-b.s2.2"),
        ("run-b.s3",),
    ]


def test_a_payload_sent_past_the_client_ends_the_run_failed_with_field_errors(
    app: BotApp, client: redis.Redis
) -> None:
    app.tasks["pipelines.difference_of_squares"].apply(kwargs={"a": "x"}, task_id="run-c").get()

    (report,) = outbox(client)
    assert (report["job_id"], report["op"], report["status"]) == (
        "run-c",
        "pipelines.difference_of_squares",
        "failed",
    )
    assert {tuple(d["loc"]) for d in report["error"]["details"]} == {("a",), ("b",)}
    assert client.llen("celery") == 0  # no stage was sent


def test_start_verdicts(app: BotApp) -> None:
    runs = run_store(app)
    stages = plan(PIPELINES.get("fails_stop"), "run-d")

    assert runs.start("run-d", "fails_stop", stages, 60) == "started"
    assert runs.start("run-d", "fails_stop", stages, 60) == "running"
    assert runs.start("run-d", "fails_continue", stages, 60) == "reused"
    end_run(app, "run-d", "failed", error=ReportError(type="X", message="x"))
    assert runs.start("run-d", "fails_stop", stages, 60) == "ended"


def test_a_run_ends_once_with_one_report(app: BotApp, client: redis.Redis) -> None:
    started(app, "fails_stop", "run-e")

    first = end_run(app, "run-e", "succeeded", result={"x": 1})
    second = end_run(app, "run-e", "failed", error=ReportError(type="X", message="late"))

    assert first.ended and not second.ended and second.state == "succeeded"
    assert client.hget("bot:stats", "pipeline_runs_succeeded") == "1"  # counted once
    assert client.hget("bot:stats", "pipeline_runs_failed") is None
    (report,) = outbox(client)
    Report.model_validate(report)
    assert report["result"] == {"x": 1}
    assert [s["stage"] for s in report["stages"]] == [1, 2, 3]
    assert client.zcard("bot:pipelines:running") == 0


def test_a_late_mark_never_hides_a_final_one(app: BotApp) -> None:
    started(app, "fails_stop", "run-f")
    runs = run_store(app)

    runs.stage("run-f", 2, 1, "succeeded", 60)
    runs.stage("run-f", 2, 1, "running", 60)
    runs.stage("run-f", 2, 1, "skipped", 60)  # a copy of its message after the run ended
    runs.stage("run-f", 1, 1, "running", 60)

    record = runs.read("run-f")
    assert record is not None
    assert [v.states for v in record.stages] == [("running",), ("succeeded",), ("queued",)]
    assert record.stage == 2  # the current stage never goes back


def test_finish_is_refused_before_the_last_stage_ended(app: BotApp) -> None:
    started(app, "fails_stop", "run-g")
    finish = app.tasks["bot.pipeline.finish"]

    finish.apply(args=({"executions": 1},), kwargs={"run_id": "run-g"}).get()
    assert run_store(app).state("run-g") == "running"

    run_store(app).stage("run-g", 3, 1, "succeeded", 60)
    finish.apply(args=({"executions": 1},), kwargs={"run_id": "run-g"}).get()
    assert run_store(app).state("run-g") == "succeeded"


def dead_job(client: redis.Redis, job_id: str) -> None:
    error = {"type": "JobDead", "message": "recovered 2 times"}
    client.hset(
        f"bot:job:{job_id}", mapping={"state": "dead", "outcome": json.dumps({"error": error})}
    )


def test_the_audit_fails_a_run_whose_chord_member_ended_dead(
    app: BotApp, client: redis.Redis
) -> None:
    started(app, "poison_chord", "run-h")
    runs = run_store(app)
    runs.stage("run-h", 1, 1, "succeeded", 60)
    runs.stage("run-h", 2, 1, "succeeded", 60)
    runs.stage("run-h", 2, 2, "running", 60)
    dead_job(client, "run-h.s2.2")  # its hook never ran: the chord would wait forever

    assert RunAudit(app).run_once()

    record = runs.read("run-h")
    assert record is not None and record.state == "failed"
    assert record.stages[1].states == ("succeeded", "dead")
    (report,) = outbox(client)
    assert report["error"]["type"] == "StageFailed"
    assert report["error"]["message"].startswith("stage 2 (crash) ended dead")
    assert report["error"]["details"][0]["job_id"] == "run-h.s2.2"


def test_the_audit_lets_a_continue_stage_pass_its_default_on(
    app: BotApp, client: redis.Redis
) -> None:
    started(app, "fails_continue", "run-i")
    run_store(app).stage("run-i", 2, 1, "running", 60)
    dead_job(client, "run-i.s2")

    RunAudit(app).run_once()

    record = run_store(app).read("run-i")
    assert record is not None and record.state == "running"
    assert record.stages[1].states == ("dead",)
    assert outbox(client) == []


def test_the_audit_ends_a_stalled_run_but_not_a_busy_one(app: BotApp, client: redis.Redis) -> None:
    started(app, "fails_stop", "run-j")
    started(app, "fails_stop", "run-k")
    client.hset("bot:job:run-k.s1", "state", "running")  # a long stage: not stalled
    time.sleep(0.6)  # past BOT_PIPELINE_STALL_TIMEOUT (0.5 s here)

    RunAudit(app).run_once()

    assert run_store(app).state("run-j") == "failed"
    assert run_store(app).state("run-k") == "running"
    (report,) = outbox(client)
    assert report["error"]["type"] == "PipelineStalled"
    assert report["error"]["message"].startswith("stage 1 stalled")


def test_one_audit_at_a_time(app: BotApp, client: redis.Redis) -> None:
    client.set("bot:pipelines:audit:lock", "another", px=5000)

    assert not RunAudit(app).run_once()


@pytest.fixture
def owner(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run tasks as worker instance "A", with a live lease, as a worker's pool child would."""
    monkeypatch.setattr(RUNTIME, "instance_id", "A")
    client.set("bot:lease:A", "1", px=60_000)
    return "A"


def stage_header(run_id: str, index: int, **policy: Any) -> dict[str, Any]:
    context = StageContext(run_id, "fails_continue", index, 1, 3, **policy)
    return {STAGE_HEADER: context.header()}


def test_a_stage_delivered_again_after_its_job_ended_replays_its_result(
    app: BotApp, client: redis.Redis, owner: str
) -> None:
    started(app, "fails_continue", "run-l")
    first_stage = app.tasks["ops.p_begin"]

    first = first_stage.apply(
        kwargs={"seconds": 2}, task_id="run-l.s1", headers=stage_header("run-l", 1)
    )
    again = first_stage.apply(
        kwargs={"seconds": 2}, task_id="run-l.s1", headers=stage_header("run-l", 1)
    )

    # the body ran once; the second delivery passed the recorded output on again
    assert first.get() == again.get() == {"seconds": 2.0}
    assert client.get("bot:faults:touches:run-l.s1") == "1"
    record = run_store(app).read("run-l")
    assert record is not None and record.stages[0].states == ("succeeded",)
    assert [f["job_id"] for _, f in client.xrange("bot:outbox")] == ["run-l.s1"]


def test_a_continue_stage_passes_its_default_on_and_a_stop_stage_ends_the_run(
    app: BotApp, client: redis.Redis, owner: str
) -> None:
    started(app, "fails_continue", "run-m")
    failing = app.tasks["ops.p_fail"]
    header = stage_header("run-m", 2, on_failure="continue", default={"seconds": 0.25})

    kept_on = failing.apply(args=({"seconds": 1},), task_id="run-m.s2", headers=header)
    assert kept_on.get() == {"seconds": 0.25}
    assert run_store(app).state("run-m") == "running"

    started(app, "fails_continue", "run-n")
    stopped = failing.apply(
        args=({"seconds": 1},), task_id="run-n.s2", headers=stage_header("run-n", 2)
    )
    assert stopped.failed() and isinstance(stopped.result, ValueError)
    record = run_store(app).read("run-n")
    assert record is not None and record.state == "failed"
    assert record.outcome["error"]["message"].startswith("stage 2 (p_fail) ended failed")


def test_a_stage_of_an_ended_run_is_not_run(app: BotApp, client: redis.Redis, owner: str) -> None:
    started(app, "fails_continue", "run-o")
    end_run(app, "run-o", "failed", error=ReportError(type="X", message="over"))

    late = app.tasks["ops.p_last"].apply(
        args=({"seconds": 1},), task_id="run-o.s3", headers=stage_header("run-o", 3)
    )

    assert late.state == "IGNORED"
    assert not client.exists("bot:job:run-o.s3")
    record = run_store(app).read("run-o")
    assert record is not None and record.stages[2].states == ("skipped",)
