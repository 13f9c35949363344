"""`PipelineStageHooks`: how a stage job (bot/jobs/run.py `run_stage`) reports to its run.

Each call changes the run's record through one script (run_stage.lua, run_end.lua), so every
call is safe to repeat: a stage delivered again after a crash calls them again and changes
nothing that was already true. A stage that fails for good without the "continue" policy ends
the run `failed`, with a report naming the stage; Celery's chain then goes no further.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bot.flows.run_end import end_run, run_store, stage_error
from bot.flows.run_record import FINAL_RUN_STATES
from bot.jobs.ports import AppPort
from bot.jobs.stage import StageContext

logger = logging.getLogger(__name__)


class PipelineStageHooks:
    """`bot.jobs.stage.StageHooks` on the run records of `app`'s Redis."""

    def __init__(self, app: AppPort) -> None:
        self.app = app

    def run_ended(self, stage: StageContext) -> bool:
        return run_store(self.app).state(stage.run_id) in FINAL_RUN_STATES

    def skipped(self, stage: StageContext) -> None:
        self._mark(stage, "skipped")

    def started(self, stage: StageContext) -> None:
        self._mark(stage, "running")

    def succeeded(self, stage: StageContext, result: Any) -> None:
        self._mark(stage, "succeeded")

    def failed(self, stage: StageContext, status: str, error: Mapping[str, Any]) -> None:
        self._mark(stage, status)
        if stage.continues:
            logger.info("%s: job ended %s; its default passed on", stage.label(), status)
            return
        record = run_store(self.app).read(stage.run_id)
        reason = stage_error(record, stage.index, stage.member, status, dict(error))
        end_run(self.app, stage.run_id, "failed", error=reason)

    def _mark(self, stage: StageContext, state: str) -> None:
        run_store(self.app).stage(
            stage.run_id, stage.index, stage.member, state, self.app.settings.job_ttl
        )
