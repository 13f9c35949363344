"""`bot schedules`: the schedules this installation knows, their last and next slot."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click
import redis

# Importing bot builds the app, which discovers the ops, pipelines and schedules.
from bot import app
from bot.base.exits import EXIT_FAILED
from bot.flows.slots import SlotLedger, utc_now
from bot.jobs.envelope import printable
from bot.pipelines import SCHEDULES, Schedule
from config.settings import redact_url

COLUMNS = ("schedule", "spec", "target", "catch-up", "last slot", "next slot")


def schedule_state(item: Schedule, last: datetime | None, now: datetime) -> dict[str, Any]:
    """JSON-ready: the definition, the last slot fired and the next one (UTC ISO), their ids."""
    upcoming = item.timing.following(now)
    return {
        **item.describe(),
        "last_slot": last.isoformat() if last else None,
        "last_id": item.slot_id(last) if last else None,
        "next_slot": upcoming.isoformat() if upcoming else None,
        "next_id": item.slot_id(upcoming) if upcoming else None,
    }


def _local(item: Schedule, slot: datetime | None) -> str:
    """A slot in the schedule's time zone, to the second: `2024-01-01 03:00:00+01:00`."""
    return slot.astimezone(item.timing.tz).isoformat(" ", "seconds") if slot else "-"


def _row(item: Schedule, last: datetime | None, now: datetime) -> tuple[str, ...]:
    return (
        item.name,
        printable(item.spec_label(), 200),
        f"{item.target_kind} {item.target}",
        item.catch_up_label(),
        _local(item, last),
        _local(item, item.timing.following(now)),
    )


def render_table(rows: list[tuple[str, ...]]) -> str:
    table = [COLUMNS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per schedule, by name.")
def schedules(as_json: bool) -> None:
    """List the schedules: timing, target, catch-up policy, last slot fired and next slot.

    Slots are shown in each schedule's time zone (--json: UTC). A schedule whose last slot is
    `-` has not been fired by any beat yet."""
    try:
        fired = SlotLedger(app.redis(), app.keys).all()
    except redis.RedisError as exc:
        click.echo(
            f"bot: Redis at {redact_url(app.settings.redis_url)} unreachable: {exc}", err=True
        )
        sys.exit(EXIT_FAILED)
    now = utc_now()
    if as_json:
        states = {item.name: schedule_state(item, fired.get(item.name), now) for item in SCHEDULES}
        click.echo(json.dumps(states, indent=2))
        return
    if not len(SCHEDULES):
        click.echo("no schedules (declare them with bot.schedule next to your ops)")
        return
    click.echo(render_table([_row(item, fired.get(item.name), now) for item in SCHEDULES]))


COMMANDS: list[click.Command] = [schedules]
