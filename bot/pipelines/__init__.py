"""Pipelines: named, ordered stages of ops, declared next to the ops and checked when they are
defined (each stage's output must fit the next stage's payload model).

    pipeline("report", "fetch", parallel("score_a", "score_b"), "publish")

- stages.py: `stage()`, `parallel()`, `Stage`, `Parallel`, failure policies, the error type;
- contract.py: how a stage's output becomes the next stage's input, and the check of it;
- samples.py: representative values of a JSON Schema, for that check;
- registry.py: `pipeline()`, `PipelineSpec`, `PIPELINES`, the task name `pipelines.<name>`;
- cron.py: cron expressions and their slots in a time zone;
- schedules.py: `schedule()`, `Schedule`, `SCHEDULES`, slot ids `sched.<name>.<UTC time>`;
- triggers.py: `on()`, `Trigger`, `TRIGGERS`: a report of an op or pipeline starts another;
- discovery.py: `discover_pipelines`, ops discovery followed by the deferred checks.

Running pipelines, schedules and triggers is not here: this package only defines and checks
them (bot.flows runs them).
"""

from __future__ import annotations

from bot.pipelines.contract import RESULTS_FIELD
from bot.pipelines.discovery import discover_pipelines
from bot.pipelines.registry import (
    PIPELINES,
    TASK_PREFIX,
    Pipeline,
    PipelineRegistry,
    PipelineSpec,
    pipeline,
)
from bot.pipelines.schedules import (
    SCHEDULES,
    Schedule,
    ScheduleDefinitionError,
    ScheduleRegistry,
    schedule,
    slot_id,
)
from bot.pipelines.stages import (
    NO_DEFAULT,
    FailurePolicy,
    Parallel,
    PipelineDefinitionError,
    Stage,
    parallel,
    stage,
)
from bot.pipelines.triggers import TRIGGERS, Trigger, TriggerDefinitionError, TriggerRegistry, on

__all__ = [
    "NO_DEFAULT",
    "PIPELINES",
    "RESULTS_FIELD",
    "SCHEDULES",
    "TASK_PREFIX",
    "TRIGGERS",
    "FailurePolicy",
    "Parallel",
    "Pipeline",
    "PipelineDefinitionError",
    "PipelineRegistry",
    "PipelineSpec",
    "Schedule",
    "ScheduleDefinitionError",
    "ScheduleRegistry",
    "Stage",
    "Trigger",
    "TriggerDefinitionError",
    "TriggerRegistry",
    "discover_pipelines",
    "on",
    "parallel",
    "pipeline",
    "schedule",
    "slot_id",
    "stage",
]
