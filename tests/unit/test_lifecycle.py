"""The lifecycle state machine: every legal transition is allowed, every other one raises;
transitions are counted and reported to listeners."""

from __future__ import annotations

import itertools

import pytest

from bot.fleet.lifecycle import TRANSITIONS, IllegalTransition, Lifecycle, State

S = State
#: Written out by hand (not read from TRANSITIONS) so the test checks the table.
LEGAL = {
    (S.INITIALIZING, S.REGISTERING),
    (S.INITIALIZING, S.SHUTTING_DOWN),
    (S.INITIALIZING, S.STOPPED),
    (S.REGISTERING, S.HEALTH_CHECK),
    (S.REGISTERING, S.SHUTTING_DOWN),
    (S.REGISTERING, S.STOPPED),
    (S.HEALTH_CHECK, S.READY),
    (S.HEALTH_CHECK, S.DEGRADED),
    (S.HEALTH_CHECK, S.SHUTTING_DOWN),
    (S.READY, S.PROCESSING),
    (S.READY, S.DEGRADED),
    (S.READY, S.SHUTTING_DOWN),
    (S.PROCESSING, S.READY),
    (S.PROCESSING, S.DEGRADED),
    (S.PROCESSING, S.SHUTTING_DOWN),
    (S.DEGRADED, S.HEALTH_CHECK),
    (S.DEGRADED, S.READY),
    (S.DEGRADED, S.PROCESSING),
    (S.DEGRADED, S.SHUTTING_DOWN),
    (S.SHUTTING_DOWN, S.STOPPED),
}
#: A legal path into each state, from INITIALIZING.
PATH_TO = {
    S.INITIALIZING: [],
    S.REGISTERING: [S.REGISTERING],
    S.HEALTH_CHECK: [S.REGISTERING, S.HEALTH_CHECK],
    S.READY: [S.REGISTERING, S.HEALTH_CHECK, S.READY],
    S.PROCESSING: [S.REGISTERING, S.HEALTH_CHECK, S.READY, S.PROCESSING],
    S.DEGRADED: [S.REGISTERING, S.HEALTH_CHECK, S.DEGRADED],
    S.SHUTTING_DOWN: [S.SHUTTING_DOWN],
    S.STOPPED: [S.SHUTTING_DOWN, S.STOPPED],
}


def lifecycle_in(state: State) -> Lifecycle:
    machine = Lifecycle()
    for step in PATH_TO[state]:
        machine.to(step)
    assert machine.state is state
    return machine


def test_the_table_is_the_documented_one() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL


@pytest.mark.parametrize(
    ("current", "target"),
    [pair for pair in itertools.product(State, State) if pair in LEGAL],
    ids=lambda s: str(s),
)
def test_legal_transition(current: State, target: State) -> None:
    machine = lifecycle_in(current)

    machine.to(target)

    assert machine.state is target
    assert machine.counts[f"{current}->{target}"] == 1


@pytest.mark.parametrize(
    ("current", "target"),
    [pair for pair in itertools.product(State, State) if pair not in LEGAL],
    ids=lambda s: str(s),
)
def test_illegal_transition_raises_and_changes_nothing(current: State, target: State) -> None:
    machine = lifecycle_in(current)
    counts = dict(machine.counts)

    with pytest.raises(IllegalTransition):
        machine.to(target)

    assert machine.state is current
    assert dict(machine.counts) == counts


def test_degraded_and_back_without_a_restart() -> None:
    machine = lifecycle_in(S.PROCESSING)

    machine.to(S.DEGRADED, "redis down")
    machine.to(S.READY, "redis back")

    assert machine.counts == {
        "INITIALIZING->REGISTERING": 1,
        "REGISTERING->HEALTH_CHECK": 1,
        "HEALTH_CHECK->READY": 1,
        "READY->PROCESSING": 1,
        "PROCESSING->DEGRADED": 1,
        "DEGRADED->READY": 1,
    }


def test_listeners_hear_every_transition_and_a_failing_one_is_contained() -> None:
    heard: list[tuple[State, State, str]] = []
    machine = Lifecycle()

    def broken(*_: object) -> None:
        raise ValueError("listener bug")

    machine.add_listener(broken)
    machine.add_listener(lambda old, new, why: heard.append((old, new, why)))
    machine.to(S.REGISTERING, "starting")

    assert heard == [(S.INITIALIZING, S.REGISTERING, "starting")]


def test_to_if_moves_only_from_the_allowed_states() -> None:
    machine = lifecycle_in(S.SHUTTING_DOWN)
    live = frozenset({S.READY, S.PROCESSING})

    assert machine.to_if(live, S.READY) is False
    assert machine.state is S.SHUTTING_DOWN

    ready = lifecycle_in(S.READY)
    assert ready.to_if(live, S.READY) is False  # already there: no transition counted
    assert ready.to_if(live, S.PROCESSING) is True
    assert ready.state is S.PROCESSING


def test_since_follows_the_clock() -> None:
    now = [100.0]
    machine = Lifecycle(clock=lambda: now[0])
    now[0] = 105.0

    machine.to(S.REGISTERING)

    assert machine.since == 105.0


def test_the_reason_is_the_last_transitions_or_a_new_one_for_the_same_state() -> None:
    lifecycle = Lifecycle()
    for state in (S.REGISTERING, S.HEALTH_CHECK, S.READY):
        lifecycle.to(state)
    lifecycle.to(S.DEGRADED, "sink unreachable: sink:http")
    assert lifecycle.reason == "sink unreachable: sink:http"

    lifecycle.explain("redis memory 93% of maxmemory (limit 90%)")

    assert lifecycle.state is S.DEGRADED
    assert lifecycle.reason == "redis memory 93% of maxmemory (limit 90%)"
    assert lifecycle.counts["READY->DEGRADED"] == 1  # no transition counted
    lifecycle.to(S.READY, "healthy again")
    assert lifecycle.reason == "healthy again"
