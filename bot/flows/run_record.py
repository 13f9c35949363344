"""A pipeline run's record `bot:pipeline:{run_id}`, its plan, and the scripts that change it.

The record holds the run's state (`queued` → `running` → `succeeded` | `failed`), its current
stage, the plan (each stage's job ids, fixed when the run starts) and each stage job's state
(`s<stage>.<member>`: queued, running, succeeded, failed, rejected, dead, skipped), the result
or error, and the id of its one report in the outbox. Only the Lua scripts run_claim, run_start,
run_stage and run_end write it; `RunRecord.from_hash` is its one reader. An ended run keeps every
field (expiring BOT_JOB_TTL after its end): unlike a job record (bot/jobs/record.py) it holds
nothing that only a running run needs, the plan and stage states being what `bot pipeline
status` shows; its stage jobs' records are trimmed as any job's.

Stage job ids derive from the run id (`<run>.s2` for a plain stage, `<run>.s2.1` for the first
op of a parallel one), so sending a stage twice (a start task or a stage delivered again) runs
its job once: the job's own record refuses the duplicate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from bot.base.clock import now_ms
from bot.jobs.record import int_field, json_field
from bot.pipelines.registry import PipelineSpec
from bot.pipelines.stages import Parallel, members
from bot.store import scripts
from bot.store.keys import Keys

RUN_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed")
FINAL_RUN_STATES: tuple[str, ...] = ("succeeded", "failed")
#: The longest run id: its stage job ids (`<run>.s<stage>.<member>`) must stay job ids (200).
MAX_RUN_ID_LENGTH = 180


def stage_job_id(run_id: str, index: int, member: int, parallel: bool) -> str:
    """The job id of one op of a stage (index and member are 1-based)."""
    return f"{run_id}.s{index}.{member}" if parallel else f"{run_id}.s{index}"


def member_field(index: int, member: int) -> str:
    """The record field holding that stage job's state."""
    return f"s{index}.{member}"


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a run: its ops and their job ids, in declared order."""

    index: int
    ops: tuple[str, ...]
    job_ids: tuple[str, ...]
    parallel: bool


def plan(spec: PipelineSpec, run_id: str) -> tuple[PlannedStage, ...]:
    """Every stage's job ids for run `run_id` of `spec`."""
    planned = []
    for index, item in enumerate(spec.stages, 1):
        is_parallel = isinstance(item, Parallel)
        ops = tuple(m.op for m in members(item))
        ids = tuple(stage_job_id(run_id, index, n, is_parallel) for n in range(1, len(ops) + 1))
        planned.append(PlannedStage(index, ops, ids, is_parallel))
    return tuple(planned)


