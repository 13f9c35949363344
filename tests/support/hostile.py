"""Hostile messages for the flood and the hostile-input tests, and the ways to send them.

A `Hostile` is one message as it goes on the wire (task name, headers, body bytes, content
type) plus what the fleet must make of it. `hostile_messages()` is a hypothesis strategy over
every kind of bad message found so far; the next bad shape found is one more entry in `KINDS`.

Every `ops.*` message must end with exactly one record and one report (`rejected` for a
malformed one); a message for any other task, or an item that is no message at all, must be
dropped without stopping a worker. Ids are unique per message, bad ids included (each carries
a nonce), so a test can count one report per message.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu import Connection

#: What the fleet must make of a message.
REJECTED = "rejected"  # an ops.* message that must not run: one record, one `rejected` report
REPORTED = "reported"  # an ops.* message that may run or be rejected: one record, one report
DROPPED = "dropped"  # not an ops.* message: no report, no stopped worker
SUCCEEDED = "succeeded"  # a good job: one record, one `succeeded` report


@dataclass
class Hostile:
    kind: str
    task: str
    headers: dict[str, Any]
    body: bytes
    expect: str
    content_type: str = "application/json"
    raw_item: bytes | None = None  # pushed straight onto the queue list, not through kombu
    nonce: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def job_id(self) -> Any:
        return self.headers.get("id")


def _body(args: Any, kwargs: Any, embed: Any = None) -> bytes:
    embed = (
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        if embed is None
        else embed
    )
    return json.dumps([args, kwargs, embed]).encode()


def _headers(task: str, **extra: Any) -> dict[str, Any]:
    headers: dict[str, Any] = {"lang": "py", "task": task, "id": str(uuid.uuid4()), "retries": 0}
    headers.update(extra)
    return headers


def _good_kwargs() -> dict[str, Any]:
    return {"a": 1, "b": 2}


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


# -- the kinds ---------------------------------------------------------------------------------


@st.composite
def wrong_shape(draw: st.DrawFn) -> Hostile:
    """A body that is JSON but not [args, kwargs, embed]."""
    value = draw(
        st.one_of(
            JSON_SCALARS,
            st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
            st.lists(JSON_VALUES, max_size=2),
            st.lists(JSON_VALUES, min_size=4, max_size=6),
            st.tuples(
                JSON_VALUES.filter(lambda v: not isinstance(v, list)), st.just({}), st.just({})
            ),
            st.tuples(
                st.just([]), JSON_VALUES.filter(lambda v: not isinstance(v, dict)), st.just({})
            ),
            st.tuples(st.just([]), st.just({}), JSON_SCALARS.filter(lambda v: v is not None)),
        )
    )
    return Hostile(
        "wrong_shape", "ops.sum", _headers("ops.sum"), json.dumps(value).encode(), REJECTED
    )


@st.composite
def too_deep(draw: st.DrawFn) -> Hostile:
    depth = draw(st.integers(min_value=65, max_value=3000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}")]))
    nested = opener * depth + "1" + closer * depth
    where = draw(st.sampled_from(["body", "kwargs", "args"]))
    text = {
        "body": nested,
        "kwargs": f'[[], {{"a": {nested}}}, {{}}]',
        "args": f"[[{nested}], {{}}, {{}}]",
    }[where]
    return Hostile("too_deep", "ops.sum", _headers("ops.sum"), text.encode(), REJECTED)


@st.composite
def not_json(draw: st.DrawFn) -> Hostile:
    body = draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=64)))
    return Hostile("not_json", "ops.sum", _headers("ops.sum"), body, REJECTED)


@st.composite
def other_content_type(draw: st.DrawFn) -> Hostile:
    content_type = draw(
        st.sampled_from(
            [
                "application/x-python-serialize",
                "application/x-yaml",
                "text/plain",
                "application/octet-stream",
            ]
        )
    )
    body = draw(st.one_of(st.binary(max_size=64), st.just(_body([], _good_kwargs()))))
    return Hostile(
        "content_type", "ops.sum", _headers("ops.sum"), body, REJECTED, content_type=content_type
    )


@st.composite
def oversized(draw: st.DrawFn, payload_limit: int) -> Hostile:
    size = draw(st.integers(min_value=payload_limit + 5000, max_value=payload_limit * 8))
    kwargs = {"a": 1, "b": 2, "pad": "x" * size}
    return Hostile("oversized", "ops.sum", _headers("ops.sum"), _body([], kwargs), REJECTED)


#: Headers Celery reads, with values of a type it cannot live with.
BAD_HEADER_VALUES: dict[str, Any] = {
    "timelimit": st.one_of(
        JSON_SCALARS.filter(lambda v: v is not None),
        st.lists(JSON_SCALARS, min_size=3, max_size=3),
        st.just([-1, None]),
        st.just(["x", 1]),
    ),
    "eta": st.one_of(
        st.text(min_size=1, max_size=10), st.integers(), st.lists(JSON_SCALARS, max_size=2)
    ),
    "expires": st.one_of(st.text(min_size=1, max_size=10), st.lists(JSON_SCALARS, max_size=2)),
    "retries": st.one_of(
        st.text(max_size=5), st.integers(max_value=-1), st.floats(allow_nan=False), st.just([])
    ),
    "shadow": st.one_of(st.integers(), st.lists(JSON_SCALARS, max_size=2), st.booleans()),
    "root_id": st.one_of(st.integers(), st.lists(JSON_SCALARS, min_size=1, max_size=2)),
    "parent_id": st.one_of(
        st.integers(), st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2)
    ),
    "group": st.one_of(st.integers(), st.lists(JSON_SCALARS, min_size=1, max_size=2)),
    "stamps": st.one_of(st.integers(), st.text(max_size=5), st.lists(JSON_SCALARS, max_size=2)),
    "stamped_headers": st.one_of(
        st.integers(min_value=1),
        st.text(min_size=1, max_size=5),
        st.lists(st.integers(), min_size=1, max_size=3),
    ),
    "groups": st.one_of(st.integers(), st.text(min_size=1, max_size=5)),
    "ignore_result": st.one_of(st.integers(), st.text(max_size=5)),
    "replaced_task_nesting": st.one_of(st.text(max_size=5), st.integers(max_value=-1)),
    "group_index": st.one_of(st.text(max_size=5), st.lists(JSON_SCALARS, max_size=2)),
    "argsrepr": st.one_of(st.integers(), st.lists(JSON_SCALARS, max_size=2)),
    "kwargsrepr": st.one_of(
        st.integers(), st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2)
    ),
    "origin": st.one_of(
        st.integers(), st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2)
    ),
}


@st.composite
def bad_header(draw: st.DrawFn) -> Hostile:
    name = draw(st.sampled_from(sorted(BAD_HEADER_VALUES)))
    value = draw(BAD_HEADER_VALUES[name])
    headers = _headers("ops.sum", **{name: value})
    # some strings are valid ETAs/expiry times: such a message may run, but must be reported
    expect = REPORTED if name in ("eta", "expires") else REJECTED
    return Hostile(f"header:{name}", "ops.sum", headers, _body([], _good_kwargs()), expect)


@st.composite
def odd_enqueued_at(draw: st.DrawFn) -> Hostile:
    """A forged `bot_enqueued_at` never stops a job: it is ignored or clamped."""
    value = draw(
        st.one_of(JSON_VALUES, st.just(1e20), st.just(-1), st.just("soon"), st.just(float("inf")))
    )
    headers = _headers("ops.sum", bot_enqueued_at=value)
    return Hostile("enqueued_at", "ops.sum", headers, _body([], _good_kwargs()), REPORTED)


@st.composite
def bad_job_id(draw: st.DrawFn) -> Hostile:
    # the salt makes the space of examples endless, so hypothesis draws as many as asked
    nonce = f"{draw(st.integers(0, 2**32))}-{uuid.uuid4().hex}"
    raw = draw(
        st.sampled_from(
            [
                f"bad\r\nid-{nonce}",
                f"caf\u00e9-{nonce}",
                f"{'x' * 100_000}-{nonce}",
                f"spaces in id {nonce}",
                f"{nonce}\x00",
                "",
                int(uuid.uuid4().hex[:12], 16),
                [nonce],
                None,
            ]
        )
    )
    headers = _headers("ops.sum")
    if raw is None:
        del headers["id"]
    else:
        headers["id"] = raw
    kwargs = {**_good_kwargs(), "nonce": nonce}  # a missing id's stand-in comes from the body
    return Hostile("job_id", "ops.sum", headers, _body([], kwargs), REJECTED)


@st.composite
def bad_arguments(draw: st.DrawFn) -> Hostile:
    """Well-formed messages whose arguments cannot bind to the op's payload."""
    args, kwargs = draw(
        st.sampled_from(
            [
                ([], {"task": 1, "a": 1, "b": 2}),
                ([], {"self": 1, "a": 1, "b": 2}),
                ([1, 2, 3], {}),
                ([1], {"a": 1, "b": 2}),
                ([], {"a": "x", "b": 2}),
                ([], {}),
                (["a", "b"], {}),
            ]
        )
        | st.tuples(
            st.lists(JSON_SCALARS, max_size=3),
            st.dictionaries(st.text(max_size=6), JSON_SCALARS, max_size=3),
        )
    )
    return Hostile("arguments", "ops.sum", _headers("ops.sum"), _body(args, kwargs), REPORTED)


