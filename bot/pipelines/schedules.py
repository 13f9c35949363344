"""Schedules: an op or a pipeline submitted on a cron expression or an interval, declared next to
the ops and checked when declared. Firing them is bot/flows/beat.py's job (celery beat).

    schedule("tick", every=60, op="sum", payload={"a": 1, "b": 2})

    @schedule("nightly", cron="0 3 * * *", tz="Europe/Paris", pipeline="report")
    def nightly(slot: datetime) -> dict[str, Any]:  # the payload of the slot's run
        return {"day": slot.date().isoformat()}

A *slot* is one time the schedule is due: a cron slot (bot/pipelines/cron.py) or, for
`every=N` seconds, a multiple of N seconds since the Unix epoch (UTC; `tz` then only sets the
time zone of the slot a payload function receives). Each slot's job (or pipeline run) has the id
`sched.<name>.<slot as UTC, 2024-01-01T03:00:00Z>`, so a slot is enqueued once however many
beats fire it.

`catch_up` says what a beat that starts does with the slots that came due while no beat ran:
"run" submits the newest `max_catch_up` of them (default 1: the latest missed slot runs once,
nothing floods), "skip" submits none. A running beat submits every slot that comes due.

Checked when declared: the name, the timing (a bad cron expression, an unknown time zone), the
target (exactly one of `op` and `pipeline`), the policy, and a static payload against the
target's payload model. A target that is not registered yet is checked when discovery ends
(`ScheduleRegistry.resolve`), as pipelines are. A schedule that fails any check raises
`ScheduleDefinitionError` and never enters `SCHEDULES`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from bot.errors import PayloadRejected
from bot.ops import REGISTRY, OpRegistry, op_name_problem
from bot.pipelines.cron import Cron, CronError, zone
from bot.pipelines.registry import PIPELINES, PipelineRegistry
from bot.pipelines.schedule_spec import (
    CATCH_UP_POLICIES,
    MAX_CATCH_UP_LIMIT,
    SLOT_ID_PREFIX,
    SLOT_TIME_FORMAT,
    CatchUp,
    Interval,
    Payload,
    PayloadBuilder,
    Schedule,
    ScheduleDefinitionError,
    Timing,
    slot_id,
)

#: Re-exported: what schedules are made of lives in bot/pipelines/schedule_spec.py.
__all__ = [
    "CATCH_UP_POLICIES",
    "MAX_CATCH_UP_LIMIT",
    "SCHEDULES",
    "SLOT_ID_PREFIX",
    "SLOT_TIME_FORMAT",
    "CatchUp",
    "Interval",
    "Payload",
    "PayloadBuilder",
    "Schedule",
    "ScheduleDefinitionError",
    "ScheduleRegistry",
    "Timing",
    "schedule",
    "slot_id",
]


class ScheduleRegistry:
    """name -> Schedule, over the op and pipeline registries. One instance, `SCHEDULES`."""

    def __init__(self, ops: OpRegistry = REGISTRY, pipelines: PipelineRegistry = PIPELINES):
        self._ops = ops
        self._pipelines = pipelines
        self._checked: dict[str, Schedule] = {}
        self._pending: dict[str, Schedule] = {}

    def define(self, declared: Schedule) -> Schedule:
        """Enter a shaped schedule: checked now when its target is known and its payload is
        static, else at `resolve()`."""
        existing = self._pending.get(declared.name) or self._checked.get(declared.name)
        if existing is not None and existing.module != declared.module:
            raise ScheduleDefinitionError(
                f"schedule {declared.name!r} is already defined (in {existing.module or '?'}); "
                f"a second definition (in {declared.module or '?'}) is refused",
                declared.module,
            )
        self._checked.pop(declared.name, None)  # the same module imported again: the new one
        if self._target_known(declared) and declared.payload is not None:
            self._checked[declared.name] = self._check(declared)
        else:
            self._pending[declared.name] = declared
        return declared

    def attach(self, name: str, build: PayloadBuilder) -> None:
        """Give the schedule `name` its payload function (the decorator form)."""
        declared = self._pending.get(name) or self._checked.get(name)
        assert declared is not None, f"schedule {name!r} was never defined"
        where = f"schedule {name!r}"
        if declared.payload is not None:
            raise ScheduleDefinitionError(
                f"{where}: give a payload or decorate a function that builds it, not both",
                declared.module,
            )
        _check_builder(where, build, declared.module)
        self._checked.pop(name, None)
        self._pending[name] = replace(declared, build=build)

    def resolve(self) -> None:
        """Check every schedule left for the end of discovery; the first whose target is still
        unknown, or whose payload does not fit, raises `ScheduleDefinitionError`."""
        while self._pending:
            name, declared = next(iter(self._pending.items()))
            del self._pending[name]
            self._checked[name] = self._check(declared)

    def get(self, name: str) -> Schedule:
        if name in self._checked:
            return self._checked[name]
        known = ", ".join(sorted(self._checked)) or "none"
        raise KeyError(f"unknown schedule {name!r} (known: {known})")

    def __iter__(self) -> Iterator[Schedule]:
        return iter(sorted(self._checked.values(), key=lambda item: item.name))

    def __len__(self) -> int:
        return len(self._checked)

    def names(self) -> list[str]:
        return sorted(self._checked)

    def pending(self) -> list[str]:
        return sorted(self._pending)

    def _target_known(self, declared: Schedule) -> bool:
        if declared.target_kind == "op":
            return declared.target in self._ops
        return declared.target in self._pipelines

    def _check(self, declared: Schedule) -> Schedule:
        where = f"schedule {declared.name!r}"
        if not self._target_known(declared):
            registry = self._ops if declared.target_kind == "op" else self._pipelines
            known = ", ".join(registry.names()) or "none"
            raise ScheduleDefinitionError(
                f"{where}: {declared.target_kind} {declared.target!r} is not registered "
                f"(known: {known})",
                declared.module,
            )
        if declared.build is None:
            self._check_payload(where, declared)
        return declared

    def _check_payload(self, where: str, declared: Schedule) -> None:
        payload = dict(declared.payload or {})
        try:
            if declared.target_kind == "op":
                self._ops.get(declared.target).validate(payload)
            else:
                self._pipelines.get(declared.target).validate(payload)
        except PayloadRejected as exc:
            problem = exc.message.split(": ", 1)[-1]
            raise ScheduleDefinitionError(
                f"{where}: its payload {payload!r} does not fit {declared.target_kind} "
                f"{declared.target!r}: {problem}",
                declared.module,
            ) from None


def _check_builder(where: str, build: object, module: str) -> None:
    if not callable(build):
        raise ScheduleDefinitionError(f"{where}: @schedule decorates a function", module)
    try:
        inspect.signature(build).bind(datetime.now(UTC))
    except TypeError:
        raise ScheduleDefinitionError(
            f"{where}: its payload function {getattr(build, '__name__', build)!r} must take "
            "one argument, the slot (a datetime in the schedule's time zone)",
            module,
        ) from None
    except ValueError:  # no signature to read (a builtin): called as is
        pass


def shape(
    name: str,
    *,
    every: int | float | timedelta | None,
    cron: str | None,
    tz: str,
    op: str | None,
    pipeline: str | None,
    payload: Payload | None,
    catch_up: str,
    max_catch_up: int,
    description: str,
    module: str,
) -> Schedule:
    """A `Schedule` from `schedule()`'s arguments; `ScheduleDefinitionError` naming what is
    wrong (with the declaring module)."""
    try:
        return Schedule(
            name=_checked_name(name),
            timing=_timing(name, every, cron, tz),
            target_kind="op" if op is not None else "pipeline",
            target=_target(name, op, pipeline),
            payload=_static_payload(name, payload),
            catch_up=_policy(name, catch_up),
            max_catch_up=_bound(name, max_catch_up),
            description=description,
            module=module,
        )
    except ScheduleDefinitionError as exc:
        raise ScheduleDefinitionError(str(exc), module) from None


def _checked_name(name: object) -> str:
    problem = op_name_problem(name) if isinstance(name, str) else "it is not a string"
    if problem is not None:
        raise ScheduleDefinitionError(
            f"schedule name {name!r} is not valid (as for ops: {problem})"
        )
    assert isinstance(name, str)
    return name


def _timing(name: str, every: object, cron: str | None, tz: str) -> Interval | Cron:
    where = f"schedule {name!r}"
    if (every is None) == (cron is None):
        raise ScheduleDefinitionError(f"{where}: give exactly one of every= (seconds) and cron=")
    try:
        if cron is not None:
            return Cron.parse(cron, tz)
        return Interval(_whole_seconds(where, every), zone(tz))
    except CronError as exc:
        raise ScheduleDefinitionError(f"{where}: {exc}") from None


def _whole_seconds(where: str, every: object) -> int:
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or seconds < 1
        or seconds != int(seconds)
    ):
        raise ScheduleDefinitionError(
            f"{where}: every={every!r} must be a whole number of seconds, 1 or more"
        )
    return int(seconds)


def _target(name: str, op: str | None, pipeline: str | None) -> str:
    if (op is None) == (pipeline is None):
        raise ScheduleDefinitionError(
            f"schedule {name!r}: give exactly one target, op= or pipeline="
        )
    target = op if op is not None else pipeline
    if not isinstance(target, str) or not target:
        raise ScheduleDefinitionError(
            f"schedule {name!r}: the target must be a name, not {target!r}"
        )
    return target


def _static_payload(name: str, payload: Payload | None) -> Mapping[str, Any] | None:
    if payload is None:
        return None
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    if not isinstance(payload, Mapping):
        raise ScheduleDefinitionError(
            f"schedule {name!r}: payload must be a mapping or a pydantic model, not {payload!r}"
        )
    return dict(payload)


def _policy(name: str, catch_up: str) -> CatchUp:
    if catch_up not in CATCH_UP_POLICIES:
        raise ScheduleDefinitionError(
            f"schedule {name!r}: catch_up must be 'run' or 'skip', not {catch_up!r}"
        )
    return "run" if catch_up == "run" else "skip"


def _bound(name: str, max_catch_up: int) -> int:
    if (
        isinstance(max_catch_up, bool)
        or not isinstance(max_catch_up, int)
        or not 1 <= max_catch_up <= MAX_CATCH_UP_LIMIT
    ):
        raise ScheduleDefinitionError(
            f"schedule {name!r}: max_catch_up must be a whole number from 1 to "
            f"{MAX_CATCH_UP_LIMIT}, not {max_catch_up!r}"
        )
    return max_catch_up


SCHEDULES = ScheduleRegistry()


def schedule(
    name: str,
    *,
    every: int | float | timedelta | None = None,
    cron: str | None = None,
    tz: str = "UTC",
    op: str | None = None,
    pipeline: str | None = None,
    payload: Payload | None = None,
    catch_up: str = "run",
    max_catch_up: int = 1,
    description: str = "",
) -> Callable[[PayloadBuilder], PayloadBuilder]:
    """Declare the schedule `name`: submit `op` (or `pipeline`) every `every` seconds or on the
    cron expression `cron` in time zone `tz`, with `payload`, or with what the function it
    decorates returns for the slot. `catch_up` ("run" or "skip") and `max_catch_up` say what a
    starting beat does with the slots missed while no beat ran. Returns the decorator."""
    module = str(sys._getframe(1).f_globals.get("__name__", ""))
    declared = shape(
        name,
        every=every,
        cron=cron,
        tz=tz,
        op=op,
        pipeline=pipeline,
        payload=payload,
        catch_up=catch_up,
        max_catch_up=max_catch_up,
        description=description,
        module=module,
    )
    SCHEDULES.define(declared)

    def attach(build: PayloadBuilder) -> PayloadBuilder:
        SCHEDULES.attach(declared.name, build)
        return build

    return attach
