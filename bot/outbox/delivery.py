"""What a sink is to the relay, without any sink: the `Sink` protocol, its two delivery errors,
and the name of the circuit breaker that guards a sink.

A sink has a `name` (its consumer group on the outbox), `check(job_id, report_json)`, which
raises `DeliveryRejected` for a report no request could carry (called before the relay asks its
breaker), and `deliver(job_id, report_json)`, which returns on success and raises
`DeliveryFailed` (transient: retried with backoff, counted by the breaker) or `DeliveryRejected`
(about that one report: dead-lettered at once, not counted against the sink).

Apart from bot/outbox/sinks.py (the HTTP sink) so that the relay, and the fleet reading its
breakers, do not import an HTTP library: only a process that delivers reports needs one.
"""

from __future__ import annotations

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


#: The prefix of a sink breaker's name (`sink:http`), in the worker record and
#: `bot_breaker_state`; a sink breaker that is not closed makes the worker DEGRADED.
_SINK_BREAKER_PREFIX = "sink:"


def breaker_name(sink_name: str) -> str:
    """The name of the circuit breaker guarding the sink `sink_name`."""
    return f"{_SINK_BREAKER_PREFIX}{sink_name}"


def is_sink_breaker(name: str) -> bool:
    return name.startswith(_SINK_BREAKER_PREFIX)
