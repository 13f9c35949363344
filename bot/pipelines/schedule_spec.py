"""What a schedule is, once declared: `Schedule` (its timing, target, payload and catch-up
policy), `Interval` and the `Timing` protocol (cron timings are bot/pipelines/cron.py's `Cron`),
the slot id `sched.<name>.<slot in UTC>`, and `ScheduleDefinitionError`.

bot/pipelines/schedules.py declares and checks schedules (`schedule()`, `SCHEDULES`);
bot/flows/slots.py fires their slots.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from bot.errors import BotError
from bot.pipelines.cron import Cron

CatchUp = Literal["run", "skip"]
CATCH_UP_POLICIES: tuple[str, ...] = ("run", "skip")
#: The most missed slots one schedule may catch up on when a beat starts.
MAX_CATCH_UP_LIMIT = 1000
#: The prefix of every slot's job id (or pipeline run id).
SLOT_ID_PREFIX = "sched."
#: A slot in a job id: its UTC time to the second.
SLOT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

Payload = Mapping[str, Any] | BaseModel
PayloadBuilder = Callable[[datetime], Payload]


class ScheduleDefinitionError(BotError):
    """A schedule that cannot run as declared. `module` is the module that declared it."""

    def __init__(self, message: str, module: str = "") -> None:
        super().__init__(message)
        self.module = module


class Timing(Protocol):
    """When a schedule's slots are: aware UTC datetimes, None when there is no such slot."""

    tz: tzinfo

    def previous(self, at: datetime) -> datetime | None: ...

    def following(self, after: datetime) -> datetime | None: ...


@dataclass(frozen=True)
class Interval:
    """Every `seconds` seconds, on the multiples of `seconds` since the Unix epoch."""

    seconds: int
    tz: tzinfo = UTC

    def previous(self, at: datetime) -> datetime:
        epoch = int(at.timestamp()) // self.seconds * self.seconds
        return datetime.fromtimestamp(epoch, UTC)

    def following(self, after: datetime) -> datetime:
        return self.previous(after) + timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class Schedule:
    """A schedule as declared and shaped: its timing, target and policy. `build` (a payload
    function, when used as a decorator) is left out of comparisons."""

    name: str
    timing: Interval | Cron
    target_kind: Literal["op", "pipeline"]
    target: str
    payload: Mapping[str, Any] | None = None
    catch_up: CatchUp = "run"
    max_catch_up: int = 1
    description: str = ""
    module: str = ""
    build: PayloadBuilder | None = field(default=None, compare=False)

    @property
    def tz_name(self) -> str:
        return str(self.timing.tz)

    def spec_label(self) -> str:
        """`every 60s` or `cron '0 3 * * *'`, with the time zone when it is not UTC."""
        if isinstance(self.timing, Interval):
            text = f"every {self.timing.seconds}s"
        else:
            text = f"cron {self.timing.expression!r}"
        return text if self.tz_name == "UTC" else f"{text} {self.tz_name}"

    def catch_up_label(self) -> str:
        return "skip" if self.catch_up == "skip" else f"run (newest {self.max_catch_up})"

    def slot_id(self, slot: datetime) -> str:
        return slot_id(self.name, slot)

    def payload_for(self, slot: datetime) -> Payload:
        """The payload of `slot`'s run: the static payload, or the function's (given the slot in
        the schedule's time zone)."""
        if self.build is not None:
            return self.build(slot.astimezone(self.timing.tz))
        return dict(self.payload or {})

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the timing, target and policy (no run-time state)."""
        timing: dict[str, Any] = (
            {"every": self.timing.seconds}
            if isinstance(self.timing, Interval)
            else {"cron": self.timing.expression}
        )
        return {
            **timing,
            "tz": self.tz_name,
            self.target_kind: self.target,
            "payload": "built per slot" if self.build is not None else dict(self.payload or {}),
            "catch_up": self.catch_up,
            "max_catch_up": self.max_catch_up,
            "description": self.description,
            "module": self.module,
        }


def slot_id(name: str, slot: datetime) -> str:
    """The job (or run) id of a schedule's slot: `sched.<name>.<UTC time>`."""
    return f"{SLOT_ID_PREFIX}{name}.{slot.astimezone(UTC).strftime(SLOT_TIME_FORMAT)}"
