"""How the worker's main process takes in an `ops.*` message (and a pipeline task's): the
guarded strategy, and the rejection of a message that must never reach a pool child.

Celery's default strategy unpacks each message in the main process; a malformed one raises
there and Celery stops the worker ("Unrecoverable error"), then the next worker that reads the
message back from the head of the queue. `guarded` (each `OpTask.Strategy`) checks the raw
message first (bot/jobs/envelope.py) and wraps the default strategy, so a message that fails either
way ends `rejected`, with a record and exactly one report, after one attempt, and is acked.
An unknown op (Celery's `task_unknown`) ends the same way.

The rejection is recorded through the same fenced acquire/complete scripts as any job, so a
redelivered copy is a duplicate (acked, not reported twice), and a message reusing the id of
another job (different digest) is refused without touching that job. The record keeps no
message: nothing of an oversized or hostile body is stored.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.worker.strategy import default as default_strategy

from bot.errors import UnknownOp
from bot.jobs.envelope import (
    ENQUEUED_AT_HEADER,
    Malformed,
    check_body,
    check_envelope,
    enqueued_at_ms,
    job_id_problem,
    printable,
    raw_digest,
    stand_in_job_id,
)
from bot.jobs.outcome import Attempt
from bot.jobs.store import Acquired, Delivery
from bot.ops import TASK_PREFIX, op_name_problem
from bot.runtime.process import RUNTIME
from bot.store.connect import UNREACHABLE

logger = logging.getLogger(__name__)


def guarded(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's default strategy for `task`, behind the envelope check and a catch-all."""
    inner = default_strategy(task, app, consumer, **options)
    limit = app.settings.max_payload_bytes

    op_spec = getattr(task, "op_spec", None)

    def refuse(message: Any, problem: Malformed, ack: Any) -> None:
        if op_spec is not None:
            return reject_message(app, consumer, message, op_spec.name, problem, ack)
        return drop_message(app, consumer, message, problem, ack)

    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any):
        problem = problem_of(message, body, limit)
        if problem is not None:
            return refuse(message, problem, ack)
        try:
            return inner(message, body, ack, reject, callbacks, **kw)
        except consumer.connection_errors:
            raise  # the consumer reconnects; the message stays unacked and is put back
        except Exception as exc:  # the default strategy could not take what passed the check
            logger.exception("job %s: Celery could not take the message", _id_for_log(message))
            reason = printable(f"{type(exc).__name__}: {exc}", 300)
            return refuse(message, Malformed(f"message could not be unpacked: {reason}"), ack)

    return on_message


def drop_message(app: Any, consumer: Any, message: Any, problem: Malformed, ack: Any) -> None:
    """A malformed message for a task that is not an op (a pipeline's start, collect or
    finish task): it has no job record to end, so it is logged, marked FAILURE in the result
    backend and in task events, and acked."""
    headers = message.headers or {}
    raw_id = headers.get("id")
    usable = isinstance(raw_id, str) and job_id_problem(raw_id) is None
    task_id = str(raw_id) if usable else stand_in_job_id(raw_id, raw_body(message))
    logger.warning("task %s: refused before running: %s", task_id, problem)
    _refused(app, consumer, message, task_id, problem, ack)


def _refused(
    app: Any, consumer: Any, message: Any, task_id: str, problem: Malformed, ack: Any
) -> None:
    """A refused message's last steps: Celery's result and task events say FAILURE, then the
    message is acked."""
    _mark_failed(app, task_id, problem)
    _announce(consumer, task_id, (message.headers or {}).get("task"), problem)
    ack(logger, consumer.connection_errors)


def problem_of(message: Any, body: Any, limit: int) -> Malformed | None:
    """What is wrong with the message, or None when Celery may unpack it."""
    try:
        _check(message, body, limit)
    except Malformed as exc:
        # Without its traceback: its frames reach the raw body (kombu's read included) and,
        # through the caller's frame, this exception again, a cycle that would hold a
        # rejected body (up to any size) until the next full garbage collection.
        return exc.with_traceback(None)
    except Exception as exc:  # a check tripped on something stranger still
        return Malformed(f"message could not be checked: {type(exc).__name__}")
    return None


def _check(message: Any, body: Any, limit: int) -> None:
    headers = message.headers
    problem = job_id_problem(headers.get("id"))
    if problem is not None:
        raise Malformed(problem, [{"loc": ["headers", "id"], "msg": problem, "type": "job_id"}])
    if body is not None:  # Celery decoded it already: only protocol 1 messages come so
        raise Malformed("protocol 1 messages are not accepted: send Celery protocol 2")
    check_envelope(headers, raw_body(message), message.content_type, limit)
    try:
        decoded = message.payload  # decoded once here; kombu keeps it for Celery's Request
    except Exception as exc:
        raise Malformed(f"message body is not valid JSON: {printable(str(exc), 200)}") from None
    check_body(decoded)