@dataclass(frozen=True)
class StageView:
    """A stage as the record shows it: each op's job id and state."""

    index: int
    ops: tuple[str, ...]
    job_ids: tuple[str, ...]
    states: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {
            "stage": self.index,
            "jobs": [
                {"op": op, "job_id": job_id, "state": state}
                for op, job_id, state in zip(self.ops, self.job_ids, self.states, strict=True)
            ],
        }


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    state: str = ""
    pipeline: str = ""
    stage: int = 0
    stages: tuple[StageView, ...] = ()
    outcome: dict[str, Any] = field(default_factory=dict)
    report_id: str = ""
    enqueued_at_ms: int | None = None
    started_at_ms: int | None = None
    updated_at_ms: int | None = None
    finished_at_ms: int | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_RUN_STATES

    @classmethod
    def from_hash(cls, run_id: str, fields: Mapping[str, str]) -> RunRecord:
        get = fields.get
        outcome = json_field(get("outcome"))
        return cls(
            run_id=run_id,
            state=get("state") or "",
            pipeline=get("pipeline") or "",
            stage=int_field(get("stage")) or 0,
            stages=_stages(json_field(get("plan")), fields),
            outcome=outcome if isinstance(outcome, dict) else {},
            report_id=get("report_id") or "",
            enqueued_at_ms=int_field(get("enqueued_at")),
            started_at_ms=int_field(get("started_at")),
            updated_at_ms=int_field(get("updated_at")),
            finished_at_ms=int_field(get("finished_at")),
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready, as `bot pipeline status --json` prints it."""
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "state": self.state,
            "stage": self.stage,
            "stages": [view.describe() for view in self.stages],
            "result": self.outcome.get("result"),
            "error": self.outcome.get("error"),
            "report_id": self.report_id or None,
            "enqueued_at_ms": self.enqueued_at_ms,
            "started_at_ms": self.started_at_ms,
            "updated_at_ms": self.updated_at_ms,
            "finished_at_ms": self.finished_at_ms,
        }


def _stages(raw_plan: Any, fields: Mapping[str, str]) -> tuple[StageView, ...]:
    """The plan ([{"ops": [...], "jobs": [...]}, ...]) with each job's state from its field."""
    if not isinstance(raw_plan, list):
        return ()
    views = []
    for index, entry in enumerate(raw_plan, 1):
        if not isinstance(entry, dict):
            return ()
        ops = tuple(str(op) for op in entry.get("ops", []))
        job_ids = tuple(str(job) for job in entry.get("jobs", []))
        if len(ops) != len(job_ids):
            return ()
        states = tuple(
            fields.get(member_field(index, n)) or "unknown" for n in range(1, len(ops) + 1)
        )
        views.append(StageView(index, ops, job_ids, states))
    return tuple(views)


@dataclass(frozen=True)
class RunEnd:
    """What `RunStore.end` did: `ended` True when this call ended the run (and wrote its
    report `report_id`); False when it had ended already (as `state`) or has no record."""

    ended: bool
    state: str
    report_id: str


class RunStore:
    """Reads and changes pipeline run records for one key prefix."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._claim = scripts.register(client, "run_claim")
        self._start = scripts.register(client, "run_start")
        self._stage = scripts.register(client, "run_stage")
        self._end = scripts.register(client, "run_end")

    def read(self, run_id: str) -> RunRecord | None:
        fields: dict[str, str] = self.client.hgetall(self.keys.pipeline(run_id))  # type: ignore[assignment]
        return RunRecord.from_hash(run_id, fields) if fields else None

    def state(self, run_id: str) -> str:
        """The run's state; '' when it has no record."""
        value = self.client.hget(self.keys.pipeline(run_id), "state")
        return str(value) if value else ""

    def claim(self, run_id: str, pipeline: str, queue: str, digest: str, ttl_s: int) -> bool:
        """Create a caller's run id's record `queued`; False when the id is known already."""
        created = self._claim(
            keys=[self.keys.pipeline(run_id)],
            args=[run_id, pipeline, queue, digest, now_ms(), ttl_s],
        )
        return bool(created)

    def start(
        self,
        run_id: str,
        pipeline: str,
        stages: tuple[PlannedStage, ...],
        ttl_s: int,
        digest: str = "",
    ) -> str:
        """Mark the run `running` with its plan: 'started', 'running' (had begun), 'ended' or
        'reused' (the run id was claimed for another pipeline or payload)."""
        plan_json = json.dumps([{"ops": s.ops, "jobs": s.job_ids} for s in stages])
        fields = [member_field(s.index, n) for s in stages for n in range(1, len(s.ops) + 1)]
        return str(
            self._start(
                keys=[self.keys.pipeline(run_id), self.keys.pipelines_running],
                args=[run_id, pipeline, plan_json, now_ms(), ttl_s, digest, *fields],
            )
        )

    def stage(self, run_id: str, index: int, member: int, state: str, ttl_s: int) -> bool:
        """Record one stage job's state; False when the run has no record."""
        return bool(
            self._stage(
                keys=[self.keys.pipeline(run_id)],
                args=[member_field(index, member), state, index, now_ms(), ttl_s],
            )
        )

    def end(
        self, run_id: str, state: str, outcome: dict[str, Any], report_json: str, ttl_s: int
    ) -> RunEnd:
        """End the run `state` with its report, once. See run_end.lua."""
        reply = self._end(
            keys=[
                self.keys.pipeline(run_id),
                self.keys.outbox,
                self.keys.pipelines_running,
                self.keys.stats,
            ],
            args=[run_id, state, json.dumps(outcome, default=str), report_json, now_ms(), ttl_s],
        )
        if int(reply[0]) == 1:
            return RunEnd(True, state, str(reply[1]))
        if int(reply[0]) == 0:
            return RunEnd(False, str(reply[1]), str(reply[2]))
        return RunEnd(False, "", "")

    def running(self, limit: int) -> list[str]:
        """Up to `limit` run ids not ended, oldest first."""
        return [str(r) for r in self.client.zrange(self.keys.pipelines_running, 0, limit - 1)]
