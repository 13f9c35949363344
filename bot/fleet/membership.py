"""The worker side of the fleet: registration with backoff, health check, heartbeat thread,
READY <-> PROCESSING, DEGRADED and back, and deregistration. Driven by `bot.fleet.step.FleetStep`.

Heartbeats run in a dedicated daemon thread of the worker main process, not on the worker's
timer. Why: the timer is the event loop's, and (observed, Celery 5.7) it does not fire while
the broker connection is down, nor while the pool drains during a warm shutdown, which are
exactly the times the lease must keep being renewed and DEGRADED must be entered and left.
The thread only touches bot's own Redis client and reads Celery's worker state by copying.

One heartbeat is one script call (`WorkerRecords.heartbeat`): lease, record, `bot:workers` and the
`unacked_index` scores of every held delivery tag; at most once per heartbeat interval it is
followed by an INFO memory for the Redis memory guard (bot/fleet/memory_guard.py).
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

import celery
import redis
from celery.worker import state as worker_state

from bot.base.backoff import backoff_ceiling, full_jitter
from bot.base.breaker import BreakerOpen, BreakerState, CircuitBreaker, SharedCircuitBreaker
from bot.base.exits import EXIT_STARTUP_FAILED
from bot.base.loop import Loop
from bot.base.version import __version__
from bot.fleet.identity import Identity
from bot.fleet.lifecycle import Lifecycle, State
from bot.fleet.memory_guard import MemoryGuard
from bot.fleet.records import WorkerRecords, op_schemas
from bot.ops import REGISTRY
from bot.outbox.delivery import is_sink_breaker
from bot.runtime import worker_state as worker_info
from bot.store.connect import UNREACHABLE, connect, ping_url
from config.settings import Settings, redact_url

logger = logging.getLogger("bot.fleet")

#: Seconds between checks for READY <-> PROCESSING changes (no Redis I/O).
ACTIVITY_POLL_S = 0.1
#: Deregistration attempts at shutdown, and the pause between them (seconds).
DEREGISTER_ATTEMPTS = 3
DEREGISTER_PAUSE_S = 0.2
#: Wider than `UNREACHABLE` on purpose: registration, beats and deregistration treat any
#: Redis error (a refused command included) and a socket error as "Redis is not usable now".
_REDIS_ERRORS = (*UNREACHABLE, redis.RedisError, OSError)


class StartupFailed(SystemExit):
    """Registration gave up; exits the worker with EXIT_STARTUP_FAILED."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_STARTUP_FAILED)
        self.message = message


