"""The trigger consumer: fires the triggers declared with `bot.on` (bot/pipelines/triggers.py)
when their reports arrive on `bot:outbox`, the event bus.

It is an outbox relay (bot/outbox/relay.py) whose sink is `TriggerSink`: consumer group
`triggers` on `bot:outbox` (and on its replay stream `bot:outbox:replay:triggers`), one consumer
per worker (its instance id). The group is created at the stream's end the first time, so the
history retained before triggers were first switched on fires nothing. From the relay it gets:
at-least-once reading, XAUTOCLAIM of the entries a dead consumer held once they are idle past
the claim bound, retries with backoff, dead letters, `bot outbox` showing the group, and a
trimming that never drops an entry the group has not acked.

**One start per trigger and report.** Each matching trigger submits through bot.flows.submit
with an id derived from its name and the report's job id (`trigger_job_id`); the entry is
XACKed after. bot.flows.submit enqueues an id once, so a report delivered again (its consumer
died before XACK, a retry, `bot outbox replay`) submits the same ids and starts nothing new.

**Failure policy, per report.**
- A Redis or broker error (while submitting, or raised by a trigger function): transient. The
  entry stays pending and is retried with backoff; it counts against the consumer's breaker
  `sink:triggers` (open: the worker shows DEGRADED and the consumer waits); it is dead-lettered
  after BOT_OUTBOX_MAX_DELIVERIES deliveries.
- A trigger function that raises anything else or returns something that is not a payload, or
  a payload the target refuses (field errors, unknown op or pipeline, too large): the same
  report would fail the same way again, so it is logged, counted and dead-lettered at once
  (`bot:outbox:dead`, group `triggers`, the reason naming each trigger that failed); the reports
  behind it go on. Once fixed, `bot outbox replay ID` fires that report's triggers again; those
  that had fired start nothing new (their ids are taken).
- An entry that is not a report: dead-lettered at once.
A trigger function must be a function of the report alone: it may be called again for the same
report (a redelivery, a retry), and only its first successful submission counts.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import redis
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ValidationError

from bot.errors import PayloadRejected
from bot.flows.run_record import MAX_RUN_ID_LENGTH
from bot.flows.submit import Submitted, submit_op, submit_pipeline
from bot.jobs.envelope import job_id_problem, printable
from bot.jobs.ports import AppPort
from bot.jobs.reports import Report
from bot.outbox.delivery import DeliveryFailed, DeliveryRejected
from bot.outbox.relay import Relay
from bot.outbox.relay_config import RelayConfig
from bot.outbox.stream import Outbox
from bot.pipelines.triggers import TRIGGERS, Target, Trigger, TriggerRegistry

logger = logging.getLogger(__name__)

#: The consumer group of the trigger consumers on `bot:outbox`.
TRIGGER_GROUP = "triggers"
#: Seconds one report's triggers may take (functions and submissions); with a lease TTL, the
#: default idle time after which another consumer claims an entry.
TRIGGER_TIMEOUT_S = 10.0
#: The longest id of a job a trigger submits (bot/jobs/envelope.py's JOB_ID_PATTERN).
MAX_JOB_ID_LENGTH = 200
#: Errors of Redis or the broker: the report is retried, not dead-lettered.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    OperationalError,
    ConnectionError,
    TimeoutError,
)


class TriggerFailed(Exception):
    """One trigger cannot fire for this report, and would not on a retry either."""


def trigger_job_id(trigger_name: str, job_id: str, limit: int = MAX_JOB_ID_LENGTH) -> str:
    """The id of what `trigger_name` starts for the report of `job_id`: `trg.<trigger>.<job id>`,
    or, when that is longer than `limit` or not a valid id, `trgh.<sha256 of both>.<trigger>`
    cut to `limit` (a distinct prefix: the two forms never meet). The same for every delivery."""
    plain = f"trg.{trigger_name}.{job_id}"
    if len(plain) <= limit and job_id_problem(plain) is None:
        return plain
    digest = hashlib.sha256(f"{trigger_name}\n{job_id}".encode()).hexdigest()[:40]
    return f"trgh.{digest}.{trigger_name}"[:limit]


def submit_target(
    app: AppPort, target: Target, payload: Mapping[str, Any] | BaseModel, trigger_id: str
) -> Submitted:
    """Submit op `target` (job id `trigger_id`) or start pipeline `target` (run id)."""
    if target.kind == "op":
        return submit_op(app, target.name, payload, job_id=trigger_id, resend_queued=True)
    return submit_pipeline(app, target.name, payload, run_id=trigger_id, resend_queued=True)


class TriggerSink:
    """The trigger consumer's sink: `deliver` fires every trigger a report matches.

    Raises `DeliveryFailed` (transient: retried) or `DeliveryRejected` (dead-lettered at once),
    as bot/outbox/delivery.py says; the module docstring has the policy."""

    name = TRIGGER_GROUP

    def __init__(
        self,
        app: AppPort,
        registry: TriggerRegistry = TRIGGERS,
        timeout_s: float = TRIGGER_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.registry = registry
        #: The relay reads it: a consumer holding an entry this long may be dead.
        self.timeout_s = timeout_s
        self.counters = dict.fromkeys(("fired", "already_fired", "not_fired", "trigger_errors"), 0)
        self._last: tuple[str, Report] | None = None

    def check(self, job_id: str, report_json: str) -> None:
        self._report(report_json)

    def deliver(self, job_id: str, report_json: str) -> None:
        report = self._report(report_json)
        problems: list[str] = []
        transient: str | None = None
        for trigger in self.registry.matching(report.op, report.status):
            try:
                self.fire(trigger, report)
            except TRANSIENT_ERRORS as exc:
                transient = f"trigger {trigger.name}: {type(exc).__name__}: {exc}"
            except TriggerFailed as exc:
                self.counters["trigger_errors"] += 1
                problems.append(str(exc))
        if transient is not None:
            raise DeliveryFailed(transient)
        if problems:
            raise DeliveryRejected("; ".join(problems))

    def fire(self, trigger: Trigger, report: Report) -> Submitted | None:
        """Submit what `trigger` starts for `report`; None when its function said not to."""
        payload = self._payload(trigger, report)
        if payload is None:
            self.counters["not_fired"] += 1
            return None
        limit = MAX_JOB_ID_LENGTH if trigger.target.kind == "op" else MAX_RUN_ID_LENGTH
        trigger_id = trigger_job_id(trigger.name, report.job_id, limit)
        try:
            submitted = submit_target(self.app, trigger.target, payload, trigger_id)
        except PayloadRejected as exc:
            raise TriggerFailed(
                f"trigger {trigger.name}: {trigger.target.label()} refused its payload: "
                f"{exc.message}"
            ) from None
        self.counters["fired" if submitted.enqueued else "already_fired"] += 1
        logger.info(
            "trigger %s: report of %s (%s) %s %s as %s",
            trigger.name,
            printable(report.job_id),
            report.status,
            "started" if submitted.enqueued else "had already started",
            trigger.target.label(),
            printable(submitted.id),
        )
        return submitted

    def close(self) -> None:
        pass

    def _payload(self, trigger: Trigger, report: Report) -> Mapping[str, Any] | BaseModel | None:
        try:
            payload = trigger.payload_for(report)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            logger.exception(
                "trigger %s raised on the report of %s", trigger.name, printable(report.job_id)
            )
            raise TriggerFailed(
                f"trigger {trigger.name}: its function raised {type(exc).__name__}: {exc}"
            ) from None
        if payload is not None and not isinstance(payload, Mapping | BaseModel):
            raise TriggerFailed(
                f"trigger {trigger.name}: its function returned {type(payload).__name__}, "
                "not a payload (a dict, a pydantic model, or None not to fire)"
            )
        return payload

    def _report(self, report_json: str) -> Report:
        """The entry's report, parsed once for check() and deliver()."""
        if self._last is not None and self._last[0] == report_json:
            return self._last[1]
        try:
            report = Report.model_validate_json(report_json)
        except ValidationError as exc:
            raise DeliveryRejected(f"not a report: {exc.errors()[0]['msg']}") from None
        self._last = (report_json, report)
        return report

    def snapshot(self) -> dict[str, Any]:
        return {"triggers": len(self.registry), **self.counters}


