"""Pipeline discovery: pipelines and schedules live in the op modules, so discovering the ops
(`bot.discovery.discover_ops`: the `tasks` package, `BOT_OPS_MODULES`, the `bot.ops` entry
points) declares them; then the pipelines that named an op registered after them are checked,
then the schedules whose target (or payload function) came after them, and then the triggers
(bot/pipelines/triggers.py) that named an op or pipeline not known yet.

A pipeline, schedule or trigger that does not fit stops start-up like an op module that cannot be
imported: a `ConfigError` (one line, exit code 2) naming it, its module and the problem.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.discovery import discover_ops
from bot.pipelines.registry import PIPELINES
from bot.pipelines.schedules import SCHEDULES, ScheduleDefinitionError
from bot.pipelines.stages import PipelineDefinitionError
from bot.pipelines.triggers import TRIGGERS
from config.settings import ConfigError


def discover_pipelines(extra_modules: Iterable[str] = ()) -> list[str]:
    """Import every op module (declaring its ops, pipelines, schedules and triggers), then check
    the pipelines, schedules and triggers left for the end of discovery; return the modules'
    names."""
    try:
        modules = discover_ops(extra_modules)
        PIPELINES.resolve()
        SCHEDULES.resolve()
        TRIGGERS.resolve()
    except (PipelineDefinitionError, ScheduleDefinitionError) as exc:
        where = f" (declared in {exc.module})" if exc.module else ""
        raise ConfigError(f"invalid configuration: {exc}{where}") from exc
    return modules
