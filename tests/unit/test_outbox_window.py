"""The relay's window of deliveries in flight (bot/outbox/window.py): calls run in its threads,
outcomes are settled in the caller's thread and only after the call returned, a full window
waits for a slot, and a window of one runs inline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.outbox.window import DeliveryWindow

Settled = list[tuple[str, Any, BaseException | None, str]]


@pytest.fixture
def settled() -> Settled:
    return []


@pytest.fixture
def window(settled: Settled) -> Iterator[Callable[[int], DeliveryWindow[str]]]:
    made: list[DeliveryWindow[str]] = []

    def make(size: int) -> DeliveryWindow[str]:
        def settle(unit: str, value: Any, error: BaseException | None) -> None:
            settled.append((unit, value, error, threading.current_thread().name))

        made.append(DeliveryWindow(size, settle, "test"))
        return made[-1]

    yield make
    for w in made:
        w.close()


def gated(gate: threading.Event, value: str) -> Callable[[], str]:
    def call() -> str:
        assert gate.wait(5)
        return value

    return call


def test_a_window_of_one_runs_the_call_inline_and_settles_it_at_once(
    window: Callable[[int], DeliveryWindow[str]], settled: Settled
) -> None:
    w = window(1)
    w.submit("a", ["ka"], lambda: "ok")
    assert settled == [("a", "ok", None, threading.current_thread().name)]
    assert (w.busy, w.holds("ka")) == (0, False)


def test_calls_run_in_threads_and_are_settled_in_the_callers_thread_after_they_return(
    window: Callable[[int], DeliveryWindow[str]], settled: Settled
) -> None:
    w = window(4)
    gates = {name: threading.Event() for name in "abc"}
    for name, gate in gates.items():
        w.submit(name, [f"k{name}"], gated(gate, name.upper()))

    # Nothing is settled while the calls run, and each is held
    assert w.reap(0.05) == 0
    assert settled == [] and w.busy == 3 and all(w.holds(f"k{n}") for n in "abc")

    # When b returns, b alone is settled, in this thread
    gates["b"].set()
    assert w.reap(5) == 1
    assert settled == [("b", "B", None, threading.current_thread().name)]
    assert not w.holds("kb") and w.holds("ka")

    gates["a"].set()
    gates["c"].set()
    assert w.drain(5) == 0
    assert sorted(u for u, *_ in settled) == ["a", "b", "c"]


def test_what_a_call_raises_is_handed_back_not_raised(
    window: Callable[[int], DeliveryWindow[str]], settled: Settled
) -> None:
    w = window(2)

    def boom() -> str:
        raise KeyError("sink bug")

    w.submit("a", ["ka"], boom)
    assert w.drain(5) == 0
    ((unit, value, error, _),) = settled
    assert (unit, value, type(error)) == ("a", None, KeyError)


def test_a_full_window_waits_for_a_slot_settling_the_call_that_ended(
    window: Callable[[int], DeliveryWindow[str]], settled: Settled
) -> None:
    w = window(2)
    first, second = threading.Event(), threading.Event()
    w.submit("a", ["ka"], gated(first, "A"))
    w.submit("b", ["kb"], gated(second, "B"))
    threading.Timer(0.1, first.set).start()

    w.submit("c", ["kc"], lambda: "C")  # waits until a ends

    assert [u for u, *_ in settled] == ["a"]
    assert w.busy == 2
    second.set()
    assert w.drain(5) == 0
    assert sorted(u for u, *_ in settled) == ["a", "b", "c"]


def test_drain_gives_up_after_its_timeout_with_what_is_still_in_flight(
    window: Callable[[int], DeliveryWindow[str]], settled: Settled
) -> None:
    w = window(2)
    gate = threading.Event()
    w.submit("a", ["ka"], gated(gate, "A"))
    assert w.drain(0.05) == 1
    gate.set()
    assert w.drain(5) == 0 and len(settled) == 1


def test_a_window_holds_at_least_one_call() -> None:
    with pytest.raises(ValueError, match="at least one"):
        DeliveryWindow(0, lambda *_: None)
