"""The HTTP sink against a real receiver on loopback answering badly: an answer trickled one
byte at a time ends at the overall deadline, a 200 MB answer is not read (the worker's memory
does not grow), a 4xx with a huge body rejects with a short reason, and a job id that no header
can carry is rejected with nothing sent."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from bot.outbox.delivery import DeliveryFailed, DeliveryRejected
from bot.outbox.sinks import MAX_RESPONSE_BYTES, HttpSink
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration

TOKEN = "sink-test-token"
REPORT = '{"job_id": "j1"}'


def sink_for(receiver: Receiver, deadline_s: float = 1.5) -> HttpSink:
    return HttpSink(
        receiver.url, TOKEN, connect_timeout_s=1.0, read_timeout_s=5.0, deadline_s=deadline_s
    )


def timed_delivery(sink: HttpSink) -> tuple[float, Exception | None]:
    started = time.monotonic()
    try:
        sink.deliver("j1", REPORT)
        error = None
    except (DeliveryFailed, DeliveryRejected) as exc:
        error = exc
    return time.monotonic() - started, error


def test_a_trickled_answer_ends_at_the_deadline_as_a_failed_attempt(receiver: Receiver) -> None:
    # Given a receiver sending its status line and headers one byte every 0.3 s (~20 s in all),
    # each byte well within the 5 s read timeout
    receiver.trickle_s = 0.3
    sink = sink_for(receiver, deadline_s=1.5)

    # When a report is delivered
    elapsed, error = timed_delivery(sink)
    sink.close()

    # Then the POST ends at the 1.5 s deadline, a transient failure (retried)
    assert isinstance(error, DeliveryFailed) and "deadline" in str(error)
    assert 1.4 <= elapsed < 2.5


def test_a_200_whose_body_trickles_is_delivered_within_the_deadline(receiver: Receiver) -> None:
    # Given a receiver that answers 200 at once, then trickles a 100-byte body
    receiver.trickle_s, receiver.trickle_body_only = 0.3, True
    receiver.body = b"k" * 100
    sink = sink_for(receiver, deadline_s=1.5)

    elapsed, error = timed_delivery(sink)
    sink.close()

    # Then the status is the answer: delivered, and the POST still ends by the deadline
    assert error is None
    assert elapsed < 2.5


def test_a_200mb_answer_is_not_read_and_memory_does_not_grow(receiver: Receiver) -> None:
    # Given a receiver answering 200 with a 200 MB body
    receiver.stream_bytes = 200 * 1024 * 1024
    sink = sink_for(receiver, deadline_s=10.0)

    # When a report is delivered, tracing this process's allocations
    tracemalloc.start()
    elapsed, error = timed_delivery(sink)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sink.close()

    # Then it is delivered, the sink kept no more than the cap, and the receiver could push
    # only what the loopback socket buffers hold before the sink hung up
    assert error is None
    assert peak < 4 * MAX_RESPONSE_BYTES + 1024 * 1024, f"peak {peak} bytes"
    time.sleep(0.2)  # let the receiver notice the hang-up
    assert receiver.sent_bytes < 16 * 1024 * 1024, receiver.sent_bytes
    assert elapsed < 5


def test_a_4xx_with_a_huge_hostile_body_rejects_with_a_short_escaped_reason(
    receiver: Receiver,
) -> None:
    receiver.status = 400
    receiver.body = b"unknown op\r\n\x1b[2J" + b"z" * (20 * 1024 * 1024)
    sink = sink_for(receiver, deadline_s=10.0)

    elapsed, error = timed_delivery(sink)
    sink.close()

    assert isinstance(error, DeliveryRejected)
    assert str(error).startswith("HTTP 400: unknown op\\x0d\\x0a\\x1b[2Jzzz")
    assert len(str(error)) < 300 and elapsed < 5


@pytest.mark.parametrize("job_id", ["a\r\nX-Injected: 1", "caf\u00e9", "k" * 100_000])
def test_a_job_id_no_header_can_carry_is_rejected_and_nothing_is_sent(
    receiver: Receiver, job_id: str
) -> None:
    sink = sink_for(receiver)

    with pytest.raises(DeliveryRejected):
        sink.deliver(job_id, '{"job_id": "x"}')
    sink.close()

    assert receiver.requests == []
