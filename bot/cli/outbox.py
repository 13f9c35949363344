"""`bot outbox [stats|dead|replay ID|replay --all]`: the report stream as operators see it."""

from __future__ import annotations

import json
from typing import Any

import click

from bot.cli import EXIT_FAILED, EXIT_USAGE
from bot.outbox import Outbox


def _outbox() -> Outbox:
    from bot import app

    return Outbox(app.redis(), app.keys)


def _print_stats(stats: dict[str, Any]) -> None:
    click.echo(f"stream        {stats['stream']}")
    click.echo(f"length        {stats['length']}")
    click.echo(f"dead          {stats['dead']}")
    click.echo(f"oldest owed   {stats['oldest_pending_age_s']:.1f}s")
    if not stats["groups"]:
        click.echo("groups        (none: no sink reads the outbox yet)")
        return
    click.echo(f"{'group':<16}{'consumers':>10}{'pending':>9}{'unread':>9}{'replay':>8}  oldest")
    for g in stats["groups"]:
        click.echo(
            f"{g['group']:<16}{g['consumers']:>10}{g['pending']:>9}{g['unread']:>9}"
            f"{g['replay_owed']:>8}  {g['oldest_owed_age_s']:.1f}s"
        )


@click.group(invoke_without_command=True)
@click.pass_context
def outbox(ctx: click.Context) -> None:
    """Reports: stream length, what each sink owes, dead letters (default: stats)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(stats)


@outbox.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(as_json: bool) -> None:
    """Length, pending and unread per sink, oldest owed entry's age, dead count."""
    data = _outbox().stats()
    if as_json:
        click.echo(json.dumps(data))
    else:
        _print_stats(data)


@outbox.command()
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines (with the report).")
def dead(limit: int, as_json: bool) -> None:
    """Reports a sink refused past BOT_OUTBOX_MAX_DELIVERIES, oldest first."""
    for row in _outbox().dead(limit):
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(
                f"{row['id']}  job {row.get('job_id', '')}  sink {row.get('group', '')}  "
                f"deliveries {row.get('deliveries', '')}  {row.get('reason', '')}"
            )


@outbox.command()
@click.argument("dead_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead report.")
def replay(dead_id: str | None, replay_all: bool) -> None:
    """Send a dead report (DEAD_ID, from `bot outbox dead`) or all of them to their sink again."""
    if bool(dead_id) == replay_all:
        click.echo("bot: give one DEAD_ID or --all", err=True)
        raise SystemExit(EXIT_USAGE)
    box = _outbox()
    if replay_all:
        click.echo(f"replayed {box.replay_all()}")
        return
    assert dead_id is not None
    new_id = box.replay(dead_id)
    if new_id is None:
        click.echo(f"bot: no dead report {dead_id}", err=True)
        raise SystemExit(EXIT_FAILED)
    click.echo(f"replayed {dead_id} as {new_id}")


COMMANDS: list[click.Command] = [outbox]
