"""A circuit breaker: after `threshold` consecutive failures stop trying for `timeout_s`, then
let one trial through (half-open); its success closes the breaker, its failure re-opens it.

Defaults come from `BOT_BREAKER_THRESHOLD` (5) and `BOT_BREAKER_TIMEOUT` (30 s). The clock is
injectable so tests move time instead of sleeping. Written here rather than taken from a
library because it must be synchronous, clock-injectable and report its state into the worker
record; the common packages are async-first or global-registry based.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, MutableSequence
from contextlib import AbstractContextManager
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


#: Slots of a breaker's cells: consecutive failures, when it opened (< 0: closed), whether a
#: half-open trial is running (0/1). Floats, so one shared-memory array can hold them all.
_FAILURES, _OPENED_AT, _TRIAL = 0, 1, 2


class CircuitBreaker:
    """A breaker for one process; `SharedCircuitBreaker` keeps the same cells in memory shared
    with forked pool children."""

    def __init__(
        self,
        name: str,
        threshold: int = 5,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        cells: MutableSequence[float] | None = None,
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.timeout_s = timeout_s
        self._clock = clock
        self._cells: MutableSequence[float] = [0.0, -1.0, 0.0] if cells is None else cells
        self._lock: AbstractContextManager[object] = lock or threading.Lock()

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    @property
    def failures(self) -> int:
        return int(self._cells[_FAILURES])

    def _opened_at(self) -> float | None:
        value = self._cells[_OPENED_AT]
        return None if value < 0 else value

    def _state(self) -> BreakerState:
        opened_at = self._opened_at()
        if opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - opened_at >= self.timeout_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go through now (in half-open, only one trial at a time)."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.HALF_OPEN and not self._cells[_TRIAL]:
                self._cells[_TRIAL] = 1.0
                return True
            return False

    def retry_in_s(self) -> float:
        with self._lock:
            opened_at = self._opened_at()
            if opened_at is None:
                return 0.0
            return max(0.0, self.timeout_s - (self._clock() - opened_at))

    def record_success(self) -> None:
        with self._lock:
            self._cells[_FAILURES] = 0.0
            self._cells[_OPENED_AT] = -1.0
            self._cells[_TRIAL] = 0.0

    def record_failure(self) -> None:
        with self._lock:
            self._cells[_FAILURES] += 1
            self._cells[_TRIAL] = 0.0
            if self._opened_at() is not None or self._cells[_FAILURES] >= self.threshold:
                self._cells[_OPENED_AT] = self._clock()

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
        return {"state": str(self.state), "failures": self.failures}


class SharedCircuitBreaker(CircuitBreaker):
    """A breaker whose state lives in shared memory made before the pool forks, so every
    prefork child guarding the same Redis path (job acquire) trips and heals it together, and
    the main process reads its state for the worker record. The clock must be one all the
    processes share: `time.monotonic` (CLOCK_MONOTONIC) is, on Linux."""

    def __init__(
        self,
        name: str,
        threshold: int = 5,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        cells = ctx.RawArray("d", 3)
        cells[_OPENED_AT] = -1.0
        super().__init__(name, threshold, timeout_s, clock, cells=cells, lock=ctx.Lock())
