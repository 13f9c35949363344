"""The Python client: submit a job, read its status, wait for its outcome.

`submit` validates the payload of a known op before anything is enqueued, and accepts the
caller's job id as an idempotency key: a job id that is already known is not enqueued again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from celery.result import AsyncResult
from celery.states import FAILURE, REVOKED, SUCCESS
from pydantic import BaseModel

import bot
from bot.application import BotApp
from bot.flows.run_record import RunRecord, RunStore
from bot.flows.submit import as_sent, check_job_id, submit_op, submit_pipeline
from bot.jobs.record import JobRecord
from bot.jobs.reports import FINAL_STATES, ms_to_datetime

#: Re-exported: what a caller may import from here (they moved to bot/flows/submit.py).
__all__ = [
    "Client",
    "JobStatus",
    "SubmitResult",
    "as_sent",
    "check_job_id",
    "status",
    "submit",
    "wait",
]

#: Seconds between two reads of a job while waiting for it.
POLL_INTERVAL_S = 0.2


class JobStatus(BaseModel):
    """What is known of one job: its record, or Celery's view when no record exists yet."""

    job_id: str
    state: str
    op: str | None = None
    owner: str | None = None
    attempts: int = 0
    recoveries: int = 0
    progress: dict[str, Any] | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES or self.state == REVOKED.lower()


class SubmitResult(BaseModel):
    job_id: str
    enqueued: bool  # False: the id was already known (idempotent resubmission)


def _default_app() -> BotApp:
    """`bot.app`, the app built from BOT_* settings when `bot` was imported."""
    return bot.app


class Client:
    def __init__(self, app: BotApp | None = None) -> None:
        self.app = app or _default_app()

    def submit(
        self,
        op: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        job_id: str | None = None,
        queue: str | None = None,
        countdown: float | None = None,
    ) -> SubmitResult:
        """Validate and enqueue `op` with `payload`. Raises PayloadRejected / UnknownOp /
        InvalidJobId. A `job_id` that is known already is not enqueued again."""
        done = submit_op(self.app, op, payload, job_id=job_id, queue=queue, countdown=countdown)
        return SubmitResult(job_id=done.id, enqueued=done.enqueued)

    def submit_pipeline(
        self,
        name: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        run_id: str | None = None,
        queue: str | None = None,
    ) -> SubmitResult:
        """Validate `payload` for the pipeline's first stage and start a run of it (the task
        `pipelines.<name>`). Returns the run id as `job_id`. Raises PayloadRejected /
        UnknownPipeline / InvalidJobId. A `run_id` that is known already starts nothing."""
        done = submit_pipeline(self.app, name, payload, run_id=run_id, queue=queue)
        return SubmitResult(job_id=done.id, enqueued=done.enqueued)

    def pipeline_status(self, run_id: str) -> RunRecord | None:
        """The run's record (state, current stage, each stage job's state); None when unknown."""
        return RunStore(self.app.redis(), self.app.keys).read(run_id)

    def running_pipelines(self, limit: int = 100) -> list[RunRecord]:
        """Up to `limit` pipeline runs that have started and not ended, oldest first."""
        runs = RunStore(self.app.redis(), self.app.keys)
        records = (runs.read(run_id) for run_id in runs.running(limit))
        return [record for record in records if record is not None and not record.final]

    def wait_pipeline(
        self,
        run_id: str,
        timeout: float | None = None,
        on_update: Callable[[RunRecord], None] | None = None,
    ) -> RunRecord:
        """Poll the run's record until it ends; `on_update` sees each new record. A run started
        by a plain Celery client has no record until a worker starts it: an unknown run is
        waited for too. Raises TimeoutError past `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: RunRecord | None = None
        while True:
            record = self.pipeline_status(run_id)
            if record is not None and on_update and record != last:
                on_update(record)
            last = record
            if record is not None and record.final:
                return record
            if deadline is not None and time.monotonic() > deadline:
                state = record.state if record is not None else "unknown"
                raise TimeoutError(f"pipeline run {run_id} still {state} after {timeout}s")
            time.sleep(POLL_INTERVAL_S)

    def status(self, job_id: str) -> JobStatus:
        record = self.app.job_store().read(job_id)
        if record:
            return status_from_record(job_id, record)
        return self._status_from_celery(job_id)

    def _status_from_celery(self, job_id: str) -> JobStatus:
        result = AsyncResult(job_id, app=self.app)
        state = result.state
        if state == SUCCESS:
            return JobStatus(job_id=job_id, state="succeeded", result=result.result)
        if state == FAILURE:
            exc = result.result
            return JobStatus(
                job_id=job_id,
                state="failed",
                error={"type": type(exc).__name__, "message": str(exc)},
            )
        # PENDING is Celery's word for "never heard of it"; REVOKED ends a job without a report.
        return JobStatus(job_id=job_id, state="unknown" if state == "PENDING" else state.lower())

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_update: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll until the job ends; `on_update` sees each new status.

        Raises TimeoutError past `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: JobStatus | None = None
        while True:
            status = self.status(job_id)
            if on_update and status != last:
                on_update(status)
            last = status
            if status.done:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status.state} after {timeout}s")
            time.sleep(POLL_INTERVAL_S)


def status_from_record(job_id: str, fields: Mapping[str, str]) -> JobStatus:
    record = JobRecord.from_hash(job_id, fields)
    return JobStatus(
        job_id=job_id,
        state=record.state or "unknown",
        op=record.op,
        owner=record.owner or None,
        attempts=record.attempts,
        recoveries=record.recoveries,
        progress=record.progress,
        result=record.outcome.get("result") if record.final else None,
        error=record.outcome.get("error"),
        enqueued_at=ms_to_datetime(record.enqueued_at_ms),
        started_at=ms_to_datetime(record.started_at_ms),
        finished_at=ms_to_datetime(record.finished_at_ms),
    )


def submit(op: str, payload: Mapping[str, Any] | None = None, **kwargs: Any) -> SubmitResult:
    return Client().submit(op, payload, **kwargs)


def status(job_id: str) -> JobStatus:
    return Client().status(job_id)


def wait(job_id: str, timeout: float | None = None) -> JobStatus:
    return Client().wait(job_id, timeout)
