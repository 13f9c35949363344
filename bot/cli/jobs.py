"""`bot submit`, `bot status`, `bot ops`: enqueue jobs and read their state."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click

from bot.base.exits import EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE
from bot.client import Client, JobStatus
from bot.errors import InvalidJobId, PayloadRejected
from bot.jobs.envelope import printable
from bot.jobs.progress import summary
from bot.ops import REGISTRY


def parse_fields(fields: tuple[str, ...]) -> dict[str, Any]:
    """`k=v` pairs; each value is read as JSON when it parses (1, 2.5, true, [1]), else a string."""
    payload: dict[str, Any] = {}
    for item in fields:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not of the form key=value", param_hint="FIELDS")
        try:
            payload[key] = json.loads(raw)
        except json.JSONDecodeError:
            payload[key] = raw
    return payload


def emit(value: Any) -> None:
    click.echo(json.dumps(value, default=str) if not isinstance(value, str) else value)


@click.command()
@click.argument("op")
@click.argument("fields", nargs=-1)
@click.option("--json", "json_payload", help="The whole payload as a JSON object.")
@click.option("--id", "job_id", help="Your own job id (an idempotency key).")
@click.option("--queue", help="Queue to send to (default: the op's, or the first of BOT_QUEUES).")
@click.option("--countdown", type=float, help="Run no sooner than this many seconds from now.")
@click.option("--wait", is_flag=True, help="Wait for the outcome and print the result.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this long.")
def submit(
    op: str,
    fields: tuple[str, ...],
    json_payload: str | None,
    job_id: str | None,
    queue: str | None,
    countdown: float | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Submit OP with a payload of key=value FIELDS (or --json)."""
    payload = payload_from(json_payload, fields)
    try:
        submitted = Client().submit(op, payload, job_id=job_id, queue=queue, countdown=countdown)
    except PayloadRejected as exc:
        exit_rejected(exc, f"op {op!r}")
    if not submitted.enqueued:
        click.echo(f"bot: job {submitted.job_id} is already known; not enqueued again", err=True)
    if not wait:
        click.echo(submitted.job_id)
        return
    _wait_and_print(submitted.job_id, timeout)


def payload_from(json_payload: str | None, fields: tuple[str, ...]) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if json_payload:
        try:
            payload = json.loads(json_payload)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc.msg}", param_hint="--json") from None
        if not isinstance(payload, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--json")
    payload.update(parse_fields(fields))
    return payload


def _show_progress(status: JobStatus) -> None:
    if sys.stderr.isatty() or status.progress:
        line = f"{status.job_id} {status.state}"
        if status.progress:
            p = status.progress
            line += f" {summary(p['current'], p['total'], p.get('note'))}"
        click.echo(line, err=True)


def _wait_and_print(job_id: str, timeout: float | None) -> None:
    try:
        status = Client().wait(job_id, timeout=timeout, on_update=_show_progress)
    except TimeoutError as exc:
        click.echo(f"bot: {exc}", err=True)
        sys.exit(EXIT_TIMEOUT)
    if status.state == "succeeded":
        emit(status.result)
        return
    error = status.error or {}
    print_rejection(
        f"job {job_id} {status.state}: {error.get('type', '')}: {error.get('message', '')}",
        error.get("details") or [],
    )
    sys.exit(EXIT_FAILED)


def exit_rejected(exc: PayloadRejected, what: str) -> NoReturn:
    """Print why a submission of `what` was refused (with its field errors) and exit 2."""
    about_payload = exc.errors and not isinstance(exc, InvalidJobId)
    print_rejection(f"invalid payload for {what}" if about_payload else exc.message, exc.errors)
    sys.exit(EXIT_USAGE)


def print_rejection(headline: str, field_errors: list[dict[str, Any]]) -> None:
    """The headline and one line per field error, escaped: they may carry what a sender or
    an op put there (control characters must not reach the terminal)."""
    click.echo(f"bot: {printable(headline, 2000)}", err=True)
    for error in field_errors:
        loc = ".".join(str(part) for part in error.get("loc", [])) or "payload"
        click.echo(f"  {printable(loc)}: {printable(str(error.get('msg')), 500)}", err=True)


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's state, owner, attempts, recoveries, progress and timestamps."""
    job = Client().status(job_id)
    if as_json:
        click.echo(job.model_dump_json())
        return
    for name, value in job.model_dump(exclude_none=True).items():
        if name == "progress":
            value = summary(value["current"], value["total"], value.get("note"))
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        click.echo(f"{name:12} {printable(text, 10_000)}")
    if job.state == "unknown":
        sys.exit(EXIT_FAILED)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print names and JSON Schemas as JSON.")
def ops(as_json: bool) -> None:
    """List the ops this installation knows, with their payload schemas."""
    schemas = {spec.name: spec.schema() for spec in REGISTRY}
    if as_json:
        click.echo(json.dumps(schemas, indent=2))
        return
    for spec in REGISTRY:
        headline = spec.description.splitlines()[0] if spec.description else ""
        click.echo(f"{spec.name:12} {fields_summary(spec.schema()):40} {headline}")


def fields_summary(schema: dict[str, Any]) -> str:
    """`a:number b:number factor?:number`: each field of an object schema (or of each part of
    an `allOf`), `?` when optional."""
    parts: dict[str, str] = {}
    for part in schema.get("allOf", [schema]):
        required = set(part.get("required", []))
        for name, prop in part.get("properties", {}).items():
            parts.setdefault(name, f"{name}{'' if name in required else '?'}:{_type_of(prop)}")
    return " ".join(parts.values())


def _type_of(prop: dict[str, Any]) -> str:
    if "type" in prop:
        return str(prop["type"])
    options = prop.get("anyOf") or prop.get("oneOf") or []
    return "|".join(str(o.get("type", "?")) for o in options) or "any"


COMMANDS: list[click.Command] = [submit, status, ops]
