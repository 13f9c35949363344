"""The execution pipeline's guard: a Redis error at acquire is retried, then the message is
handed back to the broker (the job has not started: it must neither fail nor be lost)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery.exceptions import Reject

from bot.base.breaker import BreakerState, CircuitBreaker
from bot.jobs.run import ACQUIRE_ATTEMPTS, acquire_or_requeue
from bot.jobs.store import Acquired, Delivery
from bot.runtime.process import RUNTIME
from config.settings import Settings

DELIVERY = Delivery("job-1", "sum", "celery", "tag-1", {"task": "ops.sum", "kwargs": {}})


class Store:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.claims: list[str] = []

    def acquire(
        self,
        delivery: Delivery,
        owner: str,
        pid: int,
        claim: str,
        *,
        max_recoveries: int,
        result_meta: object = None,
    ) -> Acquired:
        self.calls += 1
        self.claims.append(claim)
        if self.calls <= self.failures:
            raise redis.ConnectionError("redis is down")
        return Acquired(1, 1, 0, None, 0)


def task_with(store: Store) -> Any:
    settings = Settings(retry_base_delay=0.0, breaker_threshold=2)
    return SimpleNamespace(app=SimpleNamespace(settings=settings, job_store=lambda: store))


@pytest.fixture(autouse=True)
def fresh_breaker(monkeypatch: pytest.MonkeyPatch) -> CircuitBreaker:
    breaker = CircuitBreaker("acquire", threshold=2, timeout_s=0.0)
    monkeypatch.setattr(RUNTIME, "acquire_breaker", breaker)
    return breaker


def test_a_passing_redis_error_is_retried(fresh_breaker: CircuitBreaker) -> None:
    store = Store(failures=1)

    verdict = acquire_or_requeue(task_with(store), DELIVERY)

    assert isinstance(verdict, Acquired)
    assert store.calls == 2
    # the retry names the same attempt, so an earlier call that did go through counts
    assert len(set(store.claims)) == 1 and store.claims[0]
    assert fresh_breaker.state is BreakerState.CLOSED


def test_redis_down_hands_the_message_back_to_the_broker() -> None:
    store = Store(failures=10_000)

    with pytest.raises(Reject) as raised:
        acquire_or_requeue(task_with(store), DELIVERY)

    assert raised.value.requeue is True
    assert store.calls == ACQUIRE_ATTEMPTS


def test_an_open_breaker_keeps_acquire_from_calling_redis(fresh_breaker: CircuitBreaker) -> None:
    fresh_breaker.timeout_s = 3600
    fresh_breaker.record_failure()
    fresh_breaker.record_failure()
    store = Store(failures=0)

    with pytest.raises(Reject):
        acquire_or_requeue(task_with(store), DELIVERY)

    assert store.calls == 0
