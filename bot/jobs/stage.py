"""What a job knows when it is one stage of a pipeline run: `StageContext` (read from the
message's `bot_stage` header), and `StageHooks`, through which the job reports its stage's
progress to the run.

The pipeline layer (`bot.flows`) builds each stage's message with the header and implements the
hooks; `bot.application` hands the hooks to every op task (`OpTask.stage_hooks`). This module
only names them, so the job layer never imports the layer above it.

A header that does not parse (a hand-made message) is ignored with a warning: the job then runs
as a plain job, never as a stage of a run it cannot name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bot.jobs.envelope import job_id_problem, printable

logger = logging.getLogger(__name__)

#: The message header that makes a job a pipeline stage.
STAGE_HEADER = "bot_stage"
_POLICIES = ("stop", "continue")


@dataclass(frozen=True)
class StageContext:
    """One op of one stage of a pipeline run: indexes are 1-based; `member` is the op's place
    in a parallel stage (1 for a plain stage). `default` is the output passed on when the op
    fails for good and `on_failure` is "continue"."""

    run_id: str
    pipeline: str
    index: int
    member: int
    stages: int
    on_failure: str = "stop"
    default: Any = None

    @property
    def continues(self) -> bool:
        return self.on_failure == "continue"

    @property
    def last(self) -> bool:
        return self.index == self.stages

    def header(self) -> dict[str, Any]:
        """The header value that carries this context on the stage's message."""
        return {
            "run": self.run_id,
            "pipeline": self.pipeline,
            "index": self.index,
            "member": self.member,
            "stages": self.stages,
            "on_failure": self.on_failure,
            "default": self.default,
        }

    def label(self) -> str:
        return f"pipeline {self.pipeline!r} run {self.run_id} stage {self.index}"


def stage_of(request: Any) -> StageContext | None:
    """The stage context of the running task's message, or None (a plain job). A worker
    sees the message's headers as attributes of the request; an eager call (`apply`) keeps
    them in `request.headers`."""
    raw = getattr(request, STAGE_HEADER, None)
    if raw is None:
        headers = getattr(request, "headers", None)
        raw = headers.get(STAGE_HEADER) if isinstance(headers, dict) else None
    if raw is None:
        return None
    context = parse(raw)
    if context is None:
        logger.warning(
            "job %s: header %s does not name a pipeline stage; running it as a plain job",
            printable(str(getattr(request, "id", "")), 80),
            STAGE_HEADER,
        )
    return context


def parse(raw: object) -> StageContext | None:
    """The context a header value carries, or None when it is not one."""
    if not isinstance(raw, Mapping):
        return None
    run_id, pipeline = raw.get("run"), raw.get("pipeline")
    if not isinstance(run_id, str) or job_id_problem(run_id) is not None:
        return None
    if not isinstance(pipeline, str) or not pipeline:
        return None
    index, member, stages = (_positive(raw.get(name)) for name in ("index", "member", "stages"))
    if index is None or member is None or stages is None:
        return None
    policy = raw.get("on_failure", "stop")
    if index > stages or policy not in _POLICIES:
        return None
    return StageContext(run_id, pipeline, index, member, stages, policy, raw.get("default"))


def _positive(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


class StageHooks(Protocol):
    """How a stage job tells its run what happened (bot/flows/stage_hooks.py)."""

    def run_ended(self, stage: StageContext) -> bool:
        """Whether the run has ended already: the stage's job is then not run."""

    def skipped(self, stage: StageContext) -> None:
        """The stage's job was not run because its run had ended."""

    def started(self, stage: StageContext) -> None:
        """The stage's job was acquired and is about to run."""

    def succeeded(self, stage: StageContext, result: Any) -> None:
        """The stage's job succeeded with `result`."""

    def failed(self, stage: StageContext, status: str, error: Mapping[str, Any]) -> None:
        """The stage's job ended `status` (failed, rejected, dead) with `error` ({type,
        message}); unless the stage continues, the run ends `failed`."""
