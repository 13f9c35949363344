"""The envelope check: what an ops.* message must look like before Celery may unpack it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.errors import PayloadRejected
from bot.jobs.envelope import (
    ENVELOPE_SLACK_BYTES,
    MAX_HEADERS_BYTES,
    MAX_JSON_DEPTH,
    Malformed,
    check_body,
    check_envelope,
    enqueued_at_ms,
    job_id_problem,
    json_depth_over,
    payload_digest,
    printable,
    stand_in_job_id,
)

GOOD_HEADERS = {"id": "job-1", "task": "ops.sum", "retries": 0, "timelimit": [None, None]}
GOOD_BODY = json.dumps([[], {"a": 1, "b": 2}, {"callbacks": None}]).encode()
NOW_MS = 1_800_000_000_000


def check(headers: dict[str, Any] | None = None, body: bytes = GOOD_BODY, **kw: Any) -> None:
    check_envelope(
        {**GOOD_HEADERS, **(headers or {})},
        body,
        kw.get("content_type", "application/json"),
        kw.get("limit", 1024),
    )


def test_a_well_formed_message_passes() -> None:
    check()
    assert check_body(json.loads(GOOD_BODY)) == ([], {"a": 1, "b": 2})


@pytest.mark.parametrize(
    "job_id",
    ["job-1", "order:42@shop", "a.b_c-d", "x" * 200, "7d7e1a1c-5f0e-4a1e-9d7c-0a0b0c0d0e0f"],
)
def test_usable_job_ids(job_id: str) -> None:
    assert job_id_problem(job_id) is None


@pytest.mark.parametrize(
    "job_id", ["", "a\r\nb", "caf\u00e9", "x" * 201, "has space", "nul\x00", 42, None, ["a"]]
)
def test_unusable_job_ids_are_named(job_id: Any) -> None:
    problem = job_id_problem(job_id)
    assert problem is not None
    assert "\r" not in problem and "\n" not in problem and len(problem) < 300


def test_a_stand_in_id_is_safe_and_the_same_for_the_same_message() -> None:
    first = stand_in_job_id("a\r\nb", b"body")
    assert first == stand_in_job_id("a\r\nb", b"other body")  # named by the raw id
    assert first != stand_in_job_id("a\r\nc", b"body")
    assert job_id_problem(first) is None
    # without an id, the body names it
    assert stand_in_job_id(None, b"one") != stand_in_job_id(None, b"two")


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"timelimit": "soon"}, "timelimit"),
        ({"timelimit": [1, 2, 3]}, "timelimit"),
        ({"timelimit": [-1, None]}, "timelimit"),
        ({"retries": "x"}, "retries"),
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"shadow": 5}, "shadow"),
        ({"root_id": [1]}, "root_id"),
        ({"stamps": 5}, "stamps"),
        ({"stamped_headers": [1]}, "stamped_headers"),
        ({"group_index": "x"}, "group_index"),
        ({"ignore_result": "yes"}, "ignore_result"),
    ],
)
def test_a_header_of_the_wrong_type_is_malformed_with_its_field(
    headers: dict[str, Any], field: str
) -> None:
    with pytest.raises(Malformed) as raised:
        check(headers)
    assert raised.value.errors[0]["loc"] == ["headers", field]
    assert isinstance(raised.value, PayloadRejected)  # never retried


def test_oversized_headers_are_malformed() -> None:
    with pytest.raises(Malformed, match="headers"):
        check({"argsrepr": "x" * (MAX_HEADERS_BYTES + 1)})


def test_a_body_over_the_limit_is_malformed_before_it_is_decoded() -> None:
    limit = 1000
    check(body=b"[" + b" " * (limit + ENVELOPE_SLACK_BYTES - 2) + b"]", limit=limit)
    with pytest.raises(Malformed) as raised:
        check(body=b"x" * (limit + ENVELOPE_SLACK_BYTES + 1), limit=limit)
    assert raised.value.errors[0]["type"] == "too_large"


@pytest.mark.parametrize("content_type", ["application/x-python-serialize", "text/plain", None])
def test_anything_but_json_is_malformed(content_type: str | None) -> None:
    with pytest.raises(Malformed, match="content type"):
        check(content_type=content_type)


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_depth_over(deep.encode())
    assert not json_depth_over(at_limit.encode())
    in_string = json.dumps(["[" * 1000 + '\\"' + "{" * 1000])
    assert not json_depth_over(in_string.encode())
    objects = '{"a":' * 70 + "1" + "}" * 70
    assert json_depth_over(objects.encode())
    with pytest.raises(Malformed, match="deeper"):
        check(body=deep.encode())


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (None, ["body"]),
        (42, ["body"]),
        ({"a": 1}, ["body"]),
        ([[], {}], ["body"]),
        ([[], {}, {}, {}], ["body"]),
        ([{}, {}, {}], ["args"]),
        ([[], [], {}], ["kwargs"]),
        ([[], {}, 5], ["body"]),
        ([[], {"self": 1}, {}], ["kwargs", "self"]),
        ([[], {}, {"callbacks": 5}], ["embed", "callbacks"]),
        ([[], {}, {"chord": [1]}], ["embed", "chord"]),
        (b"", ["body"]),
    ],
)
def test_a_body_not_of_protocol_2_shape_is_malformed(body: Any, loc: list[str]) -> None:
    with pytest.raises(Malformed) as raised:
        check_body(body)
    assert raised.value.errors[0]["loc"] == loc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (NOW_MS - 5000, NOW_MS - 5000),
        (str(NOW_MS - 5000), NOW_MS - 5000),
        (float(NOW_MS - 5000), NOW_MS - 5000),
        (NOW_MS + 1000, NOW_MS),  # a sender's clock a little ahead: clamped to ours
        (NOW_MS + 10 * 86_400_000, None),  # far in the future: ignored
        (1e20, None),
        (-1, None),
        (0, None),
        ("yesterday", None),
        (float("inf"), None),
        (float("nan"), None),
        (True, None),
        ([1], None),
        (None, None),
    ],
)
def test_enqueued_at_is_sane_or_ignored(value: Any, expected: int | None) -> None:
    assert enqueued_at_ms(value, now_ms=NOW_MS) == expected


def test_the_payload_digest_is_the_same_for_every_faithful_copy() -> None:
    digest = payload_digest([], {"b": 2, "a": 1.5, "s": "caf\u00e9"})
    copy = json.loads(json.dumps([[], {"a": 1.5, "s": "caf\u00e9", "b": 2}]))
    assert payload_digest(*copy) == digest
    assert payload_digest([], {"a": 1.5, "b": 3, "s": "caf\u00e9"}) != digest
    assert payload_digest([1.5], {"b": 2}) != payload_digest([], {"a": 1.5, "b": 2})


def test_printable_escapes_control_and_non_ascii_characters_and_cuts() -> None:
    assert printable("a\r\nb\x00") == "a\\x0d\\x0ab\\x00"
    text = printable("caf\u00e9\x1b[31m")
    assert text.isprintable() and text.isascii() and "\x1b" not in text
    assert len(printable("x" * 1000, 50)) == 50


class Jsonable:
    """A value kombu's JSON encodes through its __json__ method."""

    def __json__(self) -> str:
        return "as-json"

    def __str__(self) -> str:
        return "as-str"


def test_the_digest_bound_at_submit_is_the_one_the_worker_computes() -> None:
    # The client digests the payload as it will be decoded off the wire (kombu's JSON, which
    # Celery uses): the worker digests what it decoded. Both must agree for every value kombu
    # can send, or a caller's own id would look reused and its job never run.
    import datetime
    import decimal
    import uuid

    from kombu.utils import json as kombu_json

    from bot.client import as_sent

    payload = {
        "pair": (2, 3),
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "ref": uuid.UUID(int=7),
        "price": decimal.Decimal("1.50"),
        "blob": b"\x00\x01",
        "custom": Jsonable(),
    }
    args, kwargs, _ = kombu_json.loads(kombu_json.dumps([[], payload, {}]))
    assert payload_digest([], as_sent(payload)) == payload_digest(args, kwargs)
    assert payload_digest([], payload) != payload_digest(args, kwargs)  # why as_sent exists
