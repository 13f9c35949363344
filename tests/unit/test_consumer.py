"""The guarded consumer: a message whose handling raises is dropped (acked once, logged),
never stopping the worker; a broker connection error still propagates so Celery reconnects."""

from __future__ import annotations

from typing import Any

import pytest
from celery.worker.consumer import Consumer

from bot.broker.consumer import GuardedConsumer


class Message:
    def __init__(self, headers: Any = None, acknowledged: bool = False) -> None:
        self.headers = headers if headers is not None else {"id": "j\r\n1", "task": "x"}
        self.acknowledged = acknowledged
        self.acks = 0

    def ack_log_error(self, logger: Any, errors: Any) -> None:
        self.acks += 1


def guarded_handler(monkeypatch: pytest.MonkeyPatch, raises: BaseException) -> Any:
    def celerys_handler(self: Any, *_: Any, **__: Any) -> Any:
        def on_task_received(message: Any) -> None:
            raise raises

        return on_task_received

    monkeypatch.setattr(Consumer, "create_task_handler", celerys_handler)
    consumer = object.__new__(GuardedConsumer)  # no broker: only the handler is under test
    consumer.connection_errors = (ConnectionError,)
    return consumer.create_task_handler()


@pytest.mark.parametrize(
    "error", [TypeError("argument of type 'NoneType'"), KeyError("id"), RecursionError()]
)
def test_a_message_that_raises_is_acked_once_and_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    handle = guarded_handler(monkeypatch, error)
    message = Message()

    assert handle(message) is None

    assert message.acks == 1
    (record,) = [r for r in caplog.records if r.name == "bot.broker.consumer"]
    assert "message dropped" in record.getMessage()
    assert "\r" not in record.getMessage()  # the id is escaped


def test_a_message_acked_already_is_not_acked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    handle = guarded_handler(monkeypatch, ValueError("late"))
    message = Message(acknowledged=True)

    handle(message)

    assert message.acks == 0


def test_a_connection_error_propagates_for_celery_to_reconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handle = guarded_handler(monkeypatch, ConnectionError("broker gone"))
    message = Message(headers=None)

    with pytest.raises(ConnectionError):
        handle(message)
    assert message.acks == 0


class Hub:
    """The event loop's scheduling calls, recorded; `run()` does what is due."""

    def __init__(self) -> None:
        self.soon: list[Any] = []
        self.later: list[tuple[float, Any]] = []

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Any, *args: Any) -> None:
        self.later.append((delay, callback))

    def run_soon(self) -> None:
        pending, self.soon = self.soon, []
        for callback in pending:
            callback()

    def fire_timers(self) -> None:
        pending, self.later = self.later, []
        for _, callback in pending:
            callback()


def batching_consumer() -> tuple[GuardedConsumer, Hub, list[str]]:
    consumer = object.__new__(GuardedConsumer)  # no broker: only the event batching is tested
    hub, flushed = Hub(), []
    consumer.hub = hub
    consumer._flush_events = lambda: flushed.append("flush")  # type: ignore[method-assign]
    return consumer, hub, flushed


def test_task_events_are_flushed_once_per_batch_window() -> None:
    """Celery asks for a flush after each buffered event; the consumer flushes once per window."""
    from bot.broker.consumer import EVENT_BATCH_WINDOW_S

    consumer, hub, flushed = batching_consumer()

    for _ in range(3):  # received, started, succeeded
        consumer.on_send_event_buffered()
    hub.run_soon()

    assert [delay for delay, _ in hub.later] == [EVENT_BATCH_WINDOW_S]
    assert flushed == []
    hub.fire_timers()
    assert flushed == ["flush"]
    # the next event opens the next window
    consumer.on_send_event_buffered()
    hub.run_soon()
    assert len(hub.later) == 1


def test_waiting_events_are_published_at_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, hub, flushed = batching_consumer()
    monkeypatch.setattr(Consumer, "shutdown", lambda self: flushed.append("celery's shutdown"))

    consumer.on_send_event_buffered()
    hub.run_soon()
    consumer.shutdown()

    assert flushed == ["flush", "celery's shutdown"]
