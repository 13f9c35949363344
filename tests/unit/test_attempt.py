"""Recording an outcome across a Redis outage: held in memory (and counted), retried, released."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis

from bot.jobs.outcome import Attempt
from bot.jobs.store import Acquired, Delivery, Outcome
from bot.runtime.process import RUNTIME
from bot.runtime.worker_state import OutcomeCounters
from config.settings import Settings


class Store:
    """Refuses `failures` completes, then records what the held counter read at that moment."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.held_seen: int | None = None

    def complete(
        self, job_id: str, owner: str, fence: int, outcome: Outcome, ttl: int, meta: object = None
    ) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise redis.ConnectionError("redis is down")
        self.held_seen = RUNTIME.counters.held_now
        return "1-0"


def attempt_with(store: Store) -> Attempt:
    app: Any = SimpleNamespace(settings=Settings(retry_base_delay=0.0), job_store=lambda: store)
    delivery = Delivery("job-1", "sum", "celery", "tag", {})
    return Attempt(app, delivery, Acquired(1, 1, 0, None, 0), "owner-1")


@pytest.fixture(autouse=True)
def counters(monkeypatch: pytest.MonkeyPatch) -> OutcomeCounters:
    fresh = OutcomeCounters()
    monkeypatch.setattr(RUNTIME, "counters", fresh)
    return fresh


def test_an_outcome_is_held_and_counted_while_redis_is_away(counters: OutcomeCounters) -> None:
    store = Store(failures=3)

    assert attempt_with(store).finish("succeeded", result=3)

    assert store.calls == 4
    assert store.held_seen == 1  # counted while it waited
    assert counters.held_now == 0  # released once durable


def test_no_outage_holds_nothing(counters: OutcomeCounters) -> None:
    store = Store(failures=0)

    assert attempt_with(store).finish("succeeded", result=3)

    assert store.held_seen == 0
