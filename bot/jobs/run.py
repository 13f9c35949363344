"""How a worker runs one delivery of an op: decode -> guard -> execute -> record.

`run_op` is the body of every `ops.*` task. The guard (acquire) runs first so a duplicate
delivery is acked without running; the payload is then validated (a bad one is rejected, never
retried); the op body runs; its outcome is recorded under the fence it acquired.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from pydantic import BaseModel

from bot.base.backoff import full_jitter
from bot.errors import BotError, PayloadRejected
from bot.jobs import celery_meta
from bot.jobs.envelope import ENQUEUED_AT_HEADER, enqueued_at_ms, payload_digest
from bot.jobs.outcome import Attempt, error_of
from bot.jobs.progress import bind as bind_progress
from bot.jobs.progress import unbind as unbind_progress
from bot.jobs.record import JobRecord
from bot.jobs.stage import STAGE_HEADER, StageContext, StageHooks, stage_of
from bot.jobs.store import Acquired, Delivery, ResultMeta, Skipped
from bot.ops import OpSpec, check_size
from bot.runtime.process import RUNTIME
from bot.store.connect import UNREACHABLE

logger = logging.getLogger(__name__)

#: Tries of job acquire across a Redis error before the message is handed back to the broker.
ACQUIRE_ATTEMPTS = 5


class JobDead(BotError):
    """The job was recovered more than BOT_MAX_RECOVERIES times (a poison job)."""


class StageFailed(BotError):
    """A pipeline stage's job had ended without success when its message came again: the
    run goes no further (its stage's failure policy is "stop")."""


class OpTask(Task):
    """Base class of every `ops.*` task. `op_spec` is set per task by `bot.application`."""

    op_spec: OpSpec
    typing = False  # the payload is validated by pydantic in run_op, with field-level errors
    # Hands a job back (queued, recoveries + 1) when its pool child dies, before Celery
    # requeues the message: see bot/jobs/child_lost.py.
    Request = "bot.jobs.child_lost:OpRequest"
    # Checks each message before Celery unpacks it, so none can stop the worker: see
    # bot/jobs/intake.py.
    Strategy = "bot.jobs.intake:guarded"
    #: How a job that is a pipeline stage reports to its run (set by bot.application).
    stage_hooks: StageHooks | None = None


def delivery_of(
    task: Task, args: tuple[Any, ...], payload: dict[str, Any], *, canvas: bool = False
) -> Delivery:
    """What the job store records of this delivery. `canvas`: the stored message keeps the
    message's chain, chord, group and headers too, so a job published again from its record
    (bot/recovery/requeue.py) still continues its pipeline run."""
    request = task.request
    info = request.delivery_info or {}
    properties = getattr(request, "properties", None) or {}
    tag = properties.get("delivery_tag") or info.get("delivery_tag") or ""
    queue = info.get("routing_key") or task.app.settings.default_queue
    message = {"task": task.name, "args": list(args), "kwargs": payload, "queue": queue}
    if canvas:
        message["options"] = canvas_options(request)
    return Delivery(
        job_id=request.id,
        op=task.op_spec.name,
        queue=queue,
        delivery_tag=str(tag),
        message=message,
        enqueued_at_ms=enqueued_at_ms(getattr(request, ENQUEUED_AT_HEADER, None)),
        digest=payload_digest(list(args), payload),
    )


def canvas_options(request: Any) -> dict[str, Any]:
    """The options of Celery's `send_task` that put a message back in its canvas."""
    options = {
        "chain": request.chain,
        "chord": request.chord,
        "group_id": request.group,
        "group_index": request.group_index,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "headers": {STAGE_HEADER: getattr(request, STAGE_HEADER, None)},
    }
    return {name: value for name, value in options.items() if value is not None}


def decode(spec: OpSpec, args: tuple[Any, ...], payload: dict[str, Any], limit: int) -> BaseModel:
    """The validated payload, or PayloadRejected. Positional arguments (Celery clients in
    other languages send them so) bind to the op's fields in declared order."""
    check_size({"args": list(args), **payload} if args else payload, limit)
    return spec.validate(bind_positional(spec, args, payload))


def bind_positional(spec: OpSpec, args: tuple[Any, ...], payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` with `args` bound to the op's fields in declared order; PayloadRejected for
    more arguments than fields, or a field given both ways."""
    if not args:
        return payload
    fields = list(spec.payload_model.model_fields)
    if len(args) > len(fields):
        msg = f"at most {len(fields)} positional arguments ({', '.join(fields) or 'none'})"
        raise PayloadRejected(
            f"invalid payload for op {spec.name!r}: {len(args)} positional arguments, {msg}",
            [{"loc": ["args"], "msg": f"takes {msg}", "type": "too_many_args"}],
        )
    bound = dict(zip(fields, args, strict=False))
    twice = sorted(set(bound) & set(payload))
    if twice:
        raise PayloadRejected(
            f"invalid payload for op {spec.name!r}: {', '.join(twice)} given both "
            "positionally and by keyword",
            [
                {"loc": [name], "msg": "given both positionally and by keyword", "type": "twice"}
                for name in twice
            ],
        )
    return {**bound, **payload}


def guard(task: OpTask, delivery: Delivery) -> Attempt:
    """Acquire the job for this worker, or stop this delivery without running it."""
    verdict = acquire(task, delivery)
    if isinstance(verdict, Skipped):
        raise Ignore()
    return Attempt(task.app, delivery, verdict, RUNTIME.owner())


def acquire(task: OpTask, delivery: Delivery) -> Acquired | Skipped:
    """The job acquired for this worker, or why this delivery must not run (logged)."""
    # Celery's STARTED meta is written with the record, in one step (None: Celery writes it)
    started_meta = celery_meta.started(task) if celery_meta.writes_started(task) else None
    verdict = acquire_or_requeue(task, delivery, started_meta)
    if isinstance(verdict, Skipped):
        log = logger.warning if verdict.reason == "reused" else logger.info
        log("job %s: delivery skipped (%s: %s)", delivery.job_id, verdict.reason, verdict.detail)
    return verdict


def acquire_or_requeue(
    task: OpTask, delivery: Delivery, started_meta: ResultMeta | None = None
) -> Acquired | Skipped:
    """Acquire through the worker's acquire breaker, retrying a Redis error with backoff; if
    Redis stays unreachable, hand the message back to the broker (`Reject(requeue=True)`):
    the job has not started, so it must not fail or be lost for a Redis hiccup."""
    settings = task.app.settings
    breaker = RUNTIME.acquire_breaker
    problem = "acquire breaker open"
    claim = uuid.uuid4().hex  # one per attempt: a call repeated after a lost reply is safe
    for attempt in range(ACQUIRE_ATTEMPTS):
        if breaker.allow():
            try:
                verdict = task.app.job_store().acquire(
                    delivery,
                    RUNTIME.owner(),
                    os.getpid(),
                    claim,
                    max_recoveries=settings.max_recoveries,
                    result_meta=started_meta,
                )
            except UNREACHABLE as exc:
                breaker.record_failure()
                problem = f"{type(exc).__name__}: {exc}"
            else:
                breaker.record_success()
                return verdict
        delay = full_jitter(attempt, settings.retry_base_delay, settings.retry_max_delay)
        logger.warning(
            "job %s: cannot acquire (%s); again in %.1fs", delivery.job_id, problem, delay
        )
        time.sleep(delay)
    logger.error("job %s: cannot acquire (%s); handing the message back", delivery.job_id, problem)
    raise Reject(problem, requeue=True)


def run_op(task: OpTask, /, *args: Any, **payload: Any) -> Any:
    """The body of every `ops.*` task. `task` is positional-only so that a payload field
    named `task` or `self` reaches the payload model instead of colliding with it."""
    stage = stage_of(task.request) if task.stage_hooks is not None else None
    if stage is not None:
        return run_stage(task, stage, args, payload)
    attempt = guard(task, delivery_of(task, args, payload))
    try:
        return run_attempt(task, attempt, args, payload)
    except JobEnded as ended:
        raise ended.error from None


class JobEnded(Exception):
    """An attempt ended its job without success (`status`: rejected, failed or dead), with its
    outcome and report recorded; `error` is why."""

    def __init__(self, status: str, error: BaseException) -> None:
        super().__init__(status)
        self.status = status
        self.error = error


def run_attempt(
    task: OpTask, attempt: Attempt, args: tuple[Any, ...], payload: dict[str, Any]
) -> Any:
    """decode -> execute -> record, for a job this attempt acquired: its result, or
    `JobEnded`. Retry, Ignore and Reject pass through to Celery."""
    settings = task.app.settings
    if attempt.acquired.exhausted:  # decided by acquire.lua: this attempt must not run
        recoveries = attempt.acquired.recoveries
        dead = JobDead(
            f"job recovered {recoveries} times, over BOT_MAX_RECOVERIES ({settings.max_recoveries})"
        )
        _finish_or_ignore(attempt, "dead", error=dead)
        raise JobEnded("dead", dead)
    try:
        model = decode(task.op_spec, args, payload, settings.max_payload_bytes)
    except PayloadRejected as exc:
        _finish_or_ignore(attempt, "rejected", error=exc)
        raise JobEnded("rejected", exc) from None
    try:
        result = execute(task, attempt, model)
    except (Retry, Ignore, Reject):
        raise
    except Exception as exc:  # execute recorded the job `failed`
        raise JobEnded("failed", exc) from None
    # Celery's SUCCESS meta goes with the record, in one step (None: Celery writes it)
    meta = celery_meta.succeeded(task, result) if celery_meta.folds(task) else None
    _finish_or_ignore(attempt, "succeeded", result=result, result_meta=meta)
    if meta is not None:
        celery_meta.written(task)
    return result


def execute(task: OpTask, attempt: Attempt, model: BaseModel) -> Any:
    """Run the op body; a transient error is retried with backoff, anything else fails."""
    spec = task.op_spec
    bind_progress(task)
    try:
        return spec.call(model)
    except spec.transient as exc:
        if task.request.retries >= spec.max_retries:
            _finish_or_ignore(attempt, "failed", error=exc)
            raise
        settings = task.app.settings
        countdown = full_jitter(
            task.request.retries, settings.retry_base_delay, settings.retry_max_delay
        )
        if not attempt.record_retrying(exc, countdown):
            raise Ignore() from None
        raise task.retry(exc=exc, countdown=countdown, max_retries=spec.max_retries) from None
    except Exception as exc:
        _finish_or_ignore(attempt, "failed", error=exc)
        raise
    finally:
        unbind_progress()


def _finish_or_ignore(attempt: Attempt, status: str, **outcome: Any) -> None:
    if not attempt.finish(status, **outcome):
        raise Ignore()


def run_stage(task: OpTask, stage: StageContext, args: tuple[Any, ...], payload: Any) -> Any:
    """`run_op` for a job that is a stage of a pipeline run (bot/flows/canvas.py).

    Its input is the previous stage's output, which Celery's chain passes as the one
    positional argument. The stage reports to its run through `task.stage_hooks`. A stage that
    fails for good with the "continue" policy returns its default, so the chain goes on; with
    "stop" it raises, so the chain ends (the hooks ended the run `failed` already). A delivery
    of a stage whose job had ended (the worker died after the job's outcome was recorded, before
    its message was acked) replays the recorded outcome instead of running the op again, so
    the chain is continued once more (the next stage's job id makes that harmless)."""
    hooks = task.stage_hooks
    assert hooks is not None
    if len(args) == 1 and isinstance(args[0], dict) and not payload:
        payload = dict(args[0])  # the previous stage's output
        args = ()
    if hooks.run_ended(stage):
        logger.info("job %s: %s has ended; stage not run", task.request.id, stage.label())
        hooks.skipped(stage)
        raise Ignore()
    delivery = delivery_of(task, args, payload, canvas=True)
    verdict = acquire(task, delivery)
    if isinstance(verdict, Skipped):
        if verdict.reason == "duplicate":
            return replay_stage(task, stage, delivery.job_id)
        raise Ignore()
    attempt = Attempt(task.app, delivery, verdict, RUNTIME.owner())
    hooks.started(stage)
    try:
        result = run_attempt(task, attempt, args, payload)
    except JobEnded as ended:
        return _stage_failed(hooks, stage, ended.status, ended.error)
    hooks.succeeded(stage, result)
    return result


def _stage_failed(hooks: StageHooks, stage: StageContext, status: str, error: Any) -> Any:
    detail = error_of(error).model_dump() if isinstance(error, BaseException) else error
    hooks.failed(stage, status, detail)
    if stage.continues:
        return stage.default
    if isinstance(error, BaseException):
        raise error
    raise StageFailed(f"{stage.label()}: job ended {status}: {detail.get('message', '')}")


def replay_stage(task: OpTask, stage: StageContext, job_id: str) -> Any:
    """What a stage whose job had ended gives the chain again: its recorded result, or its
    failure policy applied to its recorded error."""
    hooks = task.stage_hooks
    assert hooks is not None
    record = JobRecord.from_hash(job_id, task.app.job_store().read(job_id))
    if record.state == "succeeded":
        logger.info("job %s: had succeeded; its result passed on again", job_id)
        result = record.outcome.get("result")
        hooks.succeeded(stage, result)
        return result
    if not record.final:
        raise Ignore()
    error = record.outcome.get("error")
    return _stage_failed(hooks, stage, record.state, error if isinstance(error, dict) else {})
