"""bot.base.loop.Loop: the one background-thread primitive (heartbeat, services, relay)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from bot.base.loop import Loop


def wait_until(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_steps_until_stopped_then_runs_on_exit() -> None:
    calls: list[int] = []
    exited = threading.Event()
    loop = Loop("t", lambda: calls.append(1) or 0.001, on_exit=exited.set)
    loop.start()
    wait_until(lambda: len(calls) >= 3)
    loop.stop()
    assert not loop.alive and exited.is_set()
    count = len(calls)
    time.sleep(0.02)
    assert len(calls) == count


def test_wake_cuts_a_long_wait_short() -> None:
    calls: list[int] = []
    loop = Loop("t", lambda: calls.append(1) or 60.0)
    loop.start()
    wait_until(lambda: len(calls) == 1)
    loop.wake()
    wait_until(lambda: len(calls) == 2)
    loop.stop()


def test_an_exception_is_logged_and_the_loop_goes_on() -> None:
    calls: list[int] = []

    def step() -> float:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("one bad round")
        return 0.001

    loop = Loop("t", step, error_wait_s=0.001)
    loop.start()
    wait_until(lambda: len(calls) >= 3)
    loop.stop()


def test_first_wait_delays_the_first_step_and_request_stop_ends_it() -> None:
    calls: list[int] = []
    loop = Loop("t", lambda: calls.append(1) or 0.001, first_wait_s=60.0)
    loop.start()
    time.sleep(0.02)
    assert calls == []
    loop.request_stop()
    wait_until(lambda: not loop.alive)
    assert calls == []