class FleetAgent:
    """One worker's membership in the fleet. Created before the pool forks; started after."""

    def __init__(self, app: Any, worker: Any, identity: Identity) -> None:
        self.app = app
        self.worker = worker
        self.identity = identity
        self.settings: Settings = app.settings
        self.lifecycle = Lifecycle()
        self.counters = worker_info.OutcomeCounters()
        threshold, timeout_s = self.settings.breaker_threshold, self.settings.breaker_timeout
        self.breakers: dict[str, CircuitBreaker] = {
            name: CircuitBreaker(name, threshold, timeout_s)
            for name in ("registration", "heartbeat")
        }
        # Job acquire runs in the pool children: its breaker is in shared memory (made here,
        # before the pool forks) so they trip it together and the record shows its state.
        self.breakers["acquire"] = SharedCircuitBreaker("acquire", threshold, timeout_s)
        self.memory_guard = MemoryGuard(
            self.settings.redis_memory_limit_share, self.settings.heartbeat_interval
        )
        self.pid = os.getpid()
        self.registered = False
        self._registry: WorkerRecords | None = None
        #: Set by a lifecycle change: the next heartbeat goes out now (the record shows it).
        self._beat_now = threading.Event()
        self._loop = Loop("heartbeat", self._heartbeat_round)
        self._next_beat = 0.0
        self._finish_lock = threading.Lock()
        self._finished = False
        self.lifecycle.add_listener(lambda *_: self._wake_beat())

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.settings.lease_ttl_s * 1000)

    @property
    def registry(self) -> WorkerRecords:
        if self._registry is None:
            # A client of our own with a socket timeout near the heartbeat interval: a hung
            # Redis must turn into DEGRADED quickly, not block the beat for the default 10 s.
            timeout_s = max(0.5, min(10.0, 2 * self.settings.heartbeat_interval))
            client = connect(self.settings, socket_timeout_s=timeout_s)
            options = self.app.conf.broker_transport_options or {}
            self._registry = WorkerRecords(client, self.app.keys, options)
        return self._registry

    # -- start-up ----------------------------------------------------------------------------

    def start(self) -> None:
        """REGISTERING (with backoff) -> HEALTH_CHECK -> READY (or DEGRADED), then beat."""
        self.lifecycle.to(State.REGISTERING)
        self._register_with_backoff()
        self.lifecycle.to(State.HEALTH_CHECK)
        problems = self.health_problems()
        if problems:
            self.lifecycle.to(State.DEGRADED, "; ".join(problems))
        else:
            self.lifecycle.to(State.READY, "registered and healthy")
        self._loop.start()

    def _register_with_backoff(self) -> None:
        cap = self.settings.max_startup_attempts
        base, ceiling = self.settings.retry_base_delay, self.settings.retry_max_delay
        breaker = self.breakers["registration"]
        for attempt in range(cap):
            self._pause(breaker.retry_in_s())  # an open breaker: wait for its trial
            try:
                breaker.call(self.register, failure_types=_REDIS_ERRORS)
                return
            except _REDIS_ERRORS as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt + 1 >= cap:
                break
            delay = full_jitter(attempt, base, ceiling)
            logger.warning(
                "registration attempt %d/%d failed (%s); retrying in %.3fs (backoff ceiling %.3fs)",
                attempt + 1, cap, error, delay, backoff_ceiling(attempt, base, ceiling),
            )  # fmt: skip
            self._pause(delay)
        self.lifecycle.to(State.STOPPED, "start-up gave up")
        message = (
            f"giving up: Redis at {redact_url(self.settings.redis_url)} unreachable after {cap} "
            f"registration attempts (last error: {error}); exiting with code {EXIT_STARTUP_FAILED}"
        )
        logger.critical(message)
        raise StartupFailed(message)

    def _pause(self, seconds: float) -> None:
        """Sleep, but give up start-up at once when Celery was asked to shut down."""
        deadline = time.monotonic() + seconds
        while True:
            if worker_state.should_stop is not None or worker_state.should_terminate is not None:
                self.lifecycle.to(State.STOPPED, "shutdown requested during start-up")
                raise SystemExit(0)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def register(self) -> None:
        """Write the full record, take the lease, publish the op schemas."""
        self.registry.register(
            self.identity.instance_id,
            {**self.static_fields(), **self.dynamic_fields()},
            self.lease_ttl_ms,
            self.identity.bot_id,
            op_schemas(),
        )
        self.registered = True

    def health_problems(self) -> list[str]:
        """What stops READY: Redis PING, read-back of the record, broker and result backend."""
        problems: list[str] = []
        try:
            client = self.registry.client
            client.ping()
            seen = client.hget(self.app.keys.worker(self.identity.instance_id), "instance_id")
            if seen != self.identity.instance_id:
                problems.append("worker record did not read back")
        except _REDIS_ERRORS as exc:
            problems.append(f"redis: {exc}")
        for what, url in (
            ("broker", self.app.conf.broker_url),
            ("result backend", self.app.conf.result_backend),
        ):
            problem = _ping_url(url, self.settings.redis_sentinel_master)
            if problem:
                problems.append(f"{what}: {problem}")
        return problems

    # -- the record --------------------------------------------------------------------------

    def static_fields(self) -> dict[str, Any]:
        ident, worker = self.identity, self.worker
        autoscale = getattr(worker, "autoscale", None) or (None, None)
        return {
            "bot_id": ident.bot_id,
            "instance_id": ident.instance_id,
            "fingerprint": ident.fingerprint,
            "host": ident.hostname,
            "pid": str(self.pid),
            "node": ident.node_name,
            "version": f"bot {__version__}; celery {celery.__version__}; "
            f"python {platform.python_version()}",
            "queues": sorted(_queue_names(worker) or self.settings.queues),
            "ops": REGISTRY.names(),
            "pool_kind": getattr(getattr(worker, "pool_cls", None), "__module__", "?"),
            "autoscale_max": str(autoscale[0] or ""),
            "autoscale_min": str(autoscale[1] if autoscale[0] else ""),
            "started_at": str(ident.started_at_ms),
        }

    def dynamic_fields(self) -> dict[str, Any]:
        return {
            "state": str(self.lifecycle.state),
            "state_since": str(int(self.lifecycle.since * 1000)),
            "state_reason": self.lifecycle.reason,
            "memory_guard": "1" if self.memory_guard.tripped else "0",
            "pool": str(worker_info.pool_size(self.worker)),
            "in_flight": str(worker_info.in_flight()),
            "reserved": str(worker_info.reserved()),
            "done": str(self.counters.done),
            "failed": str(self.counters.failed),
            "outcomes_held": str(self.counters.held_now),
            "breakers": {name: b.snapshot() for name, b in self.breakers.items()},
            "transitions": dict(self.lifecycle.counts),
        }

    # -- heartbeats --------------------------------------------------------------------------

    def _wake_beat(self) -> None:
        self._beat_now.set()
        self._loop.wake()

    def _heartbeat_round(self) -> float:
        """One round of the heartbeat loop: follow activity; beat when due or woken. Returns
        the wait before the next round (short: READY <-> PROCESSING is polled)."""
        self._track_activity()
        if self._beat_now.is_set() or time.monotonic() >= self._next_beat:
            self._beat_now.clear()
            try:
                self.beat()
            except Exception:  # the heartbeat thread must outlive any bug in one beat
                logger.exception("heartbeat failed unexpectedly")
            self._next_beat = time.monotonic() + self.settings.heartbeat_interval
        return min(ACTIVITY_POLL_S, max(0.0, self._next_beat - time.monotonic()))

    def _track_activity(self) -> None:
        """READY <-> PROCESSING from what the main process holds (the pool children's
        task_prerun/postrun are not seen here)."""
        busy = worker_info.reserved() > 0
        live = frozenset({State.READY, State.PROCESSING})
        target = State.PROCESSING if busy else State.READY
        self.lifecycle.to_if(live, target, "jobs in hand" if busy else "idle")

    def beat(self) -> None:
        """One heartbeat: one script call. Failures degrade; success recovers."""
        breaker = self.breakers["heartbeat"]
        if not breaker.allow():
            self._degrade(f"heartbeat breaker open; next trial in {breaker.retry_in_s():.1f}s")
            return
        try:
            found = self.registry.heartbeat(
                self.identity.instance_id,
                self.dynamic_fields(),
                self.lease_ttl_ms,
                self.identity.bot_id,
                worker_info.held_delivery_tags(),
            )
            if found.record_missing:
                logger.warning("worker record was gone from Redis; registering again")
                self._reregister()
        except _REDIS_ERRORS as exc:
            breaker.record_failure()
            self._degrade(f"heartbeat failed: {type(exc).__name__}: {exc}")
            return
        except BreakerOpen as exc:  # re-registration refused: the beat itself went through
            breaker.record_success()
            self._degrade(str(exc))
            return
        breaker.record_success()
        if not found.lease_existed:
            logger.warning("lease had expired before this heartbeat (away longer than its TTL)")
        problems = self.beat_problems()
        if problems:
            self._degrade("; ".join(problems))
        elif self.lifecycle.state is State.DEGRADED:
            self._recover()

    def beat_problems(self) -> list[str]:
        """What a good heartbeat still finds wrong: open sink breakers, Redis memory."""
        unreachable = self.unreachable_sinks()
        problems = [f"sink unreachable: {', '.join(unreachable)}"] if unreachable else []
        memory = self.memory_guard.check(self.registry.client)
        return [*problems, memory] if memory else problems

    def unreachable_sinks(self) -> list[str]:
        """Sinks whose breaker is not closed (a service registers them as `sink:<name>`)."""
        return sorted(
            name
            for name, breaker in self.breakers.items()
            if is_sink_breaker(name) and breaker.state is not BreakerState.CLOSED
        )

    def _reregister(self) -> None:
        self.breakers["registration"].call(self.register, failure_types=_REDIS_ERRORS)

    def _degrade(self, reason: str) -> None:
        moved = self.lifecycle.to_if(
            frozenset({State.HEALTH_CHECK, State.READY, State.PROCESSING}), State.DEGRADED, reason
        )
        if not moved and self.lifecycle.state is State.DEGRADED and reason != self.lifecycle.reason:
            self.lifecycle.explain(reason)
            logger.debug("still degraded, now: %s", reason)

    def _recover(self) -> None:
        problems = self.health_problems()
        if problems:
            logger.info("still degraded: %s", "; ".join(problems))
            return
        target = State.PROCESSING if worker_info.reserved() > 0 else State.READY
        self.lifecycle.to_if(frozenset({State.DEGRADED}), target, "healthy again")

    # -- shutdown ----------------------------------------------------------------------------

    def begin_shutdown(self, reason: str) -> None:
        """SHUTTING_DOWN; heartbeats go on (the pool may still be draining)."""
        live = frozenset(TRANSITIONS_TO_SHUTDOWN)
        self.lifecycle.to_if(live, State.SHUTTING_DOWN, reason)

    def finish(self, how: str, stop_services: Callable[[], None] = lambda: None) -> None:
        """Leave the fleet: stop services and beats, delete record and lease, STOPPED.
        Idempotent; only in the process that started the agent."""
        with self._finish_lock:
            if self._finished or os.getpid() != self.pid:
                return
            self._finished = True
        self.begin_shutdown(how)
        stop_services()
        self._loop.stop(timeout_s=max(5.0, 2 * self.settings.heartbeat_interval))
        if self.registered:
            self._deregister(how)
        self.lifecycle.to_if(frozenset({State.SHUTTING_DOWN}), State.STOPPED, how)

    def _deregister(self, how: str) -> None:
        for attempt in range(DEREGISTER_ATTEMPTS):
            try:
                left = self.registry.deregister(self.identity.instance_id)
            except _REDIS_ERRORS as exc:
                logger.warning("deregistration attempt %d failed: %s", attempt + 1, exc)
                time.sleep(DEREGISTER_PAUSE_S)
                continue
            self.registered = False
            note = f"; {left} job(s) left in flight for the reaper" if left else ""
            logger.info("deregistered (%s)%s", how, note)
            return
        logger.error(
            "could not deregister; the lease will expire in %.1fs", self.lease_ttl_ms / 1e3
        )


TRANSITIONS_TO_SHUTDOWN = (
    State.INITIALIZING,
    State.REGISTERING,
    State.HEALTH_CHECK,
    State.READY,
    State.PROCESSING,
    State.DEGRADED,
)


def _queue_names(worker: Any) -> list[str]:
    try:
        return [queue.name for queue in worker.app.amqp.queues.consume_from.values()]
    except AttributeError:
        return []


def _ping_url(url: str | None, sentinel_master: str | None) -> str | None:
    """None when a Redis URL (or the master of a sentinel:// URL) answers PING; else why not."""
    if not url or url.split(":", 1)[0] not in ("redis", "rediss", "unix", "sentinel"):
        return None
    try:
        ping_url(url, sentinel_master, timeout_s=2.0)
    except _REDIS_ERRORS as exc:
        return str(exc)
    return None
