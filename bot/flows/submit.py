"""Enqueue an op's job or a pipeline's run: validated before anything is sent, idempotent on
a caller's id. `bot.client.Client` and everything in `bot.flows` (schedules, triggers, the
pipeline start) submit through here, from a client process or from inside a worker.

A caller's id is claimed before the message is sent (the record is created `queued`, bound to
what was submitted), so the same id submitted twice, or by two processes at once, is enqueued
once. A send that fails frees the id again, so submitting it again can succeed.

A process killed between the claim and the send leaves the id claimed (`queued`) with no
message. A submitter that derives its ids from an event it may see again (a trigger, a
schedule slot) passes `resend_queued=True`: an id still `queued` for the same payload is sent
again. That can put a second message of the job on the queue, which is harmless (the job's
record lets one delivery run it; the other is acked as a duplicate), and it is what makes
the event's redelivery repair the lost send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kombu.utils import json as kombu_json
from pydantic import BaseModel

from bot.errors import InvalidJobId
from bot.flows.run_record import MAX_RUN_ID_LENGTH, RunStore
from bot.jobs.envelope import job_id_problem, payload_digest
from bot.jobs.ports import AppPort
from bot.ops import REGISTRY, check_size
from bot.pipelines.registry import PIPELINES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """What a submission did: the job (or run) id, and whether it was enqueued now (False: the
    id was known already, an idempotent resubmission). `resent`: the id was known and still
    `queued`, and its message was sent again (`resend_queued`)."""

    id: str
    enqueued: bool
    resent: bool = False


def submit_op(
    app: AppPort,
    op: str,
    payload: Mapping[str, Any] | BaseModel | None = None,
    *,
    job_id: str | None = None,
    queue: str | None = None,
    countdown: float | None = None,
    resend_queued: bool = False,
) -> Submitted:
    """Validate and enqueue `op` with `payload`. Raises PayloadRejected / UnknownOp /
    InvalidJobId. `resend_queued`: see the module docstring."""
    if job_id is not None:
        check_job_id(job_id)
    spec = REGISTRY.get(op)
    data = as_dict(payload)
    check_size(data, app.settings.max_payload_bytes)
    spec.validate(data)  # the worker validates again; what is sent is what the caller gave
    queue = queue or spec.queue or app.settings.default_queue
    digest = payload_digest([], as_sent(data))

    def claim(job_id: str) -> bool:
        return app.job_store().claim(job_id, spec.name, queue, digest, app.settings.job_ttl)

    def send() -> str:
        return str(
            app.send_task(
                spec.task_name, kwargs=data, task_id=job_id, queue=queue, countdown=countdown
            ).id
        )

    return _enqueue_once(app, job_id, app.keys.job, claim, send, digest, resend_queued)


def submit_pipeline(
    app: AppPort,
    name: str,
    payload: Mapping[str, Any] | BaseModel | None = None,
    *,
    run_id: str | None = None,
    queue: str | None = None,
    resend_queued: bool = False,
) -> Submitted:
    """Validate `payload` for the pipeline's first stage and enqueue its start (the task
    `pipelines.<name>`, whose id is the run id). Raises PayloadRejected / UnknownPipeline /
    InvalidJobId. The same `run_id` again starts nothing (`resend_queued`: see the module
    docstring)."""
    spec = PIPELINES.get(name)
    if run_id is not None:
        check_run_id(run_id)
    data = as_dict(payload)
    check_size(data, app.settings.max_payload_bytes)
    spec.validate(data)
    queue = queue or app.settings.default_queue
    runs = RunStore(app.redis(), app.keys)
    digest = payload_digest([], as_sent(data))

    def claim(run_id: str) -> bool:
        return runs.claim(run_id, spec.name, queue, digest, app.settings.job_ttl)

    def send() -> str:
        return str(app.send_task(spec.task_name, kwargs=data, task_id=run_id, queue=queue).id)

    return _enqueue_once(app, run_id, app.keys.pipeline, claim, send, digest, resend_queued)


def _enqueue_once(
    app: AppPort,
    given_id: str | None,
    record_key: Callable[[str], str],
    claim: Callable[[str], bool],
    send: Callable[[], str],
    digest: str,
    resend_queued: bool,
) -> Submitted:
    """Send the message; with a caller's id, claim it first (see the module docstring).
    Interrupted anywhere between the claim and the send, even by SystemExit (a beat stopped by
    SIGTERM mid-tick) or inside the claim's own round trip, the claim is freed again, so the id
    can be submitted again; a claim freed that another submitter of the same payload had made
    costs nothing (its message, if sent, runs and creates the record)."""
    if given_id is None:
        return Submitted(send(), enqueued=True)
    key = record_key(given_id)
    try:
        if claim(given_id):
            return Submitted(send(), enqueued=True)
        if not (resend_queued and still_queued(app, key, digest)):
            return Submitted(given_id, enqueued=False)
        logger.info("%s: claimed but still queued; sent again", key)
        send()
        return Submitted(given_id, enqueued=False, resent=True)
    except BaseException:
        _free_claim(app, key, digest)
        raise


def _free_claim(app: AppPort, key: str, digest: str) -> None:
    try:
        if still_queued(app, key, digest):
            app.redis().delete(key)
    except Exception as exc:  # Redis is down too: the id stays claimed, with no message
        logger.warning(
            "%s: claimed, not sent, and not freed (%s); a submission with resend_queued sends it",
            key,
            exc,
        )


def still_queued(app: AppPort, key: str, digest: str) -> bool:
    """Whether the record at `key` is still `queued` for a submission of this digest."""
    state, claimed = app.redis().hmget(key, ["state", "digest"])
    return state == "queued" and claimed == digest


def as_dict(payload: Mapping[str, Any] | BaseModel | None) -> dict[str, Any]:
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    return dict(payload or {})


def as_sent(data: dict[str, Any]) -> Any:
    """`data` as a worker decodes it off the wire (kombu's JSON: a datetime becomes its ISO
    string, a tuple a list, a UUID a string), so the digest bound at submit is the one the
    worker computes."""
    return kombu_json.loads(kombu_json.dumps(data))


def check_run_id(run_id: str) -> None:
    """InvalidJobId unless `run_id` is a job id short enough for its stage jobs' ids."""
    check_job_id(run_id)
    if len(run_id) > MAX_RUN_ID_LENGTH:
        problem = f"a pipeline run id is at most {MAX_RUN_ID_LENGTH} characters"
        raise InvalidJobId(
            f"invalid run id: {problem}", [{"loc": ["run_id"], "msg": problem, "type": "run_id"}]
        )


def check_job_id(job_id: str) -> None:
    """InvalidJobId unless `job_id` is of the accepted form."""
    problem = job_id_problem(job_id)
    if problem is not None:
        raise InvalidJobId(
            f"invalid job id: {problem}",
            [{"loc": ["job_id"], "msg": problem, "type": "job_id"}],
        )
