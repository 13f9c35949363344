"""What an `ops.*` message must look like before Celery may unpack it, and its safe names.

Celery 5.7 unpacks a task message in the worker's *main* process (the strategy builds a
`Request`, which splits the body into args, kwargs and embed). A body that is not a 3-item
array, a header of the wrong type, or JSON nested deeply enough to exhaust the recursion limit
raises there, and Celery calls that "Unrecoverable error" and stops the worker; the message goes
back to the head of its queue and stops the next worker too. `check_envelope` looks at the raw
message first and says what is wrong with it, in words a sender can act on, so the guarded
strategy (bot/strategy.py) can reject it with a record and a report instead.

Also here, because the client, the strategy and the CLI must agree on them: what a valid job id
is, the stand-in id of a message whose own id is unusable, and the payload digest that binds a
job id to what was submitted.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from bot.errors import PayloadRejected

#: Job ids: what is safe as a Redis key part, an HTTP header value and a terminal word.
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,200}$")
#: Deepest JSON nesting accepted in a message body (a payload model rarely needs 5).
MAX_JSON_DEPTH = 64
#: Bytes of a body allowed beyond BOT_MAX_PAYLOAD_BYTES: the args array and Celery's embed.
ENVELOPE_SLACK_BYTES = 4096
#: Bytes of all headers together (Celery's own are well under 2 KiB; argsrepr is cut at 1 KiB).
MAX_HEADERS_BYTES = 65_536
#: The header the publisher stamps with the enqueue time (ms since the epoch).
ENQUEUED_AT_HEADER = "bot_enqueued_at"
#: Prefix of the stand-in job id given to a message whose own id is missing or unusable.
STAND_IN_PREFIX = "malformed-"
#: Headers Celery reads in the main process or the tracer, and the types it can live with.
_OPTIONAL_STRING_HEADERS = (
    "shadow",
    "root_id",
    "parent_id",
    "group",
    "argsrepr",
    "kwargsrepr",
    "lang",
    "origin",
)
_OPTIONAL_STRING_LIST_HEADERS = ("stamped_headers", "groups")
_OPTIONAL_WHOLE_NUMBER_HEADERS = ("retries", "replaced_task_nesting", "group_index")
_OPTIONAL_OBJECT_HEADERS = ("stamps",)
#: Keys of Celery's embed (the body's third item) and what each must be when present.
_EMBED_LISTS = ("callbacks", "errbacks", "chain")
_EMBED_OBJECTS = ("chord",)
_JSON_CONTENT_TYPES = ("application/json",)
#: Milliseconds: enqueue times before 2000-01-01, or this far ahead of our clock, are not real.
_EARLIEST_ENQUEUE_MS = 946_684_800_000
_ENQUEUE_SKEW_MS = 86_400_000


class Malformed(PayloadRejected):
    """A message that must not run: what is wrong, in words and as field errors. Like any
    rejected payload it is never retried."""


def _error(loc: list[str], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


def job_id_problem(job_id: object) -> str | None:
    """Why `job_id` is not a usable job id, or None."""
    if job_id is None:
        return "job id is missing (header 'id')"
    if not isinstance(job_id, str):
        return f"job id must be a string, not {type(job_id).__name__}"
    if not JOB_ID_PATTERN.match(job_id):
        return f"job id must match {JOB_ID_PATTERN.pattern} (got {printable(job_id, 60)})"
    return None


def stand_in_job_id(raw_id: object, body: bytes) -> str:
    """A safe, deterministic id for a message whose own id is unusable: the same message
    delivered twice gets the same stand-in, so it is rejected (and reported) once."""
    seed = repr(raw_id).encode("utf-8", "backslashreplace") if raw_id is not None else body
    return STAND_IN_PREFIX + hashlib.sha256(seed).hexdigest()[:40]


def printable(text: str, limit: int = 200) -> str:
    """`text` with control and non-ASCII characters escaped and cut to `limit` characters:
    fit for one log or terminal line, whatever a sender put in it."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def payload_digest(args: Any, kwargs: Any) -> str:
    """sha256 of the canonical JSON of (args, kwargs): equal for every faithful copy of one
    submission (a retry, a redelivery, a republish from the record), different otherwise."""
    canonical = json.dumps(
        [args, kwargs], sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def raw_digest(body: bytes) -> str:
    """The digest of a message that could not be unpacked: of its raw bytes."""
    return "raw:" + hashlib.sha256(body).hexdigest()


def enqueued_at_ms(value: object, now_ms: int | None = None) -> int | None:
    """The `bot_enqueued_at` header as a sane millisecond time, or None: a sender's clock a
    little ahead is clamped to ours, anything else unusable is ignored (never an error)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if number < _EARLIEST_ENQUEUE_MS or number > now + _ENQUEUE_SKEW_MS:
        return None
    return min(int(number), now)


def json_depth_over(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text `raw` nests arrays/objects deeper than `limit`. Brackets inside
    strings do not count. Cheap for ordinary bodies: under `limit` brackets in all, no scan."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for token in _STRUCTURE.finditer(raw):
        char = token.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


#: A JSON string (skipped whole, escapes included) or one structural bracket.
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def check_envelope(
    headers: Mapping[str, Any],
    body: bytes,
    content_type: str | None,
    payload_limit: int,
) -> None:
    """Raise `Malformed` unless a protocol-2 `ops.*` message can be unpacked safely.
    Looks at the raw bytes only: nothing is decoded before size and depth are known."""
    _check_headers(headers)
    if content_type not in _JSON_CONTENT_TYPES:
        raise Malformed(
            f"content type {printable(str(content_type), 60)} is not accepted: send JSON",
            [_error(["content_type"], "only application/json is accepted", "content_type")],
        )
    limit = payload_limit + ENVELOPE_SLACK_BYTES
    if len(body) > limit:
        raise Malformed(
            f"message body of {len(body)} bytes is over BOT_MAX_PAYLOAD_BYTES "
            f"({payload_limit}) plus {ENVELOPE_SLACK_BYTES} bytes of envelope",
            [_error([], f"payload larger than {payload_limit} bytes", "too_large")],
        )
    if json_depth_over(body):
        raise Malformed(
            f"message body nests JSON deeper than {MAX_JSON_DEPTH} levels",
            [_error([], f"JSON nested deeper than {MAX_JSON_DEPTH}", "too_deep")],
        )


def check_body(body: Any) -> tuple[list[Any], dict[str, Any]]:
    """The decoded body as (args, kwargs); `Malformed` unless it is Celery's protocol 2
    array `[args, kwargs, embed]` of a list, an object and an object (or null)."""
    shape = "must be [args (array), kwargs (object), embed (object)]"
    shape_error = _error(["body"], shape, "body")
    if isinstance(body, bytes | str):  # kombu hands back an empty body undecoded
        raise Malformed("message body is empty", [shape_error])
    if not isinstance(body, list) or len(body) != 3:
        kind = f"an array of {len(body)}" if isinstance(body, list) else type(body).__name__
        raise Malformed(f"message body must be a 3-item array, not {kind}", [shape_error])
    args, kwargs, embed = body
    if not isinstance(args, list):
        raise Malformed("message args must be an array", [_error(["args"], "not an array", "args")])
    if not isinstance(kwargs, dict):
        raise Malformed(
            "message kwargs must be an object", [_error(["kwargs"], "not an object", "kwargs")]
        )
    if embed is not None and not isinstance(embed, dict):
        raise Malformed("message embed must be an object", [shape_error])
    if "self" in kwargs:  # Celery's tracer calls the task as f(self, *args, **kwargs)
        raise Malformed(
            "kwarg 'self' cannot be passed through Celery",
            [_error(["kwargs", "self"], "reserved by Celery", "reserved")],
        )
    _check_embed(embed or {})
    return args, kwargs


def _check_embed(embed: Mapping[str, Any]) -> None:
    """Callbacks, errbacks, chain and chord are read after the op ran: malformed, they would
    fail a job whose op already succeeded."""
    for name in _EMBED_LISTS:
        if embed.get(name) is not None and not isinstance(embed[name], list):
            raise Malformed(
                f"embed {name!r} must be an array",
                [_error(["embed", name], "not an array", "embed")],
            )
    for name in _EMBED_OBJECTS:
        if embed.get(name) is not None and not isinstance(embed[name], dict):
            raise Malformed(
                f"embed {name!r} must be an object",
                [_error(["embed", name], "not an object", "embed")],
            )


def _check_headers(headers: Mapping[str, Any]) -> None:
    size = len(json.dumps(headers, default=str))
    if size > MAX_HEADERS_BYTES:
        raise Malformed(
            f"message headers of {size} bytes are over {MAX_HEADERS_BYTES}",
            [_error(["headers"], f"larger than {MAX_HEADERS_BYTES} bytes", "too_large")],
        )
    _check_header_types(headers)
    ignore_result = headers.get("ignore_result")
    if ignore_result is not None and not isinstance(ignore_result, bool):
        raise _bad_header("ignore_result", "must be true or false")
    if not _is_time_limits(headers.get("timelimit")):
        raise _bad_header("timelimit", "must be [hard, soft] seconds (numbers >= 0 or null)")


def _check_header_types(headers: Mapping[str, Any]) -> None:
    """The headers Celery reads while it takes a message in are of the types it assumes: one
    of another type raises deep in the dispatch (after the pool slot is taken)."""
    for name in _OPTIONAL_STRING_HEADERS:
        if headers.get(name) is not None and not isinstance(headers[name], str):
            raise _bad_header(name, "must be a string")
    for name in _OPTIONAL_STRING_LIST_HEADERS:
        value = headers.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(item, str) for item in value)
        ):
            raise _bad_header(name, "must be a list of strings")
    for name in _OPTIONAL_WHOLE_NUMBER_HEADERS:
        value = headers.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise _bad_header(name, "must be a whole number")
        if isinstance(value, int) and value < 0:
            raise _bad_header(name, "must be a whole number >= 0")
    for name in _OPTIONAL_OBJECT_HEADERS:
        if headers.get(name) is not None and not isinstance(headers[name], dict):
            raise _bad_header(name, "must be an object")


def _bad_header(name: str, msg: str) -> Malformed:
    return Malformed(f"header {name!r} {msg}", [_error(["headers", name], msg, "header")])


def _is_time_limits(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, list | tuple) or len(value) != 2:
        return False
    return all(
        limit is None
        or (
            isinstance(limit, int | float)
            and not isinstance(limit, bool)
            and math.isfinite(limit)
            and limit >= 0
        )
        for limit in value
    )
