"""The relay: drains one consumer group of the outbox into one sink (the built-in HTTP sink).

One `Relay` per worker (started by the fleet bootstep) or standalone (`python -m bot.cli.relay`).
Its consumer name is the worker's instance id, so each relay's pending list is its own. A pass
(`run_once`) does, in order:

1. retry its own pending entries whose per-entry backoff (full jitter) is over;
2. every `claim_interval_s`, XAUTOCLAIM entries idle past `claim_idle_ms` (their relay died:
   a live relay touches what it holds every `touch_interval_s`, so only a dead one's age);
3. read new entries (none while the breaker is open; one while it is half-open);
4. every `trim_interval_s`, trim the streams (never past what any group owes).

What is read goes to `Deliveries` (bot/outbox/deliveries.py): up to `concurrency` sink calls
in flight (BOT_REPORT_CONCURRENCY; the calls run in threads of bot/outbox/window.py), each
settled in the relay's thread once its own call returned, so an entry is acked only after its
own 2xx. With `report_batch` (BOT_REPORT_BATCH) a call delivers a batch of up to that many
entries, settled entry by entry from the sink's answer (bot/outbox/batch.py).

Each delivery goes through the relay's own CircuitBreaker. A failure (`DeliveryFailed`: 5xx,
408, 429, timeout, connection error) counts against it and leaves the entry pending; once its
delivery count reaches `max_deliveries` it moves to `bot:outbox:dead`. A rejection
(`DeliveryRejected`: the report cannot make a valid request, or the sink answered a 4xx about
it) moves that entry to `bot:outbox:dead` at once and counts nothing against the sink, so one
bad report cannot open the breaker and hold back the good ones. An ack that
fails because Redis went away is kept and retried first, so a delivered report is not sent
again after a Redis restart. Acks are grouped (bot/outbox/acks.py): only a relay killed
between a POST and its XACK re-sends reports (its grouped acks and what was in flight); the
receiver dedupes on Idempotency-Key.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis

from bot.base.backoff import full_jitter
from bot.base.breaker import BreakerState, CircuitBreaker
from bot.base.loop import Loop
from bot.outbox.deliveries import Deliveries
from bot.outbox.delivery import Sink, breaker_name
from bot.outbox.relay_config import RelayConfig
from bot.outbox.stream import Entry, Outbox
from bot.store.keys import Keys
from config.settings import Settings

logger = logging.getLogger(__name__)

#: How long a pass that found nothing to do waits for a delivery in flight to end (s).
REAP_WAIT_S = 0.05


class Relay:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        sink: Sink,
        consumer: str,
        config: RelayConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.outbox = Outbox(client, keys)
        self.sink = sink
        self.group = sink.name
        self.consumer = consumer
        self.config = config or RelayConfig()
        self.breaker = CircuitBreaker(
            breaker_name(self.group),
            self.config.breaker_threshold,
            self.config.breaker_timeout_s,
            clock,
        )
        self.streams = self.outbox.streams_of(self.group)
        self._clock = clock
        self._rand = rand
        self._timeout_s = float(getattr(sink, "timeout_s", 10.0))
        self._due: dict[str, float] = {"claim": 0.0, "touch": 0.0, "trim": 0.0}
        self._groups_ready = False
        self.counters = dict.fromkeys(
            (
                "delivered",
                "failed",
                "rejected",
                "dead_lettered",
                "claimed",
                "trimmed",
                "redis_errors",
            ),
            0,
        )
        self.deliveries = Deliveries(
            self.outbox,
            sink,
            self.config,
            self.breaker,
            self.counters,
            clock=clock,
            rand=rand,
            before_each=self._maybe_touch,
            stopping=lambda: self._loop.stopping,
        )
        self._redis_errors = 0  # in a row, for the backoff of the loop
        self._loop = Loop(f"relay-{self.group}", self._round, on_exit=self._flush_at_stop)

    @classmethod
    def from_settings(
        cls, settings: Settings, client: redis.Redis, sink: Sink, consumer: str, **overrides: Any
    ) -> Relay:
        timeout_s = float(getattr(sink, "timeout_s", 10.0))
        overrides.setdefault("concurrency", settings.report_concurrency)
        overrides.setdefault("report_batch", settings.report_batch)
        config = RelayConfig.from_settings(settings, timeout_s, **overrides)
        return cls(client, Keys(settings.key_prefix), sink, consumer, config)

    # -- one pass ---------------------------------------------------------------------------------

    def run_once(self, block_ms: int = 0) -> int:
        """One pass over pending, stale and new entries; returns how many were attempted."""
        try:
            return self._pass(block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream or group went away (a Redis without AOF)
                self._groups_ready = False
            raise

    def _pass(self, block_ms: int) -> int:
        if not self._groups_ready:
            for stream in self.streams:
                self.outbox.ensure_group(self.group, stream)
            self._groups_ready = True
        deliveries = self.deliveries
        deliveries.window.reap()
        deliveries.acks.flush()
        done = sum(self._retry_pending(stream) for stream in self.streams)
        if self._is_due("claim", self.config.claim_interval_s):
            done += sum(self._claim(stream) for stream in self.streams)
        replay, outbox = self.streams[1], self.streams[0]
        done += self._read_new(replay, None)
        idle = done == 0 and not deliveries.retry_at and not deliveries.window.busy
        done += self._read_new(outbox, block_ms if idle else None)
        if done == 0 and deliveries.window.busy:  # wait for a delivery to end, not spin
            done += deliveries.window.reap(REAP_WAIT_S)
        self._maybe_touch()
        deliveries.acks.flush()
        if self._is_due("trim", self.config.trim_interval_s):
            self.trim()
        return done

    def _is_due(self, what: str, interval_s: float) -> bool:
        now = self._clock()
        if now < self._due[what]:
            return False
        self._due[what] = now + interval_s
        return True

    def _retry_pending(self, stream: str) -> int:
        deliveries = self.deliveries
        held = deliveries.holds(stream)
        pending = self.outbox.pending(stream, self.group, self.config.batch, self.consumer)
        if len(pending) < self.config.batch:  # complete list: forget what another relay took
            deliveries.forget_except(stream, {p.id for p in pending})
        due: list[Entry] = []
        for info in pending:
            # Open: wait. Half-open: one trial only (XCLAIM would count a delivery not made).
            if self._held_back() or (self.breaker.state is not BreakerState.CLOSED and due):
                break
            if held(info.id) or deliveries.is_waiting(stream, info.id):
                continue
            entry = self.outbox.take(stream, self.group, self.consumer, info)
            if entry is None:  # deleted from the stream; XCLAIM dropped it from the list
                deliveries.retry_at.pop((stream, info.id), None)
                continue
            due.append(entry)
        return deliveries.deliver(due)

    def _claim(self, stream: str) -> int:
        if self.breaker.state is BreakerState.OPEN:
            return 0
        entries = self.outbox.claim_stale(
            stream, self.group, self.consumer, self.config.claim_idle_ms, self.config.batch
        )
        if entries:
            self.counters["claimed"] += len(entries)
            logger.info("relay %s: claimed %d stale entries", self.group, len(entries))
        self.outbox.prune_consumers(
            stream, self.group, self.consumer, 10 * self.config.claim_idle_ms
        )
        return self.deliveries.deliver(entries)

    def _read_new(self, stream: str, block_ms: int | None) -> int:
        if self._held_back():
            return 0
        count = 1 if self.breaker.state is BreakerState.HALF_OPEN else self._read_count()
        entries = self.outbox.read_new(stream, self.group, self.consumer, count, block_ms or None)
        return self.deliveries.deliver(entries)

    def _held_back(self) -> bool:
        """Whether the breaker lets no delivery start now: open, or half-open with a call in
        flight (its trial, which may outlast this pass)."""
        state = self.breaker.state
        return state is BreakerState.OPEN or (
            state is BreakerState.HALF_OPEN and self.deliveries.window.busy > 0
        )

    def _read_count(self) -> int:
        """Entries read per stream per pass: a batch, and enough to fill the window."""
        return max(self.config.batch, self.config.report_batch)

    def _maybe_touch(self) -> None:
        if not self._is_due("touch", self.config.touch_interval_s):
            return
        for stream in self.streams:
            pending = self.outbox.pending(stream, self.group, 10_000, self.consumer)
            self.outbox.touch(stream, self.group, self.consumer, [p.id for p in pending])

    def trim(self) -> int:
        trimmed = 0
        for stream in self.streams:
            trimmed += self.outbox.trim(
                stream, max_age_s=self.config.max_age_s, max_len=self.config.max_len
            )
        self.counters["trimmed"] += trimmed
        return trimmed

    # -- thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop.start()

    def request_stop(self) -> None:
        """Ask the thread to stop after its current pass (safe from a signal handler)."""
        self._loop.request_stop()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop and join the thread (a pass ends within BLOCK_MS or one sink timeout; the
        deliveries in flight are waited for and settled, up to one sink timeout)."""
        self._loop.stop(timeout_s)
        if not self._loop.alive:
            self.deliveries.window.close()

    def _round(self) -> float:
        """One pass of the relay's loop; Redis errors are waited out with backoff, never fatal.
        Returns the wait before the next pass (none after a pass that did something)."""
        try:
            blocking = self.breaker.state is BreakerState.CLOSED and not self.deliveries.retry_at
            done = self.run_once(self.config.block_ms if blocking else 0)
        except redis.RedisError as exc:
            self.counters["redis_errors"] += 1
            self.deliveries.last_error = f"redis: {type(exc).__name__}"
            delay = full_jitter(self._redis_errors, 0.1, 2.0, self._rand) + 0.05
            self._redis_errors += 1
            logger.warning("relay %s: Redis error (%s); retry in %.2fs", self.group, exc, delay)
            return delay
        self._redis_errors = 0
        return 0.0 if done else self._idle_wait_s()

    def _flush_at_stop(self) -> None:
        """Settle what is in flight (acking what was delivered), then flush the acks."""
        try:
            left = self.deliveries.stop(self._timeout_s)
        except redis.RedisError:
            left = len(self.deliveries.acks)
            logger.warning("relay %s: %d acks lost at stop", self.group, left)
            return
        if left:
            logger.warning("relay %s: stopped with %d deliveries in flight", self.group, left)

    def _idle_wait_s(self) -> float:
        retry_at = self.deliveries.retry_at
        if self.deliveries.window.busy:  # the next pass waits (REAP_WAIT_S) for one to end
            return 0.0
        now = self._clock()
        waits = [0.25]
        if retry_at:
            waits.append(min(retry_at.values()) - now)
        if self.breaker.state is BreakerState.OPEN:
            waits.append(self.breaker.retry_in_s())
        return max(0.01, min(waits))

    @property
    def last_error(self) -> str | None:
        return self.deliveries.last_error

    def snapshot(self) -> dict[str, Any]:
        """Counters and breaker state, for the worker record and `python -m bot.cli.relay`."""
        return {
            "group": self.group,
            "consumer": self.consumer,
            "running": self._loop.alive,
            "breaker": self.breaker.snapshot(),
            **self.counters,
            "waiting_retry": len(self.deliveries.retry_at),
            "in_flight": self.deliveries.window.busy,
            "last_error": self.last_error,
        }