@st.composite
def bad_embed(draw: st.DrawFn) -> Hostile:
    name = draw(st.sampled_from(["callbacks", "errbacks", "chain", "chord"]))
    value = draw(st.one_of(st.integers(), st.text(min_size=1, max_size=5)))
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None, name: value}
    return Hostile(
        f"embed:{name}", "ops.sum", _headers("ops.sum"), _body([], _good_kwargs(), embed), REJECTED
    )


@st.composite
def unknown_op(draw: st.DrawFn) -> Hostile:
    name = draw(st.one_of(st.text(max_size=40), st.just("x" * 5000)))
    task = "ops.nope-" + name  # no registered op is named so
    return Hostile("unknown_op", task, _headers(task), _body([], {"a": 1}), REJECTED)


@st.composite
def not_ops(draw: st.DrawFn) -> Hostile:
    """Messages for other tasks, and queue items that are no kombu message at all."""
    task = draw(st.sampled_from(["celery.backend_cleanup", "celery.chord_unlock", "no.such.task"]))
    draw(st.integers(0, 2**32))  # a salt: an endless space, so hypothesis draws as many as asked
    body = draw(st.sampled_from([b"null", b"[]", b"42", b"", _body([], {})]))
    raw_item = draw(
        st.one_of(st.none(), st.sampled_from([b"not json", b'{"body": 5}', b"[1, 2]", b"[" * 5000]))
    )
    return Hostile("not_ops", task, _headers(task), body, DROPPED, raw_item=raw_item)


