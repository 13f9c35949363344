"""`bot outbox [stats|dead|replay ID|replay --all]`: the report stream as operators see it.

Every string read from Redis or typed by the user is printed through `printable` (job ids,
group names and dead-letter reasons come from senders and receivers: a raw CR or escape
sequence would forge lines on the operator's terminal); `--json` output is escaped by JSON."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from bot import app
from bot.base.exits import EXIT_FAILED, EXIT_USAGE
from bot.jobs.envelope import printable
from bot.outbox.retention import mark_behind, read_behind
from bot.outbox.stream import Outbox

#: A stream entry id, as `bot outbox dead` lists them.
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _outbox() -> Outbox:
    return Outbox(app.redis(), app.keys)


def _print_stats(stats: dict[str, Any]) -> None:
    click.echo(f"stream        {printable(stats['stream'])}")
    click.echo(f"length        {stats['length']}")
    click.echo(f"dead          {stats['dead']}")
    click.echo(f"oldest owed   {stats['oldest_pending_age_s']:.1f}s")
    if not stats["groups"]:
        click.echo("groups        (none: no sink reads the outbox yet)")
        return
    click.echo(
        f"{'group':<16}{'consumers':>10}{'owed':>9}{'pending':>9}{'unread':>9}{'replay':>8}"
        f"{'owed age':>11}  behind"
    )
    for g in stats["groups"]:
        behind = f"yes ({g['behind_bound']})" if g["behind"] else "no"
        age = f"{g['oldest_owed_age_s']:.1f}s"
        click.echo(
            f"{printable(g['group']):<16}{g['consumers']:>10}{g['owed']:>9}{g['pending']:>9}"
            f"{g['unread']:>9}{g['replay_owed']:>8}{age:>11}  {behind}"
        )
    click.echo(
        "owed: pending (read, not acked) + unread; owed age: how long the oldest report a "
        "group owes has waited (bot_outbox_owed_age_seconds): growing, its sink is behind"
    )
    if stats["behind"]:
        click.echo(
            "behind: owes reports past BOT_OUTBOX_MAX_AGE / BOT_OUTBOX_MAX_LEN, kept until "
            f"read; fix its consumer or XGROUP DESTROY {printable(stats['stream'])} <group>"
        )


def _dead_line(row: dict[str, str]) -> str:
    fields = ("job_id", "group", "deliveries")
    job, group, deliveries = (printable(row.get(f, "")) for f in fields)
    reason = printable(row.get("reason", ""), 600)  # outbox.dead_letter keeps 500
    return f"{printable(row['id'])}  job {job}  sink {group}  deliveries {deliveries}  {reason}"


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Stats as JSON (bot outbox stats --json).")
@click.pass_context
def outbox(ctx: click.Context, as_json: bool) -> None:
    """Reports: stream length, what each sink owes, dead letters (default: stats)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(stats, as_json=as_json)


@outbox.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(as_json: bool) -> None:
    """Length; per sink what it owes (pending + unread) and the age of the oldest report it
    owes, whether it is behind the retention bounds (the last retention pass's verdict); dead
    count."""
    box = _outbox()
    data = mark_behind(box.stats(), read_behind(box.client, box.keys))
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
            click.echo(_dead_line(row))


@outbox.command()
@click.argument("dead_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead report.")
def replay(dead_id: str | None, replay_all: bool) -> None:
    """Send a dead report (DEAD_ID, from `bot outbox dead`) or all of them to their sink again."""
    if bool(dead_id) == replay_all:
        click.echo("bot: give one DEAD_ID or --all", err=True)
        raise SystemExit(EXIT_USAGE)
    if dead_id and not _STREAM_ID.fullmatch(dead_id):  # Redis would answer with an error
        click.echo(f"bot: not a dead report id: {printable(dead_id)}", err=True)
        raise SystemExit(EXIT_USAGE)
    box = _outbox()
    if replay_all:
        click.echo(f"replayed {box.replay_all()}")
        return
    assert dead_id is not None
    new_id = box.replay(dead_id)
    if new_id is None:
        click.echo(f"bot: no dead report {printable(dead_id)}", err=True)
        raise SystemExit(EXIT_FAILED)
    click.echo(f"replayed {printable(dead_id)} as {printable(new_id)}")


COMMANDS: list[click.Command] = [outbox]
