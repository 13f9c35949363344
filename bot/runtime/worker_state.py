"""What the worker main process knows about its own work, read without touching Redis:
requests held (reserved, scheduled, running) and their kombu delivery tags, pool size, and
job outcome counters shared with the pool children.

Celery keeps every request the main process holds in `celery.worker.state` (a dict of
`Request`s plus WeakSets for reserved/active/scheduled); the heartbeat thread reads them from
outside the event loop, so each read copies first (a dict copy is atomic under the GIL;
iterating a WeakSet that the loop changes is not).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from celery.worker import state as worker_state

#: Outcome counter slots: jobs done, jobs failed, outcomes held in memory while Redis is away.
DONE, FAILED, HELD = 0, 1, 2
_SUCCESS_STATES = frozenset({"SUCCESS"})
_FAILURE_STATES = frozenset({"FAILURE"})


def held_delivery_tags() -> list[str]:
    """kombu delivery tags of every message this worker holds unacked: reserved (prefetched),
    scheduled (ETA/countdown) and running requests."""
    requests = dict(worker_state.requests)
    tags: list[str] = []
    for request in requests.values():
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag is not None:
            tags.append(str(tag))
    return tags


def held_job_ids() -> set[str]:
    """Task ids (= job ids) of every request this worker holds: reserved, scheduled, running."""
    return set(dict(worker_state.requests))


def _count(weakset: Any) -> int:
    for _ in range(5):
        try:
            return len(list(weakset))
        except RuntimeError:  # changed size while we copied it; try again
            continue
    return len(weakset)


def in_flight() -> int:
    """Requests running in the pool now."""
    return _count(worker_state.active_requests)


def reserved() -> int:
    """Requests handed to this worker and not finished (running ones included)."""
    return _count(worker_state.reserved_requests)


def pool_size(worker: Any) -> int:
    """The live number of pool processes (follows `--autoscale`)."""
    pool = getattr(worker, "pool", None)
    try:
        return int(pool.num_processes)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return int(getattr(worker, "concurrency", 0) or 0)


class OutcomeCounters:
    """done / failed counts and outcomes held, in shared memory made before the pool forks,
    so the pool children (where jobs end) count and the main process (which beats) reads.
    Children forked later by `--autoscale` or `max_tasks_per_child` inherit it as well."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._values = ctx.RawArray("q", 3)
        self._lock = ctx.Lock()

    def held(self, delta: int) -> None:
        """An outcome waits in a child's memory for Redis (+1), or no longer does (-1)."""
        with self._lock:
            self._values[HELD] += delta

    @property
    def held_now(self) -> int:
        return int(self._values[HELD])

    def count(self, task_state: str) -> None:
        slot = DONE if task_state in _SUCCESS_STATES else None
        slot = FAILED if task_state in _FAILURE_STATES else slot
        if slot is None:  # RETRY / IGNORED (a skipped duplicate): not an outcome
            return
        with self._lock:
            self._values[slot] += 1

    @property
    def done(self) -> int:
        return int(self._values[DONE])

    @property
    def failed(self) -> int:
        return int(self._values[FAILED])
