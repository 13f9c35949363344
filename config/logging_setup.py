"""Logging: console or JSON lines, job context on every record, secrets scrubbed.

Installed on Celery's `setup_logging` signal so Celery does not configure logging itself.
Every record made while a task runs carries `job_id` and `op`; every record of a worker
carries `instance_id` once the fleet step knows it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from config.settings import Settings

#: `scheme://user:password@` in any URL, and bearer tokens, are replaced before a record is written.
#: Each with the plain text that must be in a line for the pattern to match: most lines have
#: neither, and a substring test is far cheaper than the regex (two log lines per job).
_SECRET_PATTERNS = (
    ("://", re.compile(r"(?P<pre>\w+://[^:/@\s]*:)[^@\s]+@"), r"\g<pre>***@"),
    ("bearer", re.compile(r"(?i)(?P<pre>bearer\s+)[\w.~+/=-]+"), r"\g<pre>***"),
)

_CONTEXT_FIELDS = ("job_id", "op", "instance_id")


class LogContext:
    """Process-wide values added to every record (the worker's instance id)."""

    instance_id: str | None = None


def scrub(text: str) -> str:
    folded = text.casefold()
    for needle, pattern, replacement in _SECRET_PATTERNS:
        if needle in folded:
            text = pattern.sub(replacement, text)
    return text


class ContextFilter(logging.Filter):
    """Adds job_id/op from the task being run, and the worker's instance_id."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id, op = _current_job()
        if not getattr(record, "job_id", None):
            record.job_id = job_id
        if not getattr(record, "op", None):
            record.op = op
        if not getattr(record, "instance_id", None):
            record.instance_id = LogContext.instance_id
        return True


def _current_job() -> tuple[str | None, str | None]:
    from celery._state import get_current_task

    task = get_current_task()
    if task is None or task.request.id is None:
        return None, None
    name = task.name or ""
    return task.request.id, name.removeprefix("ops.")


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(
            f"{field}={getattr(record, field)}"
            for field in _CONTEXT_FIELDS
            if getattr(record, field, None)
        )
        return scrub(f"{base} [{extras}]" if extras else base)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str))


def configure_logging(settings: Settings) -> None:
    """Replace the root logger's handlers with one stream handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            ConsoleFormatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
        )
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
