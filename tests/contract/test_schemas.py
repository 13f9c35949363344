"""Published schemas are a contract: op payload schemas and pipeline definitions change only on
purpose (update the snapshots with `bot ops --json > tests/contract/snapshots/ops.json` and
`bot pipelines --json > tests/contract/snapshots/pipelines.json`), and reports validate."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from bot.jobs.reports import Report, ReportError, ReportWorker
from bot.ops import REGISTRY
from bot.pipelines import PIPELINES

SNAPSHOTS = Path(__file__).parent / "snapshots"


def test_op_schemas_match_the_published_snapshot() -> None:
    current = {spec.name: spec.schema() for spec in REGISTRY if spec.module.startswith("tasks.")}
    snapshot = json.loads((SNAPSHOTS / "ops.json").read_text())
    # exactly the production ops: the test-only ones (crash, touch) are not published
    assert current == snapshot


def test_pipeline_definitions_match_the_published_snapshot() -> None:
    current = {
        spec.name: spec.describe()
        for spec in PIPELINES
        if spec.declared.module.startswith("tasks.")
    }
    assert current == json.loads((SNAPSHOTS / "pipelines.json").read_text())


def test_a_report_validates_against_the_report_schema() -> None:
    report = Report(
        job_id="j1",
        op="sum",
        status="rejected",
        attempts=1,
        recoveries=0,
        error=ReportError(
            type="PayloadRejected", message="bad", details=[{"loc": ["a"], "msg": "x", "type": "t"}]
        ),
        worker=ReportWorker(bot_id="b", instance_id="i", hostname="h"),
        finished_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
    )
    jsonschema.validate(json.loads(report.model_dump_json()), Report.model_json_schema())


def test_report_schema_refuses_an_unknown_status() -> None:
    schema = Report.model_json_schema()
    bad = {
        "job_id": "j",
        "op": "sum",
        "status": "maybe",
        "attempts": 1,
        "recoveries": 0,
        "worker": {"bot_id": None, "instance_id": None, "hostname": "h"},
        "finished_at": "2026-01-01T00:00:00Z",
    }
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError as exc:
        assert "maybe" in exc.message
    else:
        raise AssertionError("a report with status 'maybe' validated")