def raw_body(message: Any) -> bytes:
    body = message.body
    if body is None:
        return b""
    return body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)


def reject_message(
    app: Any, consumer: Any, message: Any, op: str, problem: Malformed, ack: Any
) -> None:
    """End the message's job `rejected` (record, report, result), then ack the message.
    A Redis error propagates: the consumer reconnects and the message is read again."""
    delivery = rejected_delivery(app, message, op)
    logger.warning("job %s: rejected before running: %s", delivery.job_id, problem)
    record_rejection(app, delivery, problem)
    _refused(app, consumer, message, delivery.job_id, problem, ack)


def rejected_delivery(app: Any, message: Any, op: str) -> Delivery:
    """The delivery of a message that will not run: a usable job id (the message's own, or a
    stand-in derived from it), and no payload kept."""
    headers = message.headers or {}
    raw_id = headers.get("id")
    body = raw_body(message)
    usable = isinstance(raw_id, str) and job_id_problem(raw_id) is None
    job_id = str(raw_id) if usable else stand_in_job_id(raw_id, body)
    info = message.delivery_info or {}
    queue = info.get("routing_key")
    return Delivery(
        job_id=job_id,
        op=op,
        queue=queue if isinstance(queue, str) else app.settings.default_queue,
        delivery_tag=str(message.delivery_tag or ""),
        message={},
        enqueued_at_ms=enqueued_at_ms(headers.get(ENQUEUED_AT_HEADER)),
        digest=raw_digest(body),
    )


def record_rejection(app: Any, delivery: Delivery, error: Exception) -> bool:
    """Acquire the job and end it `rejected` with its report; False when this delivery is a
    duplicate of a job that ended, runs elsewhere, or reuses another job's id."""
    verdict = app.job_store().acquire(
        delivery, RUNTIME.owner(), os.getpid(), max_recoveries=app.settings.max_recoveries
    )
    if not isinstance(verdict, Acquired):
        job_id, reason, detail = delivery.job_id, verdict.reason, verdict.detail
        logger.info("job %s: not recorded (%s: %s)", job_id, reason, detail)
        return False
    return Attempt(app, delivery, verdict, RUNTIME.owner()).finish_once("rejected", error=error)


def _mark_failed(app: Any, job_id: str, error: Exception) -> None:
    """Celery's result backend says FAILURE too, so `AsyncResult.get()` does not wait forever.
    Best effort: the record and the report are what count."""
    try:
        app.backend.mark_as_failure(job_id, error, request=None)
    except Exception:
        logger.warning("job %s: result backend not updated", job_id, exc_info=True)


def _announce(consumer: Any, job_id: str, name: Any, error: Exception) -> None:
    """Task events, so Flower lists the rejected job and why (when events are on)."""
    dispatcher = consumer.event_dispatcher
    if not (dispatcher and dispatcher.enabled):
        return
    try:
        dispatcher.send("task-received", uuid=job_id, name=str(name)[:200], args="", kwargs="")
        dispatcher.send("task-failed", uuid=job_id, exception=printable(repr(error), 1000))
    except Exception:
        logger.warning("job %s: task events not sent", job_id, exc_info=True)


def _id_for_log(message: Any) -> str:
    headers = message.headers or {}
    return printable(str(headers.get("id")), 80)


def reject_unknown_op(sender: Any, message: Any, name: str, id: str, **_: Any) -> None:
    """`task_unknown` handler (worker main process): a message for an `ops.*` task this worker
    does not know ends `rejected` with a report. Celery itself acks it and stores NotRegistered
    in the result backend. Nothing of the body is decoded or kept."""
    app: Any = getattr(sender, "app", None)
    if not isinstance(name, str) or not name.startswith(TASK_PREFIX):
        return
    if not hasattr(app, "job_store"):
        # task_unknown is process-wide: another Celery app in this process (an embedder's)
        # may raise it; only a bot app has job records to reject into.
        return
    requested = name.removeprefix(TASK_PREFIX)
    op = requested if op_name_problem(requested) is None else "unknown"
    delivery = rejected_delivery(app, message, op)
    queue = printable(delivery.queue, 100)
    error = UnknownOp(
        f"unknown op {printable(requested, 100)!r}: no worker on queue {queue!r} has it"
    )
    try:
        record_rejection(app, delivery, error)
    except UNREACHABLE as exc:  # Celery acks the message regardless; say so loudly
        logger.error("job %s: unknown op not recorded (Redis: %s)", delivery.job_id, exc)
