"""The job record `bot:job:{id}` as Python reads it: one typed `JobRecord`, parsed in one place.

The hash is written only by Lua scripts (acquire.lua, complete.lua, reap.lua; and by
`Client.submit` for a caller's own id): every reader (the client's status, the lost-child
hand-back, the unheld-job audit, reap) goes through `JobRecord.from_hash`, so a field's name
and encoding are spelled once. A partial read (HMGET of a few fields) parses too: a missing
field reads as its default. A value that does not parse reads as missing rather than raising:
the record is shared with anyone who can write to Redis.

What the record holds, by the job's state:
- queued (a caller's own id, claim_id.lua): job_id, state, op, queue, digest, enqueued_at.
- running / retrying (acquire.lua, complete.lua for `retrying`, reap.lua for `queued` again):
  also owner, fence, attempts, recoveries, started_at, updated_at, progress, outcome (the
  last attempt's), and what only a live job needs: `RUNNING_ONLY_FIELDS`.
- finished (succeeded, failed, rejected, dead; complete.lua, in the step that ends the job):
  job_id, state, op, queue, digest, owner, fence, attempts, recoveries, outcome, progress,
  report_id and the timestamps (enqueued_at, started_at, updated_at, finished_at). That is
  what its readers need: `bot status` and `Client.status`/`wait` (state, op, owner, attempts,
  recoveries, progress, outcome, timestamps), a resubmission of the same id (state, digest:
  bot/flows/submit.py), a second delivery of the job (acquire.lua: owner and fence, then op,
  digest and the final state: acked without running), a repeat of the complete after a lost
  reply (owner, fence, state, report_id), a pipeline stage delivered again (state, outcome).
  Every `RUNNING_ONLY_FIELDS` field is dropped, and the hash written anew, so Redis keeps it
  in its compact encoding (a hash that once held a long value, the message, never shrinks
  back by itself): 536 bytes instead of 1,680 for a `sum` job (bench/memory_per_job.py,
  README "Redis memory"). It expires `BOT_JOB_TTL` after the end; Celery's result meta
  `BOT_RESULT_TTL` after it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.jobs.reports import FINAL_STATES

#: Fields only a queued or running job needs, dropped when it ends (complete.lua gets them as
#: an argument: this is their one list). `message`: the reaper publishes the job again from it
#: when its unacked entry is gone; `delivery_tag`: the reaper's restore_by_tag; `claim` and
#: `exhausted`: acquire's answer to a repeat of the same attempt after a lost reply; `pid`: the
#: lost-child hand-back, and acquire's takeover of a job of the worker's own dead process;
#: `recovered_from`, `recovered_at`: reap's note of the last hand-back.
RUNNING_ONLY_FIELDS: tuple[str, ...] = (
    "message",
    "delivery_tag",
    "claim",
    "pid",
    "exhausted",
    "recovered_from",
    "recovered_at",
)


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
    #: The instance id running the job ("" when nobody does; a finished job's last owner),
    #: and the pool process's pid (None once the job ended: running-only).
    owner: str = ""
    pid: int | None = None
    fence: int = 0
    attempts: int = 0
    recoveries: int = 0
    #: Running-only, like `message`: {} and "" once the job ended.
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
