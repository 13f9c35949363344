"""The overall deadline of an httpx request: each socket operation is clamped to the time left,
one that starts late fails at once, and httpx's transport really opens its connections through
the clamping backend (a loopback server trickling its answer is cut off at the deadline)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx
import pytest

from bot.outbox.http_deadline import DeadlineBackend, DeadlineTransport
from tests.support.receiver import Receiver


class RecordingStream(httpcore.NetworkStream):
    def __init__(self, timeouts: list[float | None]) -> None:
        self.timeouts = timeouts

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.timeouts.append(timeout)
        return b""

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)

    def close(self) -> None:
        pass


class RecordingBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, *_: Any) -> Any:
        self.timeouts.append(timeout)
        return RecordingStream(self.timeouts)


def test_each_operation_gets_the_time_left_and_none_starts_after_the_deadline() -> None:
    inner = RecordingBackend()
    backend = DeadlineBackend(inner)

    stream = backend.connect_tcp("h", 1, timeout=5.0)  # no deadline: untouched
    with backend.until(time.monotonic() + 1.0):
        stream.read(10, timeout=5.0)
        stream.write(b"x" * 40_000, timeout=None)  # three pieces, each clamped
    with backend.until(time.monotonic() - 0.001), pytest.raises(httpcore.ReadTimeout):
        stream.read(10, timeout=5.0)
    stream.read(10, timeout=5.0)  # after until(): untouched again

    first, *clamped, last = inner.timeouts
    assert first == 5.0 and last == 5.0
    assert len(clamped) == 4 and all(t is not None and 0 < t <= 1.0 for t in clamped)


@pytest.fixture
def trickler() -> Iterator[Receiver]:
    rx = Receiver().up()
    rx.trickle_s = 0.2  # the status line alone takes ~3 s
    yield rx
    rx.down()


def test_httpx_connections_go_through_the_deadline(trickler: Receiver) -> None:
    transport = DeadlineTransport()
    with httpx.Client(transport=transport, timeout=5.0) as client:
        started = time.monotonic()
        with transport.backend.until(started + 0.6), pytest.raises(httpx.ReadTimeout):
            client.post(trickler.url, content=b'{"job_id": "t"}')
        elapsed = time.monotonic() - started

    assert 0.5 <= elapsed < 1.5
