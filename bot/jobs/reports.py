"""The report: the one record of how a job ended, appended to the outbox with its final state.

Its JSON Schema is published (`Report.model_json_schema()`, `bot ops --reports`) so consumers
of the outbox stream can validate what they read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinalStatus = Literal["succeeded", "failed", "rejected", "dead"]
FINAL_STATES: tuple[str, ...] = ("succeeded", "failed", "rejected", "dead")


class ReportError(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str = Field(description="Exception class name, e.g. PayloadRejected.")
    message: str
    details: list[dict[str, Any]] = Field(
        default_factory=list, description="Field errors for rejected payloads."
    )


class ReportWorker(BaseModel):
    model_config = ConfigDict(frozen=True)

    bot_id: str | None
    instance_id: str | None
    hostname: str


class StageJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    op: str
    job_id: str
    state: str = Field(description="The job's state when the run ended (or 'skipped').")


class StageSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    stage: int = Field(ge=1)
    jobs: list[StageJob]


class Report(BaseModel):
    """How one job ended. Exactly one per job, in `bot:outbox`."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    op: str
    status: FinalStatus
    result: Any = None
    error: ReportError | None = None
    attempts: int = Field(ge=0)
    recoveries: int = Field(ge=0)
    worker: ReportWorker
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime
    duration_ms: int | None = Field(default=None, ge=0)
    stages: list[StageSummary] | None = Field(
        default=None,
        description="A pipeline run's report only (op 'pipelines.<name>', job_id the run id): "
        "each stage's jobs and their states.",
    )


def ms_to_datetime(ms: int | str | None) -> datetime | None:
    """Milliseconds since the epoch as a UTC datetime; None for none, or for a value no
    datetime can hold (a forged header must never make a report fail to build)."""
    if ms in (None, "", 0, "0"):
        return None
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError, TypeError):
        return None
