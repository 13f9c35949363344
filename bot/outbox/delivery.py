"""What a sink is to the relay, without any sink: the `Sink` protocol, its two delivery errors,
and the name of the circuit breaker that guards a sink.

A sink has a `name` (its consumer group on the outbox), `check(job_id, report_json)`, which
raises `DeliveryRejected` for a report no request could carry (called before the relay asks its
breaker), and `deliver(job_id, report_json)`, which returns on success and raises
`DeliveryFailed` (transient: retried with backoff, counted by the breaker) or `DeliveryRejected`
(about that one report: dead-lettered at once, not counted against the sink).

A sink that takes several reports in one request (`BatchSink`, BOT_REPORT_BATCH) also has
`deliver_batch(items)`: it returns a `BatchAnswer` saying which of the reports it accepted and
which it refused for good (the others are retried), or raises as `deliver` does about the
request as a whole.

Apart from bot/outbox/sinks.py (the HTTP sink) so that the relay, and the fleet reading its
breakers, do not import an HTTP library: only a process that delivers reports needs one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class DeliveryFailed(Exception):
    """A failed attempt; the entry stays pending and is retried with backoff."""


class DeliveryRejected(Exception):
    """This report can never be delivered as it is (it cannot be sent as a valid request, or
    the receiver refused it with a 4xx): dead-lettered at once; says nothing about the sink."""


class Sink(Protocol):
    name: str

    def check(self, job_id: str, report_json: str) -> None: ...

    def deliver(self, job_id: str, report_json: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BatchAnswer:
    """What a sink took of one batch: `accepted` job ids (None: all of them), and `rejected`
    job ids with the sink's reason (dead-lettered at once). Any other report of the batch was
    not taken this time: it stays pending and is retried with backoff."""

    accepted: frozenset[str] | None = None
    rejected: dict[str, str] = field(default_factory=dict)

    def verdict(self, job_id: str) -> str:
        """'accepted', 'rejected' or 'retry' for one report of the batch (rejected wins)."""
        if job_id in self.rejected:
            return "rejected"
        if self.accepted is None or job_id in self.accepted:
            return "accepted"
        return "retry"


class BatchSink(Sink, Protocol):
    def deliver_batch(self, items: Sequence[tuple[str, str]]) -> BatchAnswer: ...


#: The prefix of a sink breaker's name (`sink:http`), in the worker record and
#: `bot_breaker_state`; a sink breaker that is not closed makes the worker DEGRADED.
_SINK_BREAKER_PREFIX = "sink:"


def breaker_name(sink_name: str) -> str:
    """The name of the circuit breaker guarding the sink `sink_name`."""
    return f"{_SINK_BREAKER_PREFIX}{sink_name}"


def is_sink_breaker(name: str) -> bool:
    return name.startswith(_SINK_BREAKER_PREFIX)
