"""How a pipeline run ends: its report (one, in the outbox, written with the run's final state
by run_end.lua), built from the run's record.

The report is a `Report` like a job's: `job_id` is the run id, `op` the pipeline's task name
(`pipelines.<name>`), `result` the last stage's output or `error` naming the stage that ended
the run, and `stages` each stage job's id and state.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import redis

from bot.base.clock import now_ms
from bot.flows.run_record import RunEnd, RunRecord, RunStore
from bot.jobs.ports import AppPort
from bot.jobs.reports import (
    Report,
    ReportError,
    ReportWorker,
    StageJob,
    StageSummary,
    ms_to_datetime,
)
from bot.pipelines.registry import TASK_PREFIX
from bot.runtime.process import RUNTIME
from bot.store.keys import Keys

logger = logging.getLogger(__name__)


def run_store(app: AppPort) -> RunStore:
    """The run store on this process's client (one per client: it registers four scripts)."""
    return _store_on(app.redis(), app.keys)


@lru_cache(maxsize=8)
def _store_on(client: redis.Redis, keys: Keys) -> RunStore:
    return RunStore(client, keys)


def end_run(
    app: AppPort,
    run_id: str,
    status: str,
    *,
    result: Any = None,
    error: ReportError | None = None,
) -> RunEnd:
    """End the run `status` (succeeded, failed) with its one report; a run that had ended is
    left as it was (RunEnd.ended False)."""
    runs = run_store(app)
    record = runs.read(run_id) or RunRecord(run_id)
    report = run_report(record, status, result, error)
    outcome = {"result": result} if error is None else {"error": error.model_dump()}
    done = runs.end(run_id, status, outcome, report.model_dump_json(), app.settings.job_ttl)
    if done.ended:
        logger.info("pipeline run %s %s (report %s)", run_id, status, done.report_id)
    return done


def run_report(record: RunRecord, status: str, result: Any, error: ReportError | None) -> Report:
    """The run's report as of `record`, ending `status` now."""
    finished = now_ms()
    started = record.started_at_ms
    return Report(
        job_id=record.run_id,
        op=TASK_PREFIX + (record.pipeline or "unknown"),
        status=status,
        result=result if error is None else None,
        error=error,
        attempts=1,
        recoveries=0,
        worker=ReportWorker(
            bot_id=RUNTIME.bot_id, instance_id=RUNTIME.instance_id, hostname=RUNTIME.hostname
        ),
        enqueued_at=ms_to_datetime(record.enqueued_at_ms),
        started_at=ms_to_datetime(started),
        finished_at=datetime.fromtimestamp(finished / 1000, tz=UTC),
        duration_ms=max(0, finished - started) if started else None,
        stages=[
            StageSummary(
                stage=view.index,
                jobs=[
                    StageJob(op=op, job_id=job_id, state=state)
                    for op, job_id, state in zip(view.ops, view.job_ids, view.states, strict=True)
                ],
            )
            for view in record.stages
        ],
    )


def stage_error(
    record: RunRecord | None, index: int, member: int, status: str, detail: dict[str, Any]
) -> ReportError:
    """The run's error when stage `index` ended it: names the stage, its op and its job."""
    op, job_id = "?", "?"
    if record is not None and 0 < index <= len(record.stages):
        view = record.stages[index - 1]
        if 0 < member <= len(view.ops):
            op, job_id = view.ops[member - 1], view.job_ids[member - 1]
    message = str(detail.get("message") or detail.get("type") or "")
    return ReportError(
        type="StageFailed",
        message=f"stage {index} ({op}) ended {status}: {message}"[:2000],
        details=[
            {
                "stage": index,
                "op": op,
                "job_id": job_id,
                "state": status,
                "error": {k: detail.get(k) for k in ("type", "message") if k in detail},
            }
        ],
    )
