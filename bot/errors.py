"""The exceptions that decide a job's fate: rejected (never retried), transient (retried).

They cross the wire inside Celery's JSON result encoding, so their constructor arguments are
plain JSON values and `exc_type`/`exc_module` name a class every client can import.
"""

from __future__ import annotations

from typing import Any


class BotError(Exception):
    """Base class of bot's own errors."""


class PayloadRejected(BotError):
    """The payload is not valid for the op, or the op is unknown. Never retried.

    `errors` is pydantic's field-level detail: a list of {loc, msg, type}.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, errors or [])
        self.message = message
        self.errors = errors or []

    def __str__(self) -> str:
        return self.message


class UnknownOp(PayloadRejected):
    """No op of that name is registered."""


class UnknownPipeline(PayloadRejected):
    """No pipeline of that name is registered."""


class InvalidJobId(PayloadRejected):
    """A caller's job id is not of the accepted form (bot.jobs.envelope.JOB_ID_PATTERN)."""


class TransientError(BotError):
    """Raise from an op to ask for a retry with backoff (any op may)."""
