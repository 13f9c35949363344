"""The Celery tasks of pipeline runs besides their ops: `pipelines.<name>` starts a run,
`bot.pipeline.collect` joins a parallel stage, `bot.pipeline.finish` ends a run `succeeded`.

`pipelines.<name>` is what any Celery client sends to start a run (`send_task(
"pipelines.difference_of_squares", kwargs={...})`); its task id is the run id. It marks the
run `running` (run_start.lua) and sends the run's canvas (bot/flows/canvas.py). Delivered again
(its worker died before the ack), it sends the canvas again, which runs nothing twice: each stage
job's id is fixed by the run id. A payload the first stage refuses ends the run `failed` with
the field errors in its report, never retried.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject

from bot.errors import InvalidJobId, PayloadRejected
from bot.flows.canvas import collected, run_canvas
from bot.flows.run_end import end_run, run_store
from bot.flows.run_record import RunRecord, plan
from bot.flows.submit import check_run_id
from bot.jobs.envelope import payload_digest
from bot.jobs.outcome import error_of
from bot.jobs.reports import FINAL_STATES
from bot.ops import check_size
from bot.pipelines.registry import PipelineSpec
from bot.store.connect import UNREACHABLE

logger = logging.getLogger(__name__)

#: Seconds a start task waits before handing its message back when Redis does not answer.
REDIS_BACKOFF_S = 1.0


class PipelineTask(Task):
    """Base of every `pipelines.<name>` task; `pipeline_spec` is set per task."""

    pipeline_spec: PipelineSpec
    typing = False  # the payload is validated with field-level errors in start_run


def start_run(task: PipelineTask, /, *args: Any, **payload: Any) -> dict[str, Any]:
    """The body of `pipelines.<name>`: start run `task.request.id` with `payload`."""
    run_id = str(task.request.id)
    try:
        check_run_id(run_id)
    except InvalidJobId as exc:
        logger.error("pipeline %s: not started: %s", task.pipeline_spec.name, exc)
        raise
    try:
        return _start(task, run_id, args, payload)
    except UNREACHABLE as exc:
        logger.warning("pipeline run %s: Redis unreachable (%s); message handed back", run_id, exc)
        time.sleep(REDIS_BACKOFF_S)
        raise Reject(str(exc), requeue=True) from None


def _start(
    task: PipelineTask, run_id: str, args: tuple[Any, ...], payload: dict[str, Any]
) -> dict[str, Any]:
    spec, app = task.pipeline_spec, task.app
    runs = run_store(app)
    digest = payload_digest(list(args), payload)
    verdict = runs.start(run_id, spec.name, plan(spec, run_id), app.settings.job_ttl, digest)
    if verdict in ("ended", "reused"):
        log = logger.warning if verdict == "reused" else logger.info
        log("pipeline run %s: not started again (%s)", run_id, verdict)
        return {"run_id": run_id, "started": False, "reason": verdict}
    try:
        _check_payload(spec, args, payload, app.settings.max_payload_bytes)
    except PayloadRejected as exc:
        end_run(app, run_id, "failed", error=error_of(exc))
        return {"run_id": run_id, "started": False, "reason": "rejected"}
    run_canvas(app, spec, run_id, payload).apply_async()
    logger.info("pipeline run %s of %s %s", run_id, spec.name, verdict)
    return {"run_id": run_id, "started": True}


def _check_payload(
    spec: PipelineSpec, args: tuple[Any, ...], payload: dict[str, Any], limit: int
) -> None:
    if args:
        raise PayloadRejected(
            f"invalid payload for pipeline {spec.name!r}: send the payload as keyword "
            "arguments (kwargs), not positional ones",
            [{"loc": ["args"], "msg": "positional arguments are not accepted", "type": "args"}],
        )
    check_size(payload, limit)
    spec.validate(payload)


def collect_results(task: Task, /, results: Any, *, run_id: str, index: int) -> dict[str, Any]:
    """The body of `bot.pipeline.collect`: a parallel stage's outputs, as the next stage's
    input `{"results": [...]}`."""
    logger.debug("pipeline run %s: stage %s joined", run_id, index)
    return collected(results)


def finish_run(task: Task, /, output: Any = None, *, run_id: str) -> Any:
    """The body of `bot.pipeline.finish`: end the run `succeeded` with the last stage's output,
    once every job of its last stage has ended (a finish sent by hand before that is refused)."""
    runs = run_store(task.app)
    record = runs.read(run_id)
    if record is None or record.final:
        return output
    if not last_stage_ended(record):
        logger.warning("pipeline run %s: finish refused, its last stage has not ended", run_id)
        return output
    end_run(task.app, run_id, "succeeded", result=output)
    return output


def last_stage_ended(record: RunRecord) -> bool:
    if not record.stages:
        return False
    return all(state in FINAL_STATES for state in record.stages[-1].states)
