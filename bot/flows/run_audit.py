"""The pipeline run audit: ends the runs that would otherwise wait forever.

A run advances through its stage jobs' hooks (bot/flows/stage_hooks.py), and a stage whose
worker died is delivered again and replays its outcome (bot/jobs/run.py), so a run normally
never needs this. It is the backstop for what no message will ever report: a stage job's
message that was lost (a purged queue, a Redis that lost writes), or a hook that did not run
and will not run again. Every BOT_REAPER_INTERVAL one worker (the holder of the lock
`bot:pipelines:audit:lock`, kept for an interval: one pass per interval fleet-wide) looks at
each running run (`bot:pipelines:running`):

1. a job of a stage the run has reached that has ended, while the run's record does not show
   it, is recorded; if it ended without success and its stage's policy is "stop", the run
   ends `failed` with a report naming the stage (a chord member that ended `dead`: Celery's
   chord would wait for it forever);
2. a run whose current stage has no job running or retrying, and whose record has not changed
   for BOT_PIPELINE_STALL_TIMEOUT, ends `failed` as stalled, naming the stage.

A run of a pipeline this worker does not know is left to a worker that knows it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from bot.base.clock import now_ms
from bot.flows.run_end import end_run, run_store, stage_error
from bot.flows.run_record import RunRecord, StageView
from bot.jobs.ports import AppPort
from bot.jobs.record import JobRecord
from bot.jobs.reports import FINAL_STATES, ReportError
from bot.pipelines.registry import PIPELINES
from bot.pipelines.stages import members
from bot.store import scripts
from bot.store.connect import UNREACHABLE

logger = logging.getLogger(__name__)

#: Runs looked at per pass, oldest first.
AUDIT_BATCH = 500
#: Job states of a stage job that is doing something: its run is not stalled.
BUSY_STATES = ("running", "retrying")


@dataclass
class AuditCounters:
    passes: int = 0
    runs_seen: int = 0
    stages_caught_up: int = 0
    runs_failed: int = 0
    runs_stalled: int = 0
    errors: int = 0


class RunAudit:
    """One worker's pipeline run audit; `run_once()` every BOT_REAPER_INTERVAL."""

    def __init__(self, app: AppPort, *, batch: int = AUDIT_BATCH) -> None:
        self.app = app
        self.batch = batch
        self.counters = AuditCounters()
        #: This audit's token for the fleet-wide lock (kept from pass to pass).
        self._token = uuid.uuid4().hex

    def snapshot(self) -> dict[str, Any]:
        return asdict(self.counters)

    def run_once(self) -> bool:
        """One pass; True when this worker held the lock and audited."""
        client, keys = self.app.redis(), self.app.keys
        lock_ms = int(max(1.0, self.app.settings.reaper_interval) * 1000)
        try:
            # Held for one interval, not released: one pass per interval fleet-wide (as the
            # reaper's lock, bot/store/lua/hold_lock.lua), not one per worker.
            held = scripts.register(client, "hold_lock")(
                keys=[keys.pipelines_audit_lock], args=[self._token, lock_ms]
            )
            if not held:
                return False
            self.counters.passes += 1
            for run_id in run_store(self.app).running(self.batch):
                self.audit(run_id)
        except UNREACHABLE as exc:
            self.counters.errors += 1
            logger.warning("pipeline audit: Redis unreachable (%s)", exc)
            return False
        return True

    def audit(self, run_id: str) -> None:
        """Look at one run; end it if it can no longer end by itself."""
        self.counters.runs_seen += 1
        runs = run_store(self.app)
        record = runs.read(run_id)
        if record is None or record.final:
            self.app.redis().zrem(self.app.keys.pipelines_running, run_id)
            return
        if record.state != "running" or record.pipeline not in PIPELINES:
            return
        for view in record.stages[: record.stage]:
            if self._catch_up(record, view):
                return
        self._end_if_stalled(record)

    def _catch_up(self, record: RunRecord, view: StageView) -> bool:
        """Record the stage's jobs that ended unseen; True when that ended the run."""
        for member, (job_id, seen) in enumerate(zip(view.job_ids, view.states, strict=True), 1):
            if seen in FINAL_STATES or seen == "skipped":
                continue
            job = self._job(job_id)
            if not job.final:
                continue
            self.counters.stages_caught_up += 1
            run_store(self.app).stage(
                record.run_id, view.index, member, job.state, self.app.settings.job_ttl
            )
            if job.state != "succeeded" and not self._continues(record, view.index, member):
                error = job.outcome.get("error")
                detail = error if isinstance(error, dict) else {}
                reason = stage_error(record, view.index, member, job.state, detail)
                if end_run(self.app, record.run_id, "failed", error=reason).ended:
                    self.counters.runs_failed += 1
                    logger.warning("pipeline run %s: %s", record.run_id, reason.message)
                return True
        return False

    def _end_if_stalled(self, record: RunRecord) -> None:
        timeout_ms = self.app.settings.pipeline_stall_timeout * 1000
        if record.updated_at_ms is None or now_ms() - record.updated_at_ms < timeout_ms:
            return
        view = record.stages[record.stage - 1] if 0 < record.stage <= len(record.stages) else None
        if view is not None and any(self._job(j).state in BUSY_STATES for j in view.job_ids):
            return
        idle_s = (now_ms() - record.updated_at_ms) / 1000
        reason = ReportError(
            type="PipelineStalled",
            message=f"stage {record.stage} stalled: no job of it ran and the run did not change "
            f"for {idle_s:.0f}s (BOT_PIPELINE_STALL_TIMEOUT): a message was lost",
            details=[{"stage": record.stage, "idle_s": round(idle_s, 1)}],
        )
        if end_run(self.app, record.run_id, "failed", error=reason).ended:
            self.counters.runs_stalled += 1
            logger.warning("pipeline run %s: %s", record.run_id, reason.message)

    def _job(self, job_id: str) -> JobRecord:
        names = ("state", "outcome")
        values = self.app.redis().hmget(self.app.keys.job(job_id), names)
        return JobRecord.from_hash(job_id, dict(zip(names, values, strict=True)))  # type: ignore[arg-type]

    @staticmethod
    def _continues(record: RunRecord, index: int, member: int) -> bool:
        spec = PIPELINES.get(record.pipeline)
        if index > len(spec.stages):
            return False
        stage_members = members(spec.stages[index - 1])
        return member <= len(stage_members) and stage_members[member - 1].continues
