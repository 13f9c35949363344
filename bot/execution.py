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

import redis
from celery import Task
from celery.exceptions import Ignore, Reject
from pydantic import BaseModel

from bot.attempt import Attempt
from bot.backoff import full_jitter
from bot.errors import BotError, PayloadRejected, UnknownOp
from bot.jobs import Acquired, Delivery, Skipped
from bot.ops import TASK_PREFIX, OpSpec, check_size
from bot.progress import bind as bind_progress
from bot.progress import unbind as unbind_progress
from bot.runtime import RUNTIME

logger = logging.getLogger(__name__)

#: Tries of job acquire across a Redis error before the message is handed back to the broker.
ACQUIRE_ATTEMPTS = 5
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)

#: The header the publisher stamps with the enqueue time (ms since the epoch).
ENQUEUED_AT_HEADER = "bot_enqueued_at"


class JobDead(BotError):
    """The job was recovered more than BOT_MAX_RECOVERIES times (a poison job)."""


class OpTask(Task):
    """Base class of every `ops.*` task. `op_spec` is set per task by `bot.application`."""

    op_spec: OpSpec
    typing = False  # the payload is validated by pydantic in run_op, with field-level errors
    # Hands a job back (queued, recoveries + 1) when its pool child dies, before Celery
    # requeues the message: see bot/worker_lost.py.
    Request = "bot.worker_lost:OpRequest"


def delivery_of(task: Task, args: tuple[Any, ...], payload: dict[str, Any]) -> Delivery:
    request = task.request
    info = request.delivery_info or {}
    properties = getattr(request, "properties", None) or {}
    tag = properties.get("delivery_tag") or info.get("delivery_tag") or ""
    queue = info.get("routing_key") or task.app.settings.default_queue
    enqueued = getattr(request, ENQUEUED_AT_HEADER, None)
    message = {"task": task.name, "args": list(args), "kwargs": payload, "queue": queue}
    return Delivery(
        job_id=request.id,
        op=task.op_spec.name,
        queue=queue,
        delivery_tag=str(tag),
        message=message,
        enqueued_at_ms=int(enqueued) if enqueued else None,
    )


def decode(spec: OpSpec, args: tuple[Any, ...], payload: dict[str, Any], limit: int) -> BaseModel:
    """The validated payload, or PayloadRejected."""
    if args:
        raise PayloadRejected(
            f"op {spec.name!r} takes its payload as keyword arguments, not positional ones",
            [{"loc": ["args"], "msg": "positional arguments are not accepted", "type": "args"}],
        )
    check_size(payload, limit)
    return spec.validate(payload)


def guard(task: OpTask, delivery: Delivery) -> Attempt:
    """Acquire the job for this worker, or stop this delivery without running it."""
    verdict = acquire_or_requeue(task, delivery)
    if isinstance(verdict, Skipped):
        logger.info(
            "job %s: delivery skipped (%s: %s)", delivery.job_id, verdict.reason, verdict.detail
        )
        raise Ignore()
    assert isinstance(verdict, Acquired)
    return Attempt(task.app, delivery, verdict, RUNTIME.owner())


def acquire_or_requeue(task: OpTask, delivery: Delivery) -> Acquired | Skipped:
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
                    delivery, RUNTIME.owner(), os.getpid(), claim
                )
            except REDIS_ERRORS as exc:
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


def run_op(task: OpTask, *args: Any, **payload: Any) -> Any:
    """The body of every `ops.*` task."""
    spec = task.op_spec
    attempt = guard(task, delivery_of(task, args, payload))
    if attempt.acquired.recoveries > task.app.settings.max_recoveries:
        return _end_dead(attempt, task.app.settings.max_recoveries)
    try:
        model = decode(spec, args, payload, task.app.settings.max_payload_bytes)
    except PayloadRejected as exc:
        _finish_or_ignore(attempt, "rejected", error=exc)
        raise
    result = execute(task, attempt, model)
    _finish_or_ignore(attempt, "succeeded", result=result)
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


def _end_dead(attempt: Attempt, max_recoveries: int) -> Any:
    recoveries = attempt.acquired.recoveries
    exc = JobDead(f"job recovered {recoveries} times, over BOT_MAX_RECOVERIES ({max_recoveries})")
    _finish_or_ignore(attempt, "dead", error=exc)
    raise exc


def _finish_or_ignore(attempt: Attempt, status: str, **outcome: Any) -> None:
    if not attempt.finish(status, **outcome):
        raise Ignore()


def reject_unknown_op(sender: Any, message: Any, name: str, id: str, **_: Any) -> None:
    """`task_unknown` handler (worker main process): a message for an `ops.*` task this worker
    does not know ends as `rejected` with a report. Celery itself drops the message and stores
    NotRegistered in the result backend, so it is never retried."""
    app: Any = getattr(sender, "app", None)
    if not name.startswith(TASK_PREFIX) or not hasattr(app, "job_store"):
        return
    info = message.delivery_info or {}
    queue = info.get("routing_key") or app.settings.default_queue
    args, kwargs = _decoded_arguments(message)
    delivery = Delivery(
        job_id=id,
        op=name.removeprefix(TASK_PREFIX),
        queue=queue,
        delivery_tag=str(message.delivery_tag or ""),
        message={"task": name, "args": args, "kwargs": kwargs, "queue": queue},
    )
    verdict = app.job_store().acquire(delivery, RUNTIME.owner(), os.getpid())
    if isinstance(verdict, Acquired):
        error = UnknownOp(f"unknown op {delivery.op!r}: no worker on queue {queue!r} has it")
        Attempt(app, delivery, verdict, RUNTIME.owner()).finish("rejected", error=error)


def _decoded_arguments(message: Any) -> tuple[list[Any], dict[str, Any]]:
    try:
        body = message.decode()
    except Exception:  # an undecodable body is still rejected, just without its payload
        return [], {}
    if isinstance(body, list | tuple) and len(body) >= 2:
        return list(body[0]), dict(body[1])
    return [], {}
