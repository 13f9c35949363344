"""`bot pipelines` (the pipelines this installation knows, their stages and input schema) and
`bot pipeline submit|status` (start a run, watch it)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

# Importing bot builds the app, which discovers the ops and pipelines (bot/pipelines/discovery.py).
import bot  # noqa: F401
from bot.base.exits import EXIT_FAILED, EXIT_TIMEOUT
from bot.cli.jobs import emit, exit_rejected, fields_summary, payload_from, print_rejection
from bot.client import Client
from bot.errors import PayloadRejected
from bot.flows.run_record import RunRecord
from bot.jobs.envelope import printable
from bot.pipelines import PIPELINES


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print stages and JSON Schemas as JSON.")
def pipelines(as_json: bool) -> None:
    """List the pipelines this installation knows: input fields and stages.

    A stage is an op, `[a, b]` ops run in parallel (the next stage gets {"results": [...]}),
    `op (continue: default)` an op whose failure passes `default` on instead of stopping.
    """
    if as_json:
        click.echo(json.dumps({spec.name: spec.describe() for spec in PIPELINES}, indent=2))
        return
    for spec in PIPELINES:
        flow = " -> ".join(item.label() for item in spec.stages)
        click.echo(f"{spec.name:24} {fields_summary(spec.input_schema):40} {printable(flow, 2000)}")
        for note in spec.unchecked:
            click.echo(f"{'':24} not checked: {printable(note, 500)}")


@click.group()
def pipeline() -> None:
    """Start a pipeline run, or show one."""


@pipeline.command("submit")
@click.argument("name")
@click.argument("fields", nargs=-1)
@click.option("--json", "json_payload", help="The whole payload as a JSON object.")
@click.option("--id", "run_id", help="Your own run id (an idempotency key).")
@click.option("--wait", is_flag=True, help="Wait for the run to end and print its result.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this long.")
def submit(
    name: str,
    fields: tuple[str, ...],
    json_payload: str | None,
    run_id: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Start a run of pipeline NAME with a payload of key=value FIELDS (or --json); prints
    the run id."""
    payload = payload_from(json_payload, fields)
    try:
        submitted = Client().submit_pipeline(name, payload, run_id=run_id)
    except PayloadRejected as exc:  # UnknownPipeline and InvalidJobId too
        exit_rejected(exc, f"pipeline {name!r}")
    if not submitted.enqueued:
        click.echo(f"bot: run {submitted.job_id} is already known; not started again", err=True)
    if not wait:
        click.echo(submitted.job_id)
        return
    try:
        record = Client().wait_pipeline(submitted.job_id, timeout=timeout, on_update=_show_stage)
    except TimeoutError as exc:
        click.echo(f"bot: {exc}", err=True)
        sys.exit(EXIT_TIMEOUT)
    _print_end(record)


@pipeline.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print each run's record as JSON.")
def list_runs(limit: int, as_json: bool) -> None:
    """The runs that are running, oldest first: run id, pipeline, current stage, age."""
    records = Client().running_pipelines(limit)
    if as_json:
        click.echo(json.dumps([record.describe() for record in records], default=str))
        return
    if not records:
        click.echo("no pipeline run is running")
    now = time.time() * 1000
    for record in records:
        age = (now - (record.started_at_ms or now)) / 1000
        click.echo(
            f"{printable(record.run_id, 80):40} {printable(record.pipeline, 40):24} "
            f"stage {record.stage}/{len(record.stages)}  {age:8.1f}s"
        )


@pipeline.command("status")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run's record as JSON.")
def status(run_id: str, as_json: bool) -> None:
    """Show a run: its state, current stage, and each stage's jobs and their states."""
    record = Client().pipeline_status(run_id)
    if record is None:
        click.echo(f"bot: pipeline run {printable(run_id, 200)} is unknown", err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        click.echo(json.dumps(record.describe(), default=str))
        return
    click.echo(f"run      {printable(record.run_id, 200)}")
    click.echo(f"pipeline {printable(record.pipeline, 200)}")
    click.echo(f"state    {record.state} (stage {record.stage} of {len(record.stages)})")
    for view in record.stages:
        jobs = ", ".join(
            f"{op} {state} ({printable(job_id, 200)})"
            for op, job_id, state in zip(view.ops, view.job_ids, view.states, strict=True)
        )
        click.echo(f"  stage {view.index}: {jobs}")
    for name in ("result", "error"):
        if name in record.outcome:
            click.echo(
                f"{name:8} {printable(json.dumps(record.outcome[name], default=str), 10_000)}"
            )


def _show_stage(record: RunRecord) -> None:
    if sys.stderr.isatty():
        click.echo(f"{record.run_id} {record.state} (stage {record.stage})", err=True)


def _print_end(record: RunRecord) -> None:
    if record.state == "succeeded":
        emit(record.outcome.get("result"))
        return
    error: dict[str, Any] = record.outcome.get("error") or {}
    print_rejection(
        f"run {record.run_id} {record.state}: {error.get('message', '')}",
        [d for d in error.get("details", []) if "loc" in d],
    )
    sys.exit(EXIT_FAILED)


COMMANDS: list[click.Command] = [pipelines, pipeline]