@st.composite
def good_job(draw: st.DrawFn) -> Hostile:
    a, b = draw(st.integers(-1000, 1000)), draw(st.integers(-1000, 1000))
    positional = draw(st.booleans())
    body = _body([a, b], {}) if positional else _body([], {"a": a, "b": b})
    return Hostile("good", "ops.sum", _headers("ops.sum"), body, SUCCEEDED)


def kinds(payload_limit: int) -> list[st.SearchStrategy[Hostile]]:
    """Every kind of bad message found so far (add the next one here), and good ones."""
    return [
        wrong_shape(),
        too_deep(),
        not_json(),
        other_content_type(),
        oversized(payload_limit),
        bad_header(),
        odd_enqueued_at(),
        bad_job_id(),
        bad_arguments(),
        bad_embed(),
        unknown_op(),
        not_ops(),
        good_job(),
    ]


def generate(count: int, payload_limit: int) -> list[Hostile]:
    """At least `count` messages drawn by hypothesis, the same share of each kind, interleaved
    (derandomized: the same shapes every run; ids are fresh)."""
    per_kind = [
        _draw(kind, max(1, count // len(kinds(payload_limit)))) for kind in kinds(payload_limit)
    ]
    longest = max(len(drawn) for drawn in per_kind)
    return [drawn[i] for i in range(longest) for drawn in per_kind if i < len(drawn)]


def _draw(strategy: st.SearchStrategy[Hostile], count: int) -> list[Hostile]:
    drawn: list[Hostile] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(message: Hostile) -> None:
        drawn.append(message)

    collect()
    return drawn


# -- sending -----------------------------------------------------------------------------------


class RawSender:
    """Publishes messages as they are, through kombu (or onto the queue list directly)."""

    def __init__(self, url: str, queue: str = "celery") -> None:
        self.queue = queue
        self.connection = Connection(url)
        self.producer = self.connection.Producer()
        self.client = redis.Redis.from_url(url)

    def send(self, message: Hostile) -> None:
        if message.raw_item is not None:
            self.client.lpush(self.queue, message.raw_item)
            return
        self.producer.publish(
            message.body,
            routing_key=self.queue,
            exchange="",
            headers=message.headers,
            content_type=message.content_type,
            content_encoding="utf-8" if "json" in message.content_type else "binary",
            serializer=None,
        )

    def close(self) -> None:
        self.connection.release()
        self.client.close()
