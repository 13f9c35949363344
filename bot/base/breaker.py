"""A circuit breaker: after `threshold` consecutive failures stop trying for `timeout_s`, then
let one trial through (half-open); its success closes the breaker, its failure re-opens it.

Defaults come from `BOT_BREAKER_THRESHOLD` (5) and `BOT_BREAKER_TIMEOUT` (30 s). The clock is
injectable so tests move time instead of sleeping. Written here rather than taken from a
library because it must be synchronous, clock-injectable and report its state into the worker
record; the common packages are async-first or global-registry based.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(Exception):
    """Raised instead of calling through an open breaker."""

    def __init__(self, name: str, retry_in_s: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open; next trial in {retry_in_s:.1f}s")
        self.name = name
        self.retry_in_s = retry_in_s


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        threshold: int = 5,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    @property
    def failures(self) -> int:
        return self._failures

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.timeout_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go through now (in half-open, only one trial at a time)."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def retry_in_s(self) -> float:
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.timeout_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_running = False
            if self._opened_at is not None or self._failures >= self.threshold:
                self._opened_at = self._clock()

    def call(
        self, fn: Callable[[], T], failure_types: tuple[type[BaseException], ...] = (Exception,)
    ) -> T:
        """Call `fn` through the breaker; `BreakerOpen` when it is open."""
        if not self.allow():
            raise BreakerOpen(self.name, self.retry_in_s())
        try:
            result = fn()
        except failure_types:
            self.record_failure()
            raise
        self.record_success()
        return result

    def snapshot(self) -> dict[str, object]:
        return {"state": str(self.state), "failures": self._failures}


class SharedCircuitBreaker(CircuitBreaker):
    """A breaker whose state lives in shared memory made before the pool forks, so every
    prefork child guarding the same Redis path (job acquire) trips and heals it together, and
    the main process reads its state for the worker record. The clock must be one all the
    processes share: `time.monotonic` (CLOCK_MONOTONIC) is, on Linux."""

    # Slots of the shared array.
    _FAILURES, _OPENED_AT, _TRIAL = 0, 1, 2

    def __init__(
        self,
        name: str,
        threshold: int = 5,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self._shared = ctx.RawArray("d", 3)
        super().__init__(name, threshold, timeout_s, clock)
        self._lock = ctx.Lock()  # type: ignore[assignment]

    # The base class reads and writes these three attributes under its lock; here they are
    # views on the shared array (NaN-free encoding: opened_at < 0 means "closed").

    @property
    def _failures(self) -> int:
        return int(self._shared[self._FAILURES])

    @_failures.setter
    def _failures(self, value: int) -> None:
        self._shared[self._FAILURES] = value

    @property
    def _opened_at(self) -> float | None:
        value = self._shared[self._OPENED_AT]
        return None if value < 0 else value

    @_opened_at.setter
    def _opened_at(self, value: float | None) -> None:
        self._shared[self._OPENED_AT] = -1.0 if value is None else value

    @property
    def _trial_running(self) -> bool:
        return bool(self._shared[self._TRIAL])

    @_trial_running.setter
    def _trial_running(self, value: bool) -> None:
        self._shared[self._TRIAL] = 1.0 if value else 0.0
