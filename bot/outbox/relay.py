"""The relay: drains one consumer group of the outbox into one sink (the built-in HTTP sink).

One `Relay` per worker (started by the fleet bootstep) or standalone (`python -m bot.cli.relay`).
Its consumer name is the worker's instance id, so each relay's pending list is its own. A pass
(`run_once`) does, in order:

1. retry its own pending entries whose per-entry backoff (full jitter) is over;
2. every `claim_interval_s`, XAUTOCLAIM entries idle past `claim_idle_ms` (their relay died:
   a live relay touches what it holds every `touch_interval_s`, so only a dead one's age);
3. read new entries (none while the breaker is open; one while it is half-open);
4. every `trim_interval_s`, trim the streams (never past what any group owes).

Each delivery goes through the relay's own CircuitBreaker. A failure (`DeliveryFailed`: 5xx,
408, 429, timeout, connection error) counts against it and leaves the entry pending; once its
delivery count reaches `max_deliveries` it moves to `bot:outbox:dead`. A rejection
(`DeliveryRejected`: the report cannot make a valid request, or the sink answered a 4xx about
it) moves that entry to `bot:outbox:dead` at once and counts nothing against the sink, so one
bad report cannot open the breaker and hold back the good ones. An ack that
fails because Redis went away is kept and retried first, so a delivered report is not sent
again after a Redis restart. Acks are grouped (ACK_BATCH / ACK_MAX_DELAY_S): only a relay
killed between a POST and its XACK re-sends reports, at most ACK_BATCH of them; the receiver
dedupes on Idempotency-Key.
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
from bot.jobs.envelope import printable
from bot.outbox.delivery import DeliveryFailed, DeliveryRejected, Sink, breaker_name
from bot.outbox.relay_config import RelayConfig
from bot.outbox.stream import Entry, Outbox
from bot.store.keys import Keys
from config.settings import Settings

logger = logging.getLogger(__name__)

#: Delivered entries are XACKed together once this many are waiting, or after this long (s).
ACK_BATCH = 50
ACK_MAX_DELAY_S = 0.05


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
        self._retry_at: dict[tuple[str, str], float] = {}
        self._unacked: list[tuple[str, str]] = []  # delivered, XACK not yet done
        self._unacked_since = 0.0
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
        self.last_error: str | None = None
        self._redis_errors = 0  # in a row, for the backoff of the loop
        self._loop = Loop(f"relay-{self.group}", self._round, on_exit=self._flush_at_stop)

    @classmethod
    def from_settings(
        cls, settings: Settings, client: redis.Redis, sink: Sink, consumer: str, **overrides: Any
    ) -> Relay:
        timeout_s = float(getattr(sink, "timeout_s", 10.0))
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
        self._flush_acks()
        done = sum(self._retry_pending(stream) for stream in self.streams)
        if self._is_due("claim", self.config.claim_interval_s):
            done += sum(self._claim(stream) for stream in self.streams)
        replay, outbox = self.streams[1], self.streams[0]
        done += self._read_new(replay, None)
        done += self._read_new(outbox, block_ms if done == 0 and not self._retry_at else None)
        self._maybe_touch()
        self._flush_acks()
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
        attempted = 0
        held = {sid for s, sid in self._unacked if s == stream}
        pending = self.outbox.pending(stream, self.group, self.config.batch, self.consumer)
        if len(pending) < self.config.batch:  # complete list: forget what another relay took
            mine = {p.id for p in pending}
            for key in [k for k in self._retry_at if k[0] == stream and k[1] not in mine]:
                del self._retry_at[key]
        for info in pending:
            # Open: wait. Half-open: one trial only (XCLAIM would count a delivery not made).
            if self.breaker.state is not BreakerState.CLOSED and attempted:
                break
            if self.breaker.state is BreakerState.OPEN:
                break
            key = (stream, info.id)
            if info.id in held or self._retry_at.get(key, 0.0) > self._clock():
                continue
            entry = self.outbox.take(stream, self.group, self.consumer, info)
            if entry is None:  # deleted from the stream; XCLAIM dropped it from the list
                self._retry_at.pop(key, None)
                continue
            attempted += self._attempt(entry)
        return attempted

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
        return sum(self._attempt(entry) for entry in entries)

    def _read_new(self, stream: str, block_ms: int | None) -> int:
        state = self.breaker.state
        if state is BreakerState.OPEN:
            return 0
        count = 1 if state is BreakerState.HALF_OPEN else self.config.batch
        entries = self.outbox.read_new(stream, self.group, self.consumer, count, block_ms or None)
        return sum(self._attempt(entry) for entry in entries)

    # -- one delivery -----------------------------------------------------------------------------

    def _attempt(self, entry: Entry) -> int:
        """Deliver one entry through the breaker; 1 if attempted, 0 if the breaker said no."""
        key = (entry.stream, entry.id)
        self._maybe_touch()
        self._maybe_flush_acks()  # a slow sink must not keep earlier deliveries unacked
        if self._refused_by_check(entry):
            return 1
        if not self.breaker.allow():
            self._retry_at[key] = 0.0  # not attempted: due as soon as the breaker lets it
            return 0
        try:
            self.sink.deliver(entry.job_id, entry.report)
        except DeliveryRejected as exc:
            # The sink answered (a 4xx): it is up. A success for the breaker, which also ends
            # a half-open trial; the report alone is at fault.
            self.breaker.record_success()
            self._rejected(entry, str(exc))
            return 1
        except DeliveryFailed as exc:
            self.breaker.record_failure()
            self._failed(entry, str(exc))
            return 1
        except Exception as exc:  # a sink bug must not kill the relay; the entry stays owed
            logger.exception(
                "relay %s: sink raised delivering %s", self.group, printable(entry.job_id)
            )
            self.breaker.record_failure()
            self._failed(entry, f"{type(exc).__name__}: {exc}")
            return 1
        self.breaker.record_success()
        self._retry_at.pop(key, None)
        self.counters["delivered"] += 1
        self._ack(entry.stream, entry.id)
        return 1

    def _refused_by_check(self, entry: Entry) -> bool:
        """Asked before the breaker: a report no request can carry tells nothing about the
        sink, so it is dead-lettered without taking a half-open trial or counting a failure."""
        try:
            self.sink.check(entry.job_id, entry.report)
        except DeliveryRejected as exc:
            self._rejected(entry, str(exc))
            return True
        except Exception:  # a check that crashes decides nothing: deliver() will tell
            logger.exception(
                "relay %s: sink check raised on %s", self.group, printable(entry.job_id)
            )
        return False

    def _failed(self, entry: Entry, reason: str) -> None:
        key = (entry.stream, entry.id)
        self.counters["failed"] += 1
        self.last_error = reason
        if entry.deliveries >= self.config.max_deliveries:
            self._retry_at.pop(key, None)
            self._dead_letter(entry, reason, f"after {entry.deliveries} deliveries")
            return
        delay = full_jitter(
            entry.deliveries - 1, self.config.retry_base_s, self.config.retry_max_s, self._rand
        )
        self._retry_at[key] = self._clock() + delay

    def _rejected(self, entry: Entry, reason: str) -> None:
        """A report the sink can never take as it is: dead-lettered now, whatever its count
        (retrying would only hold a pending slot and, before, open the breaker for all)."""
        self._retry_at.pop((entry.stream, entry.id), None)
        self.counters["rejected"] += 1
        self._dead_letter(entry, reason, "at once (rejected)")

    def _dead_letter(self, entry: Entry, reason: str, when: str) -> None:
        dead = self.outbox.dead_letter(entry, self.group, reason)
        if dead in ("gone", "acked"):
            return
        self.counters["dead_lettered"] += 1
        logger.warning(
            "relay %s: job %s dead-lettered %s (%s)",
            self.group,
            printable(entry.job_id),
            when,
            printable(reason, 500),
        )

    def _ack(self, stream: str, entry_id: str) -> None:
        """Queue the ack; XACK in groups of ACK_BATCH or after ACK_MAX_DELAY_S (one round trip
        per report was most of a drain's cost). A relay kill -9'd re-sends at most that many
        delivered reports (the receiver dedupes on Idempotency-Key)."""
        if not self._unacked:
            self._unacked_since = self._clock()
        self._unacked.append((stream, entry_id))
        self._maybe_flush_acks()

    def _maybe_flush_acks(self) -> None:
        if self._unacked and (
            len(self._unacked) >= ACK_BATCH
            or self._clock() - self._unacked_since >= ACK_MAX_DELAY_S
        ):
            self._flush_acks()

    def _flush_acks(self) -> None:
        """XACK what was delivered. If Redis is away the ids stay queued (and are never
        re-sent meanwhile): a Redis restart does not make a delivered report go out twice."""
        while self._unacked:
            stream = self._unacked[0][0]
            ids = [entry_id for s, entry_id in self._unacked if s == stream]
            self.outbox.ack(stream, self.group, *ids)
            self._unacked = [(s, i) for s, i in self._unacked if s != stream]

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
        """Stop and join the thread (a pass ends within BLOCK_MS or one sink timeout)."""
        self._loop.stop(timeout_s)

    def _round(self) -> float:
        """One pass of the relay's loop; Redis errors are waited out with backoff, never fatal.
        Returns the wait before the next pass (none after a pass that did something)."""
        try:
            blocking = self.breaker.state is BreakerState.CLOSED and not self._retry_at
            done = self.run_once(self.config.block_ms if blocking else 0)
        except redis.RedisError as exc:
            self.counters["redis_errors"] += 1
            self.last_error = f"redis: {type(exc).__name__}"
            delay = full_jitter(self._redis_errors, 0.1, 2.0, self._rand) + 0.05
            self._redis_errors += 1
            logger.warning("relay %s: Redis error (%s); retry in %.2fs", self.group, exc, delay)
            return delay
        self._redis_errors = 0
        return 0.0 if done else self._idle_wait_s()

    def _flush_at_stop(self) -> None:
        try:
            self._flush_acks()
        except redis.RedisError:
            logger.warning("relay %s: %d acks lost at stop", self.group, len(self._unacked))

    def _idle_wait_s(self) -> float:
        now = self._clock()
        waits = [0.25]
        if self._retry_at:
            waits.append(min(self._retry_at.values()) - now)
        if self.breaker.state is BreakerState.OPEN:
            waits.append(self.breaker.retry_in_s())
        return max(0.01, min(waits))

    def snapshot(self) -> dict[str, Any]:
        """Counters and breaker state, for the worker record and `python -m bot.cli.relay`."""
        return {
            "group": self.group,
            "consumer": self.consumer,
            "running": self._loop.alive,
            "breaker": self.breaker.snapshot(),
            **self.counters,
            "waiting_retry": len(self._retry_at),
            "last_error": self.last_error,
        }
