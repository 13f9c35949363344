"""`bot pipelines`: the pipelines this installation knows, their stages and input schema."""

from __future__ import annotations

import json

import click

# Importing bot builds the app, which discovers the ops and pipelines (bot/pipelines/discovery.py).
import bot  # noqa: F401
from bot.cli.jobs import fields_summary
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


COMMANDS: list[click.Command] = [pipelines]
