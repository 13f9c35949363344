"""The client against a real Redis: idempotent ids, validation before anything is enqueued."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bot.application import create_app
from bot.client import Client
from bot.errors import PayloadRejected, UnknownOp

pytestmark = pytest.mark.integration


@pytest.fixture
def client(make_settings: Callable[..., Any]) -> Client:
    return Client(create_app(make_settings(max_payload_bytes=200)))


def test_a_callers_id_is_enqueued_once(client: Client, redis_server: Any) -> None:
    first = client.submit("sum", {"a": 1, "b": 2}, job_id="order-1")
    again = client.submit("sum", {"a": 1, "b": 2}, job_id="order-1")

    assert (first.job_id, first.enqueued) == ("order-1", True)
    assert (again.job_id, again.enqueued) == ("order-1", False)
    assert redis_server.client().llen("celery") == 1
    assert client.status("order-1").state == "queued"


@pytest.mark.parametrize(
    ("op", "payload", "error"),
    [
        ("sum", {"a": "x", "b": 1}, PayloadRejected),
        ("nope", {}, UnknownOp),
        ("sum", {"a": 1, "b": 2, "pad": "x" * 500}, PayloadRejected),
    ],
)
def test_nothing_is_enqueued_for_a_refused_payload(
    client: Client, redis_server: Any, op: str, payload: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        client.submit(op, payload, job_id="refused-1")

    assert redis_server.client().dbsize() == 0


@pytest.mark.parametrize("error", [ConnectionError("broker down"), SystemExit(0)])
def test_a_failed_publish_frees_the_callers_id(
    client: Client, redis_server: Any, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    # (SystemExit: a beat stopped by SIGTERM between claiming a slot's id and sending it)
    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(client.app, "send_task", broker_down)
    with pytest.raises(type(error)):
        client.submit("sum", {"a": 1, "b": 2}, job_id="order-2")
    monkeypatch.undo()

    assert client.submit("sum", {"a": 1, "b": 2}, job_id="order-2").enqueued


def test_status_of_an_unknown_job_is_unknown(client: Client) -> None:
    assert client.status("never-submitted").state == "unknown"
