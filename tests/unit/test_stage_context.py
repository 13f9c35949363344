"""The `bot_stage` header a pipeline stage's message carries, and the run record's parsing:
what a hand-made or damaged value turns into."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from bot.flows.run_record import RunRecord, member_field, plan, stage_job_id
from bot.jobs.stage import STAGE_HEADER, StageContext, parse, stage_of
from bot.pipelines import PIPELINES, discover_pipelines

CONTEXT = StageContext("run-1", "report", 2, 1, 3, "continue", {"x": 1})


def test_a_header_carries_its_context_whole() -> None:
    assert parse(CONTEXT.header()) == CONTEXT
    assert CONTEXT.continues and not CONTEXT.last


@pytest.mark.parametrize(
    "change",
    [
        {"run": "bad id with spaces"},
        {"run": 7},
        {"pipeline": ""},
        {"index": 0},
        {"index": 4},  # past the last stage
        {"member": True},
        {"stages": "3"},
        {"on_failure": "retry"},
    ],
)
def test_a_header_that_names_no_stage_is_none(change: dict[str, Any]) -> None:
    assert parse({**CONTEXT.header(), **change}) is None


def test_a_worker_request_and_an_eager_one_both_carry_the_header() -> None:
    header = CONTEXT.header()
    assert stage_of(SimpleNamespace(**{STAGE_HEADER: header})) == CONTEXT
    assert stage_of(SimpleNamespace(headers={STAGE_HEADER: header})) == CONTEXT
    assert stage_of(SimpleNamespace(headers=None)) is None
    assert stage_of(SimpleNamespace(**{STAGE_HEADER: "junk"}, id="j")) is None


def test_stage_job_ids_derive_from_the_run_id() -> None:
    discover_pipelines([])
    planned = plan(PIPELINES.get("difference_of_squares"), "r")

    assert [(s.ops, s.job_ids, s.parallel) for s in planned] == [
        (("scale",), ("r.s1",), False),
        (("sum", "subtract"), ("r.s2.1", "r.s2.2"), True),
        (("product",), ("r.s3",), False),
    ]
    assert stage_job_id("r", 4, 2, parallel=False) == "r.s4"
    assert member_field(2, 1) == "s2.1"


def test_a_record_reads_each_stage_jobs_state_and_survives_damage() -> None:
    fields = {
        "state": "running",
        "pipeline": "p",
        "stage": "2",
        "plan": json.dumps(
            [{"ops": ["a"], "jobs": ["r.s1"]}, {"ops": ["b", "c"], "jobs": ["r.s2.1", "r.s2.2"]}]
        ),
        "s1.1": "succeeded",
        "s2.1": "running",
    }

    record = RunRecord.from_hash("r", fields)

    assert [(v.index, v.states) for v in record.stages] == [
        (1, ("succeeded",)),
        (2, ("running", "unknown")),
    ]
    assert not record.final and record.stage == 2
    damaged = RunRecord.from_hash("r", {**fields, "plan": "[{", "stage": "x", "outcome": "7"})
    assert (damaged.stages, damaged.stage, damaged.outcome) == ((), 0, {})
