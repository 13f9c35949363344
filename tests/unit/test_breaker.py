"""CircuitBreaker with an injected clock: closed -> open after `threshold` consecutive
failures, one trial when half-open, closed again on success, re-opened on failure."""

from __future__ import annotations

import pytest

from bot.base.breaker import BreakerOpen, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def failing() -> None:
    raise ConnectionError("down")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("heartbeat", threshold=3, timeout_s=10.0, clock=clock)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            breaker.call(failing)


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED

    fail(breaker, 1)

    assert breaker.state is BreakerState.OPEN
    with pytest.raises(BreakerOpen) as refused:
        breaker.call(lambda: "not called")
    assert refused.value.retry_in_s == pytest.approx(10.0)


def test_a_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert breaker.call(lambda: "ok") == "ok"
    fail(breaker, 2)

    assert breaker.state is BreakerState.CLOSED


def test_half_open_lets_one_trial_through_and_its_success_closes(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    fail(breaker, 3)
    clock.now += 10.0

    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() is True
    assert breaker.allow() is False  # only one trial at a time
    breaker.record_success()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot() == {"state": "closed", "failures": 0}


def test_a_failed_trial_reopens_for_a_full_timeout(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 3)
    clock.now += 10.0

    fail(breaker, 1)

    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in_s() == pytest.approx(10.0)
    clock.now += 9.9
    assert breaker.state is BreakerState.OPEN


def test_only_the_given_failure_types_count(breaker: CircuitBreaker) -> None:
    for _ in range(5):
        with pytest.raises(KeyError):
            breaker.call(lambda: {}["x"], failure_types=(ConnectionError,))

    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0


def test_snapshot_shows_state_and_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, 3)

    assert breaker.snapshot() == {"state": "open", "failures": 3}


def test_a_shared_breaker_is_tripped_and_healed_across_fork() -> None:
    import os

    from bot.base.breaker import SharedCircuitBreaker

    now = [100.0]
    breaker = SharedCircuitBreaker("acquire", threshold=2, timeout_s=10, clock=lambda: now[0])
    assert breaker.state is BreakerState.CLOSED

    for _ in range(2):  # two children each fail once
        pid = os.fork()
        if pid == 0:
            breaker.record_failure()
            os._exit(0)
        os.waitpid(pid, 0)

    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    now[0] += 10
    assert breaker.allow()  # the half-open trial
    pid = os.fork()
    if pid == 0:
        breaker.record_success()
        os._exit(0)
    os.waitpid(pid, 0)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0
