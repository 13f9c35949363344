"""Deliveries for the relay (bot/outbox/relay.py): how entries become sink calls, and what each
call's outcome does to them.

`Deliveries.deliver(entries)` asks the sink's `check` about each entry (a report no request can
carry is dead-lettered at once, the breaker not asked), then sends them, one per call or in
batches of up to `report_batch` (BOT_REPORT_BATCH), each call through the relay's breaker, into
the window of calls in flight (bot/outbox/window.py, up to `concurrency`:
BOT_REPORT_CONCURRENCY). When a call has returned, the window hands its outcome back to the
relay's thread, and `_settle` decides, entry by entry:

- delivered (2xx; for a batch, what its answer accepted): queued for XACK (bot/outbox/acks.py);
- failed (`DeliveryFailed`, a sink bug, or not accepted in a batch answer): stays pending, due
  again after its backoff (full jitter); dead-lettered once its delivery count reaches
  `max_deliveries`;
- rejected (`DeliveryRejected`, or listed as rejected in a batch answer): dead-lettered at once.
  A batch rejected as a whole is not: its entries go again alone (`solo`), so that only the bad
  one is.

The breaker counts one success or failure per call: a 2xx or a 4xx answer says the sink is up.
All the state here is the relay thread's: only the sink call runs in the window's threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial

from bot.base.backoff import full_jitter
from bot.base.breaker import CircuitBreaker
from bot.jobs.envelope import printable
from bot.outbox.acks import AckQueue
from bot.outbox.delivery import BatchAnswer, BatchSink, DeliveryFailed, DeliveryRejected, Sink
from bot.outbox.relay_config import RelayConfig
from bot.outbox.stream import Entry, Outbox
from bot.outbox.window import DeliveryWindow

logger = logging.getLogger("bot.outbox.relay")

#: The reason an entry a batch answer did not accept is retried with.
NOT_ACCEPTED = "not accepted in the sink's batch answer"

Key = tuple[str, str]  # (stream, entry id)
Unit = list[Entry]  # what one sink call delivers: one entry, or a batch


def _key(entry: Entry) -> Key:
    return entry.stream, entry.id


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Deliveries:
    """The relay's entries between being read and being acked or dead-lettered."""

    def __init__(
        self,
        outbox: Outbox,
        sink: Sink,
        config: RelayConfig,
        breaker: CircuitBreaker,
        counters: dict[str, int],
        *,
        clock: Callable[[], float],
        rand: Callable[[], float],
        before_each: Callable[[], None] = lambda: None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        if config.report_batch and not hasattr(sink, "deliver_batch"):
            raise ValueError(f"sink {sink.name!r} takes no batches (BOT_REPORT_BATCH)")
        self.outbox = outbox
        self.sink = sink
        self.group = sink.name
        self.config = config
        self.breaker = breaker
        self.counters = counters
        self.last_error: str | None = None
        self._clock = clock
        self._rand = rand
        self._before_each = before_each  # the relay touches what it holds, when due
        self._stopping = stopping  # no new call once the relay is asked to stop
        #: When each failed entry is due again (0: as soon as the breaker lets it).
        self.retry_at: dict[Key, float] = {}
        self.acks = AckQueue(outbox, self.group, clock)
        self.window: DeliveryWindow[Unit] = DeliveryWindow(
            config.concurrency, self._settle, f"relay-{self.group}"
        )
        self._solo: set[Key] = set()  # in a batch the sink rejected whole: sent alone now

    def holds(self, stream: str) -> Callable[[str], bool]:
        """Whether an entry id of `stream` is in flight or delivered and not yet acked (either
        way: not to be sent again now)."""
        acked_soon = self.acks.holds(stream)
        return lambda entry_id: entry_id in acked_soon or self.window.holds((stream, entry_id))

    def is_waiting(self, stream: str, entry_id: str) -> bool:
        """Whether a failed entry's backoff is not over yet."""
        return self.retry_at.get((stream, entry_id), 0.0) > self._clock()

    def forget_except(self, stream: str, mine: set[str]) -> None:
        """Drop what is kept about `stream`'s entries no longer pending here (another relay
        claimed them, or they were deleted)."""
        for key in [k for k in self.retry_at if k[0] == stream and k[1] not in mine]:
            del self.retry_at[key]
        self._solo = {k for k in self._solo if k[0] != stream or k[1] in mine}

    def stop(self, timeout_s: float) -> int:
        """Settle what is in flight (up to `timeout_s`), flush the acks, end the threads; how
        many calls were still in flight. Redis errors are the caller's."""
        try:
            left = self.window.drain(timeout_s)
            self.acks.flush()
        finally:
            self.window.close()
        return left

    def deliver(self, entries: Sequence[Entry]) -> int:
        """Hand `entries` to the window, one per call or in batches; how many were attempted
        (a report refused by the sink's check counts; one the breaker held back does not)."""
        if not self.config.report_batch:
            return sum(1 if self._refused(entry) else self._submit([entry]) for entry in entries)
        ready = [entry for entry in entries if not self._refused(entry)]
        return len(entries) - len(ready) + sum(self._submit(unit) for unit in self._units(ready))

    def _units(self, entries: list[Entry]) -> list[Unit]:
        """Batches of up to `report_batch` entries; one of a batch refused whole goes alone."""
        solo = [[entry] for entry in entries if _key(entry) in self._solo]
        rest = [entry for entry in entries if _key(entry) not in self._solo]
        size = self.config.report_batch
        return solo + [rest[i : i + size] for i in range(0, len(rest), size)]

    def _refused(self, entry: Entry) -> bool:
        """Refused by the sink's check, before the breaker is asked: a report no request can
        carry tells nothing about the sink, so it is dead-lettered without taking a half-open
        trial or counting a failure. Counts as attempted."""
        self._before_each()
        self.acks.maybe_flush()  # a slow sink must not keep earlier deliveries unacked
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

    def _submit(self, unit: Unit) -> int:
        """Send `unit` through the breaker; how many entries were attempted (0: held back, or
        the relay is stopping: what it read and did not send stays pending, for the next)."""
        if self._stopping():
            return 0
        if not self.breaker.allow():
            for entry in unit:  # not attempted: due as soon as the breaker lets it
                self.retry_at[_key(entry)] = 0.0
            return 0
        self.window.submit(unit, [_key(entry) for entry in unit], partial(self._call, unit))
        return len(unit)

    def _call(self, unit: Unit) -> BatchAnswer | None:
        """The sink call for `unit`; runs in a thread of the window (touches only the sink)."""
        if self.config.report_batch:
            sink: BatchSink = self.sink  # type: ignore[assignment]
            return sink.deliver_batch([(entry.job_id, entry.report) for entry in unit])
        self.sink.deliver(unit[0].job_id, unit[0].report)
        return None

    def _settle(self, unit: Unit, answer: BatchAnswer | None, error: BaseException | None) -> None:
        """What one sink call came to, in the relay's thread, once the call has returned."""
        if error is None:
            # The sink answered 2xx: it is up. Each entry as the answer says (all: accepted).
            self.breaker.record_success()
            self._settle_accepted(unit, answer or BatchAnswer())
        elif isinstance(error, DeliveryRejected):
            # The sink answered (a 4xx): it is up. A success for the breaker, which also ends
            # a half-open trial; the report (or one report of the batch) is at fault.
            self.breaker.record_success()
            self._settle_rejected(unit, str(error))
        else:
            if not isinstance(error, DeliveryFailed):  # a sink bug must not kill the relay
                logger.error(
                    "relay %s: sink raised delivering %s",
                    self.group,
                    printable(unit[0].job_id),
                    exc_info=error,
                )
            self.breaker.record_failure()
            reason = str(error) if isinstance(error, DeliveryFailed) else _describe(error)
            for entry in unit:
                self._failed(entry, reason)

    def _settle_accepted(self, unit: Unit, answer: BatchAnswer) -> None:
        for entry in unit:
            verdict = answer.verdict(entry.job_id)
            if verdict == "accepted":
                self._delivered(entry)
            elif verdict == "rejected":
                self._rejected(entry, answer.rejected[entry.job_id])
            else:
                self._failed(entry, NOT_ACCEPTED)

    def _settle_rejected(self, unit: Unit, reason: str) -> None:
        if len(unit) == 1:
            self._rejected(unit[0], reason)
            return
        logger.warning(
            "relay %s: a batch of %d refused whole (%s); sending each alone",
            self.group,
            len(unit),
            printable(reason, 200),
        )
        for entry in unit:  # which report is at fault? Each goes alone, now
            self._solo.add(_key(entry))
            self.retry_at[_key(entry)] = 0.0

    def _delivered(self, entry: Entry) -> None:
        key = _key(entry)
        self.retry_at.pop(key, None)
        self._solo.discard(key)
        self.counters["delivered"] += 1
        self.acks.add(entry.stream, entry.id)

    def _failed(self, entry: Entry, reason: str) -> None:
        key = _key(entry)
        self.counters["failed"] += 1
        self.last_error = reason
        if entry.deliveries >= self.config.max_deliveries:
            self.retry_at.pop(key, None)
            self._dead_letter(entry, reason, f"after {entry.deliveries} deliveries")
            return
        delay = full_jitter(
            entry.deliveries - 1, self.config.retry_base_s, self.config.retry_max_s, self._rand
        )
        self.retry_at[key] = self._clock() + delay

    def _rejected(self, entry: Entry, reason: str) -> None:
        """A report the sink can never take as it is: dead-lettered now, whatever its count
        (retrying would only hold a pending slot and, before, open the breaker for all)."""
        self.retry_at.pop(_key(entry), None)
        self.counters["rejected"] += 1
        self._dead_letter(entry, reason, "at once (rejected)")

    def _dead_letter(self, entry: Entry, reason: str, when: str) -> None:
        self._solo.discard(_key(entry))
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
