"""`bot fleet` (who is in the fleet, in what state) and `bot health` (a probe's exit code)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import redis

from bot.base.exits import EXIT_FAILED, EXIT_OK
from bot.fleet.health import fleet_health, local_health
from bot.fleet.records import WorkerRecords, WorkerView
from bot.jobs.envelope import printable
from bot.outbox.retention import read_behind
from bot.store.connect import connect
from bot.store.keys import Keys
from config.celery_config import broker_transport_options
from config.settings import load_settings, redact_url

COLUMNS = ("bot", "instance", "host", "state", "pool", "in flight", "done", "failed", "heartbeat")


def _registry() -> WorkerRecords:
    settings = load_settings()
    return WorkerRecords(
        connect(settings), Keys(settings.key_prefix), broker_transport_options(settings)
    )


def pool_cell(record: dict[str, str]) -> str:
    """The pool size, with the pool's kind unless it is prefork: `8 threads`."""
    size = record.get("pool", "-")
    kind = record.get("pool_kind", "").rsplit(".", 1)[-1]
    if kind in ("", "?", "prefork"):
        return size
    return f"{size} {'threads' if kind == 'thread' else kind}"


def _row(view: WorkerView, now: float) -> tuple[str, ...]:
    record = view.record
    age = view.heartbeat_age_s(now)
    return (
        record.get("bot_id", "-"),
        view.instance_id,
        record.get("host", "-"),
        view.state,
        pool_cell(record),
        record.get("in_flight", "-"),
        record.get("done", "-"),
        record.get("failed", "-"),
        "-" if age is None else f"{age:.1f}s ago",
    )


def render_table(views: list[WorkerView], now: float) -> str:
    rows = [COLUMNS, *(_row(view, now) for view in views)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def notes(views: list[WorkerView], behind: dict[str, dict[str, Any]]) -> list[str]:
    """Lines under the table: why each DEGRADED worker is, and the outbox groups that are
    behind the retention bounds (the last retention pass's verdict, `bot:outbox:behind`)."""
    lines = [
        f"{view.instance_id}: DEGRADED: {printable(view.record.get('state_reason') or '?', 300)}"
        for view in views
        if view.state == "DEGRADED"
    ]
    for group, info in sorted(behind.items()):
        lines.append(
            f"outbox group {printable(group)} behind ({info.get('bound', '?')} bound): owes "
            f"{info.get('owed', '?')}, oldest {info.get('oldest_owed_age_s', '?')}s (bot outbox)"
        )
    return lines


def _fail_unreachable(exc: Exception) -> None:
    settings = load_settings()
    click.echo(f"bot: Redis at {redact_url(settings.redis_url)} unreachable: {exc}", err=True)
    sys.exit(EXIT_FAILED)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per worker, in a list.")
def fleet(as_json: bool) -> None:
    """List the workers of the fleet: state, pool, jobs, heartbeat age.

    A worker whose lease expired shows as DEAD (record left) or GONE (no record). Under the
    table: why each DEGRADED worker is (`state_reason` in --json), and the outbox groups
    behind the retention bounds."""
    try:
        registry = _registry()
        views = registry.fleet()
        behind = {} if as_json else read_behind(registry.client, registry.keys)
    except redis.RedisError as exc:
        _fail_unreachable(exc)
        return
    now = time.time()
    if as_json:
        click.echo(json.dumps([view.as_dict(now) for view in views], indent=2))
        return
    click.echo(render_table(views, now) if views else "no workers registered")
    for line in notes(views, behind):
        click.echo(line)


@click.command()
@click.option("--fleet", "whole_fleet", is_flag=True, help="Healthy if any worker is.")
@click.option("--node", help="The local worker's node name, when several share the state dir.")
def health(whole_fleet: bool, node: str | None) -> None:
    """Exit 0 when the local worker (or, with --fleet, any worker) is READY/PROCESSING, else 1."""
    try:
        registry = _registry()
        verdict = (
            fleet_health(registry)
            if whole_fleet
            else local_health(registry, load_settings().state_dir, node)
        )
    except redis.RedisError as exc:
        _fail_unreachable(exc)
        return
    for line in verdict.lines:
        click.echo(line)
    sys.exit(EXIT_OK if verdict.healthy else EXIT_FAILED)


COMMANDS: list[click.Command] = [fleet, health]
