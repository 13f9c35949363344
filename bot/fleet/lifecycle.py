"""The worker's lifecycle state machine.

    INITIALIZING -> REGISTERING -> HEALTH_CHECK -> READY <-> PROCESSING -> SHUTTING_DOWN -> STOPPED
                                        |            \\         /
                                        +---------- DEGRADED --+   (and back, without a restart)

DEGRADED (Redis or a sink unreachable) is reachable from HEALTH_CHECK, READY and PROCESSING and
leads back to any of them. SHUTTING_DOWN is reachable from every live state; STOPPED only from
SHUTTING_DOWN, or directly from INITIALIZING/REGISTERING when start-up gives up (nothing was
registered, so there is nothing to shut down). Anything else raises `IllegalTransition`.

Every transition is logged, counted and handed to listeners (the fleet step writes the new
state into the worker record). Thread-safe: the heartbeat thread and the worker's main thread
both move it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum

logger = logging.getLogger(__name__)


class State(StrEnum):
    INITIALIZING = "INITIALIZING"
    REGISTERING = "REGISTERING"
    HEALTH_CHECK = "HEALTH_CHECK"
    READY = "READY"
    PROCESSING = "PROCESSING"
    DEGRADED = "DEGRADED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    STOPPED = "STOPPED"


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.INITIALIZING: frozenset({S.REGISTERING, S.SHUTTING_DOWN, S.STOPPED}),
    S.REGISTERING: frozenset({S.HEALTH_CHECK, S.SHUTTING_DOWN, S.STOPPED}),
    S.HEALTH_CHECK: frozenset({S.READY, S.DEGRADED, S.SHUTTING_DOWN}),
    S.READY: frozenset({S.PROCESSING, S.DEGRADED, S.SHUTTING_DOWN}),
    S.PROCESSING: frozenset({S.READY, S.DEGRADED, S.SHUTTING_DOWN}),
    S.DEGRADED: frozenset({S.HEALTH_CHECK, S.READY, S.PROCESSING, S.SHUTTING_DOWN}),
    S.SHUTTING_DOWN: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
}

#: States in which the worker takes and runs jobs: what `bot health` calls healthy.
HEALTHY = frozenset({S.READY, S.PROCESSING})

Listener = Callable[[State, State, str], None]


class IllegalTransition(RuntimeError):
    def __init__(self, current: State, target: State) -> None:
        super().__init__(f"illegal lifecycle transition {current} -> {target}")
        self.current = current
        self.target = target


class Lifecycle:
    """The current state, the transition counts, and who to tell."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._state = S.INITIALIZING
        self._clock = clock
        self._since = clock()
        self._reason = ""
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self.counts: Counter[str] = Counter()

    @property
    def state(self) -> State:
        return self._state

    @property
    def since(self) -> float:
        """When the current state was entered (epoch seconds)."""
        return self._since

    @property
    def reason(self) -> str:
        """Why the worker is in its current state (the last transition's or `explain`'s)."""
        return self._reason

    def explain(self, reason: str) -> None:
        """A new reason for the current state, without a transition (e.g. DEGRADED now for
        another cause): shown in the worker record, not counted."""
        with self._lock:
            self._reason = reason

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def to(self, target: State, reason: str = "") -> None:
        """Move to `target`; `IllegalTransition` if the state machine does not allow it."""
        with self._lock:
            current = self._state
            if target not in TRANSITIONS[current]:
                raise IllegalTransition(current, target)
            self._state = target
            self._since = self._clock()
            self._reason = reason
            self.counts[f"{current}->{target}"] += 1
        logger.info("lifecycle %s -> %s%s", current, target, f" ({reason})" if reason else "")
        for listener in self._listeners:
            try:
                listener(current, target, reason)
            except Exception:  # a listener must not break the state machine
                logger.exception("lifecycle listener failed on %s -> %s", current, target)

    def to_if(self, allowed_from: frozenset[State], target: State, reason: str = "") -> bool:
        """Move to `target` only when the current state is in `allowed_from` (atomically);
        whether it moved. For racing threads: e.g. the heartbeat must not turn a concurrent
        SHUTTING_DOWN back into READY."""
        with self._lock:
            if self._state not in allowed_from or self._state == target:
                return False
            self.to(target, reason)
            return True
