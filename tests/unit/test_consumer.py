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
