"""The job record `bot:job:{id}` as Python reads it: one typed `JobRecord`, parsed in one place.

The hash is written only by Lua scripts (acquire.lua, complete.lua, reap.lua; and by
`Client.submit` for a caller's own id): every reader (the client's status, the lost-child
hand-back, the unheld-job audit, reap) goes through `JobRecord.from_hash`, so a field's name
and encoding are spelled once. A partial read (HMGET of a few fields) parses too: a missing
field reads as its default. A value that does not parse reads as missing rather than raising:
the record is shared with anyone who can write to Redis.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.jobs.reports import FINAL_STATES


def int_field(value: str | None) -> int | None:
    """A hash field as an int; None for none, or for a value that does not parse."""
    try:
        return int(value) if value else None
    except ValueError:
        return None


def json_field(value: str | None) -> Any:
    """A hash field as JSON; None for none, or for a value that does not parse."""
    try:
        return json.loads(value) if value else None
    except ValueError:
        return None


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    #: "" when the hash has no state (no record, or a partial read without it).
    state: str = ""
    op: str | None = None
    queue: str = ""
    #: The instance id running the job ("" when nobody does), and the pool process's pid.
    owner: str = ""
    pid: int | None = None
    fence: int = 0
    attempts: int = 0
    recoveries: int = 0
    delivery_tag: str = ""
    #: The message needed to publish the job again ({task, args, kwargs, queue}).
    message: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    #: {"result": ...} or {"error": ...} of the last attempt.
    outcome: dict[str, Any] = field(default_factory=dict)
    enqueued_at_ms: int | None = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_hash(cls, job_id: str, fields: Mapping[str, str | None]) -> JobRecord:
        """The record from HGETALL's mapping (or HMGET's names and values zipped)."""
        get = fields.get
        message, outcome = json_field(get("message")), json_field(get("outcome"))
        progress = json_field(get("progress"))
        return cls(
            job_id=job_id,
            state=get("state") or "",
            op=get("op"),
            queue=get("queue") or "",
            owner=get("owner") or "",
            pid=int_field(get("pid")),
            fence=int_field(get("fence")) or 0,
            attempts=int_field(get("attempts")) or 0,
            recoveries=int_field(get("recoveries")) or 0,
            delivery_tag=get("delivery_tag") or "",
            message=message if isinstance(message, dict) else {},
            progress=progress if isinstance(progress, dict) else None,
            outcome=outcome if isinstance(outcome, dict) else {},
            enqueued_at_ms=int_field(get("enqueued_at")),
            started_at_ms=int_field(get("started_at")),
            finished_at_ms=int_field(get("finished_at")),
        )
