"""`bot triggers [--json]`: the declared triggers; `bot triggers run`: one trigger consumer
(bot/flows/triggers.py) in the foreground, outside a worker, until SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import click

# Importing bot builds the app, which discovers the ops, pipelines and triggers.
from bot import app
from bot.base.exits import EXIT_USAGE
from bot.flows.triggers import TriggerConsumer, TriggerSink, trigger_consumer
from bot.jobs.envelope import printable
from bot.pipelines.triggers import TRIGGERS, Trigger
from config.logging_setup import LogContext, configure_logging


def _line(trigger: Trigger) -> str:
    source = f"{trigger.source.kind} {trigger.source.name}"
    target = f"{trigger.target.kind} {trigger.target.name}"
    when = "|".join(trigger.statuses)
    return printable(f"{trigger.name:40} on {when} of {source:28} -> {target}", 2000)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the triggers as JSON.")
@click.pass_context
def triggers(ctx: click.Context, as_json: bool) -> None:
    """List the triggers: a report of an op or pipeline that starts another (`bot.on`)."""
    if ctx.invoked_subcommand is not None:
        return
    if as_json:
        click.echo(json.dumps([trigger.describe() for trigger in TRIGGERS], indent=2))
        return
    if not len(TRIGGERS):
        click.echo("no triggers (declare them with bot.on next to your ops)")
    for trigger in TRIGGERS:
        click.echo(_line(trigger))


@triggers.command()
@click.option("--status-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
def run(status_file: Path | None) -> None:
    """Consume the outbox and fire the triggers, in the foreground (workers do it too, unless
    BOT_TRIGGERS is off); with --status-file, its counters as JSON there every 0.1 s."""
    if not len(TRIGGERS):
        click.echo("bot: no trigger is declared", err=True)
        raise SystemExit(EXIT_USAGE)
    configure_logging(app.settings)
    consumer_name = f"triggers-{uuid.uuid4().hex}"
    LogContext.instance_id = consumer_name
    consumer = trigger_consumer(app, consumer_name)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: consumer.request_stop())
    consumer.start()
    click.echo(f"trigger consumer {consumer_name} ready (pid {os.getpid()})")
    while consumer.snapshot()["running"]:
        if status_file is not None:
            _write_status(status_file, consumer)
        time.sleep(0.1)
    consumer.stop()


def _write_status(path: Path, consumer: TriggerConsumer) -> None:
    sink = consumer.sink.snapshot() if isinstance(consumer.sink, TriggerSink) else {}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**consumer.snapshot(), "sink": sink}), encoding="utf-8")
    os.replace(tmp, path)


COMMANDS: list[click.Command] = [triggers]
