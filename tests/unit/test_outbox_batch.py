"""Batch delivery (BOT_REPORT_BATCH): what a sink's 2xx answer to a batch says was taken
(bot/outbox/batch.py), and the HTTP sink's batch POST on httpx's MockTransport: one JSON array,
no Idempotency-Key header, the answer read, a non-2xx about the batch as a whole."""

from __future__ import annotations

import json

import httpx
import pytest

from bot.outbox.batch import REJECTED_WITHOUT_REASON, encode_batch, read_answer
from bot.outbox.delivery import BatchAnswer, DeliveryFailed, DeliveryRejected
from bot.outbox.sinks import MAX_RESPONSE_BYTES, HttpSink

TOKEN = "s3cret-token"
ITEMS = [(f"j{i}", json.dumps({"job_id": f"j{i}", "result": i})) for i in range(4)]


@pytest.mark.parametrize(
    "body", [b"", b"  \r\n", b"ok", b"OK, thanks", b'{"status": "ok"}', b"[1, 2]", b'"ok"']
)
def test_a_2xx_without_an_accepted_or_rejected_list_accepts_the_whole_batch(body: bytes) -> None:
    answer = read_answer(body)
    assert answer == BatchAnswer()
    assert {answer.verdict(j) for j, _ in ITEMS} == {"accepted"}


def test_an_accepted_list_accepts_only_those_and_the_others_are_retried() -> None:
    answer = read_answer(b'{"accepted": ["j0", "j2", "elsewhere"]}')
    assert [answer.verdict(j) for j, _ in ITEMS] == ["accepted", "retry", "accepted", "retry"]


def test_rejected_reports_are_refused_with_the_sinks_reason_quoted_short_and_escaped() -> None:
    body = json.dumps(
        {"accepted": ["j0"], "rejected": {"j1": "unknown op\x1b[2J", "j3": "x" * 5000}}
    )
    answer = read_answer(body.encode())
    assert [answer.verdict(j) for j, _ in ITEMS] == ["accepted", "rejected", "retry", "rejected"]
    assert answer.rejected["j1"].startswith(f"{REJECTED_WITHOUT_REASON}: unknown op")
    assert "\x1b" not in answer.rejected["j1"]
    assert len(answer.rejected["j3"]) < 300


def test_a_rejected_list_without_accepted_accepts_the_others() -> None:
    answer = read_answer(b'{"rejected": ["j1"]}')
    assert [answer.verdict(j) for j, _ in ITEMS] == ["accepted", "rejected", "accepted", "accepted"]
    assert answer.rejected == {"j1": REJECTED_WITHOUT_REASON}


@pytest.mark.parametrize(
    "body",
    [
        b'{"accepted": ["j0", "j1"',  # cut off
        b"[1, 2",
        b'{"accepted": "j0"}',
        b'{"accepted": [1, 2]}',
        b'{"accepted": ["j0"], "rejected": "j1"}',
        b'{"rejected": {"j1": "a", "2": 3}, "accepted": null, "x": 1}x',
    ],
)
def test_an_answer_that_cannot_be_read_fails_the_whole_batch(body: bytes) -> None:
    with pytest.raises(DeliveryFailed):
        read_answer(body)


def test_the_batch_body_is_the_json_array_of_the_reports() -> None:
    body = encode_batch([report for _, report in ITEMS])
    assert json.loads(body) == [json.loads(report) for _, report in ITEMS]


def batch_sink(handler: object) -> HttpSink:
    return HttpSink(
        "http://example.test/reports",
        TOKEN,
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
    )


def test_the_http_sink_posts_one_array_with_no_idempotency_key_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"accepted": ["j1", "j3"]})

    answer = batch_sink(handler).deliver_batch(ITEMS)

    (request,) = seen
    assert json.loads(request.content) == [json.loads(r) for _, r in ITEMS]
    assert "Idempotency-Key" not in request.headers
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept-Encoding"] == "identity"
    assert answer.accepted == frozenset({"j1", "j3"})


@pytest.mark.parametrize(("status", "error"), [(503, DeliveryFailed), (400, DeliveryRejected)])
def test_a_non_2xx_is_about_the_whole_batch(status: int, error: type[Exception]) -> None:
    sink = batch_sink(lambda request: httpx.Response(status, text="nope"))
    with pytest.raises(error):
        sink.deliver_batch(ITEMS)


def test_a_batch_holding_a_job_id_no_header_could_carry_is_refused_before_sending() -> None:
    seen: list[httpx.Request] = []
    sink = batch_sink(lambda request: seen.append(request) or httpx.Response(200))
    with pytest.raises(DeliveryRejected, match="header"):
        sink.deliver_batch([*ITEMS, ("bad\r\nX: 1", "{}")])
    assert seen == []


def test_a_long_accepted_list_is_read_past_the_single_report_answer_cap() -> None:
    items = [(f"{'k' * 1000}{i:04d}", json.dumps({"job_id": i})) for i in range(100)]
    keys = [job_id for job_id, _ in items]
    body = json.dumps({"accepted": keys}).encode()
    assert len(body) > MAX_RESPONSE_BYTES
    answer = batch_sink(lambda request: httpx.Response(200, content=body)).deliver_batch(items)
    assert answer.accepted == frozenset(keys)
