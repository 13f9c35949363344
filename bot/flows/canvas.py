"""A pipeline run as Celery canvas: a chain of the stages' `ops.*` tasks, a chord for each
parallel stage, and `bot.pipeline.finish` at the end.

    chain(ops.scale(payload), chord([ops.sum, ops.subtract], bot.pipeline.collect),
          ops.product, bot.pipeline.finish)

Every stage is a normal bot job (lease, fencing, recovery, one report) with an id derived from
the run id (bot/flows/run_record.py), and carries its stage in the `bot_stage` header
(bot/jobs/stage.py). Celery passes each stage's output to the next as its one positional
argument; a chord's collector turns the members' outputs into `{"results": [...]}`, in the
declared order. Each task shows in Flower under its own name, with the start task
`pipelines.<name>` as the root of the tree.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from bot.flows.run_record import PlannedStage, plan
from bot.jobs.stage import STAGE_HEADER, StageContext
from bot.pipelines.contract import RESULTS_FIELD
from bot.pipelines.registry import PipelineSpec
from bot.pipelines.stages import Stage, members

#: The tasks a run's canvas uses besides its ops (registered by bot.application).
COLLECT_TASK = "bot.pipeline.collect"
FINISH_TASK = "bot.pipeline.finish"


def run_canvas(app: Celery, spec: PipelineSpec, run_id: str, payload: dict[str, Any]) -> Signature:
    """The whole run: every stage, then the finish task."""
    planned = plan(spec, run_id)
    steps: list[Signature] = []
    for item, stage_plan in zip(spec.stages, planned, strict=True):
        first_payload = payload if stage_plan.index == 1 else None
        sigs = [
            stage_signature(app, spec, run_id, stage_plan, n, member, first_payload)
            for n, member in enumerate(members(item), 1)
        ]
        steps.append(
            chord(group(sigs), collect_signature(app, run_id, stage_plan.index))
            if stage_plan.parallel
            else sigs[0]
        )
    steps.append(finish_signature(app, run_id))
    return chain(*steps)


def stage_signature(
    app: Celery,
    spec: PipelineSpec,
    run_id: str,
    stage_plan: PlannedStage,
    member: int,
    stage: Stage,
    payload: dict[str, Any] | None,
) -> Signature:
    """One op of one stage: its task, job id, queue and stage header; the first stage gets
    the run's payload, later ones the previous stage's output (from the chain)."""
    op = spec.ops[stage.op]
    context = StageContext(
        run_id=run_id,
        pipeline=spec.name,
        index=stage_plan.index,
        member=member,
        stages=len(spec.stages),
        on_failure=stage.on_failure,
        default=stage.default if stage.continues else None,
    )
    return app.signature(
        op.task_name,
        kwargs=dict(payload or {}),
        task_id=stage_plan.job_ids[member - 1],
        queue=op.queue or app.settings.default_queue,
        headers={STAGE_HEADER: context.header()},
    )


def collect_signature(app: Celery, run_id: str, index: int) -> Signature:
    return app.signature(
        COLLECT_TASK,
        kwargs={"run_id": run_id, "index": index},
        task_id=f"{run_id}.s{index}.join",
        queue=app.settings.default_queue,
    )


def finish_signature(app: Celery, run_id: str) -> Signature:
    return app.signature(
        FINISH_TASK,
        kwargs={"run_id": run_id},
        task_id=f"{run_id}.end",
        queue=app.settings.default_queue,
    )


def collected(results: Any) -> dict[str, Any]:
    """What a parallel stage passes on: its members' outputs in declared order."""
    return {RESULTS_FIELD: list(results) if isinstance(results, list | tuple) else [results]}
