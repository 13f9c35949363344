"""`run_op` in-process (a task's eager `apply()`) against a real redis-server: the whole
guard -> decode -> execute -> record path without a worker process.

Pins the rule "a bad payload is rejected after exactly one attempt, with one report, never
retried", which otherwise only a 38-second e2e test covered.
"""

from __future__ import annotations

import json

import pytest
import redis

from bot.application import BotApp
from bot.runtime.process import RUNTIME
from bot.store.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys("bot")


@pytest.fixture
def owner(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run tasks as worker instance "A", with a live lease, as a worker's pool child would."""
    monkeypatch.setattr(RUNTIME, "instance_id", "A")
    client.set(KEYS.lease("A"), "1", px=60_000)
    return "A"


@pytest.mark.parametrize(
    "payload",
    [{"a": "not a number", "b": 2}, {"a": 1, "b": 2, "extra": True}],
    ids=["bad_field", "unknown_field"],
)
def test_a_rejected_payload_ends_after_one_attempt_with_one_report(
    payload: dict[str, object], bot_app: BotApp, client: redis.Redis, owner: str
) -> None:
    # When a delivery of `sum` with a bad payload runs
    result = bot_app.tasks["ops.sum"].apply(kwargs=payload, task_id="bad-1")

    # Then the task fails with PayloadRejected, once: not retried
    assert result.failed() and type(result.result).__name__ == "PayloadRejected"
    record = client.hgetall(KEYS.job("bad-1"))
    assert (record["state"], record["attempts"], record["recoveries"]) == ("rejected", "1", "0")
    assert record["owner"] == owner
    # and exactly one report says so, with pydantic's field-level detail
    entries = client.xrange(KEYS.outbox)
    assert [fields["job_id"] for _, fields in entries] == ["bad-1"]
    report = json.loads(entries[0][1]["report"])
    assert (report["status"], report["attempts"]) == ("rejected", 1)
    assert report["error"]["type"] == "PayloadRejected" and report["error"]["details"]
    # and a copy of the message delivered again is a duplicate: it does not run
    again = bot_app.tasks["ops.sum"].apply(kwargs=payload, task_id="bad-1")
    assert again.state == "IGNORED"
    assert client.hget(KEYS.job("bad-1"), "attempts") == "1"
    assert client.xlen(KEYS.outbox) == 1


def test_a_good_payload_succeeds_with_one_report(
    bot_app: BotApp, client: redis.Redis, owner: str
) -> None:
    # The contrast: the same path with a valid payload records the result
    result = bot_app.tasks["ops.sum"].apply(kwargs={"a": 1, "b": 2}, task_id="good-1")

    assert result.successful() and result.result == 3
    record = client.hgetall(KEYS.job("good-1"))
    assert (record["state"], record["attempts"]) == ("succeeded", "1")
    assert client.xlen(KEYS.outbox) == 1
