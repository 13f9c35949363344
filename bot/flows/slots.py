"""Schedule slots at run time: which slots of a schedule are due, submitting each with its
deterministic id (bot/flows/submit.py), and the ledger of the last slot each schedule fired.

The ledger is one zset, `bot:schedules:last` (schedule name -> slot, epoch seconds), moved only
forward (ZADD GT), so two beats that both believe they fire a schedule can never move it back.
A slot is recorded after it is submitted: a beat that dies in between leaves it to the next
beat, which submits the same id again and finds it known (`Submitted.enqueued` False); if the
dead beat had claimed the id but not sent its message, the id is still `queued` and is sent
again (`resend_queued`, bot/flows/submit.py).

Which slots are due (`due`): those after the ledger's slot, up to now. A beat that starts applies
the schedule's catch-up policy to them (they came due while no beat ran): "run" submits the
newest `max_catch_up`, "skip" none. A running beat submits them all (a tick that came late,
after a stall, leaves no gap), at most `MAX_CATCH_UP_LIMIT` against a clock that jumped. A
schedule the ledger has never seen starts at the current slot: it fires from the next one on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis

from bot.errors import PayloadRejected
from bot.flows.submit import Submitted, submit_op, submit_pipeline
from bot.jobs.ports import AppPort
from bot.pipelines.schedules import MAX_CATCH_UP_LIMIT, Schedule
from bot.store.keys import Keys

log = logging.getLogger(__name__)

#: Slots are whole seconds: the one before slot s is the last slot at or before s - 1 s.
_SLOT_RESOLUTION = timedelta(seconds=1)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SlotLedger:
    """The last slot each schedule fired, in Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._key = keys.schedule_slots

    def last(self, name: str) -> datetime | None:
        score = self._client.zscore(self._key, name)
        return None if score is None else _instant(float(score))

    def all(self) -> dict[str, datetime]:
        pairs: list[tuple[str | bytes, float]] = self._client.zrange(
            self._key, 0, -1, withscores=True
        )  # type: ignore[assignment]
        return {_text(name): _instant(float(score)) for name, score in pairs}

    def advance(self, name: str, slot: datetime) -> None:
        """Record `slot` as fired, unless a later slot is recorded already."""
        self._client.zadd(self._key, {name: slot.timestamp()}, gt=True)


@dataclass(frozen=True)
class Due:
    """What to do for one schedule now: `slots` to submit (oldest first), then record `mark`
    (the newest slot due) as fired; `dropped`: some due slots are left out (policy or bound)."""

    slots: tuple[datetime, ...] = ()
    mark: datetime | None = None
    dropped: bool = False


def due(schedule: Schedule, last: datetime | None, now: datetime, *, starting: bool) -> Due:
    """The slots of `schedule` due at `now`, after the recorded `last` one (see the module
    docstring); `starting`: this beat has not fired the schedule yet (catch-up applies)."""
    newest = schedule.timing.previous(now)
    if newest is None or (last is not None and newest <= last):
        return Due()
    if last is None:
        return Due(mark=newest)
    if not starting:
        limit = MAX_CATCH_UP_LIMIT
    else:
        limit = schedule.max_catch_up if schedule.catch_up == "run" else 0
    slots: list[datetime] = []
    slot: datetime | None = newest
    while slot is not None and slot > last and len(slots) < limit:
        slots.append(slot)
        slot = schedule.timing.previous(slot - _SLOT_RESOLUTION)
    return Due(tuple(reversed(slots)), newest, dropped=slot is not None and slot > last)


def fire(
    app: AppPort, schedule: Schedule, ledger: SlotLedger, now: datetime, *, starting: bool
) -> Due:
    """Submit `schedule`'s due slots and record them. A Redis or broker error propagates with
    the slot not recorded (the next tick tries it again); a slot whose payload cannot be built
    or is refused is logged and recorded, never tried again."""
    plan = due(schedule, ledger.last(schedule.name), now, starting=starting)
    if plan.dropped:
        _log_dropped(schedule, plan, starting)
    for slot in plan.slots:
        submit_slot(app, schedule, slot)
        ledger.advance(schedule.name, slot)
    if plan.mark is not None:
        ledger.advance(schedule.name, plan.mark)
    return plan


def submit_slot(app: AppPort, schedule: Schedule, slot: datetime) -> Submitted | None:
    """Submit one slot's job (or pipeline run) under its slot id; None when it cannot be."""
    slot_id = schedule.slot_id(slot)
    try:
        payload = schedule.payload_for(slot)
    except Exception:
        log.exception(
            "schedule %r: its payload function failed for %s; not run", schedule.name, slot_id
        )
        return None
    try:
        if schedule.target_kind == "op":
            submitted = submit_op(app, schedule.target, payload, job_id=slot_id, resend_queued=True)
        else:
            submitted = submit_pipeline(
                app, schedule.target, payload, run_id=slot_id, resend_queued=True
            )
    except PayloadRejected as exc:
        log.error("schedule %r: %s refused: %s; not run", schedule.name, slot_id, exc)
        return None
    if submitted.enqueued:
        log.info("schedule %r: submitted %s", schedule.name, slot_id)
    else:
        log.info("schedule %r: %s was submitted already", schedule.name, slot_id)
    return submitted


def _log_dropped(schedule: Schedule, plan: Due, starting: bool) -> None:
    if not starting:
        log.warning(
            "schedule %r: more than %d slots came due since the last tick (a clock jump?); "
            "submitting the newest",
            schedule.name,
            MAX_CATCH_UP_LIMIT,
        )
    elif schedule.catch_up == "skip":
        log.warning(
            "schedule %r: slots up to %s came due while no beat ran; skipped (catch_up='skip')",
            schedule.name,
            plan.mark,
        )
    else:
        log.warning(
            "schedule %r: more slots came due while no beat ran than max_catch_up=%d; "
            "submitting the newest %d (from %s)",
            schedule.name,
            schedule.max_catch_up,
            len(plan.slots),
            plan.slots[0] if plan.slots else plan.mark,
        )


def _instant(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