def ensure_trigger_group(outbox: Outbox) -> bool:
    """Create the group at the outbox's end (reports that arrive from now on) unless it
    exists; True when it was created now."""
    return outbox.ensure_group(TRIGGER_GROUP, outbox.stream, start_id="$")


class TriggerConsumer(Relay):
    """The relay of the `triggers` group. Before its first pass it creates the group at the
    outbox's end (in its thread, so a Redis error there is retried like any other); a group
    lost later with Redis's data (NOGROUP) is created again from the start of the new stream,
    as the relay does, so no report written since is missed."""

    _group_created = False

    def run_once(self, block_ms: int = 0) -> int:
        if not self._group_created:
            ensure_trigger_group(self.outbox)
            self._group_created = True
        return super().run_once(block_ms)


def trigger_consumer(
    app: AppPort, consumer: str, registry: TriggerRegistry = TRIGGERS, **overrides: Any
) -> TriggerConsumer:
    """The trigger consumer named `consumer` (a worker's instance id); start it with
    `.start()`. `overrides` are RelayConfig fields (tests)."""
    settings = app.settings
    sink = TriggerSink(app, registry)
    if settings.trigger_claim_idle is not None:
        overrides.setdefault("claim_idle_ms", int(settings.trigger_claim_idle * 1000))
    config = RelayConfig.from_settings(settings, sink.timeout_s, **overrides)
    return TriggerConsumer(app.redis(), app.keys, sink, consumer, config)
