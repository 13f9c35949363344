"""Trigger definitions: `on(...)` declares that a report with a given final status, of a given op
or pipeline, starts another op or pipeline; `TRIGGERS` holds the checked ones.

    @on("succeeded", op="sum", submit="notify")
    def notify_sum(report: Report) -> dict | None:      # None: do not fire for this report
        return {"text": f"sum = {report.result}"}

    on("failed", pipeline="report", start="cleanup", payload={"all": True})  # a static payload

A trigger is checked when it is declared, like a pipeline (bot/pipelines/registry.py): its
statuses are final statuses, its source and target op or pipeline exist, a static payload is
valid for the target, and it cannot start itself forever (a static trigger whose target is its
own source). When a name it uses is not registered yet, the check waits for the end of
discovery (`TriggerRegistry.resolve`, called by `discover_pipelines`); either way a bad trigger
is refused with a `TriggerDefinitionError` and never enters the registry.

Running triggers is not here: `bot.flows.triggers` consumes the outbox and fires them.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel

from bot.errors import PayloadRejected
from bot.ops import REGISTRY, OpRegistry
from bot.ops import TASK_PREFIX as OP_TASK_PREFIX
from bot.pipelines.registry import PIPELINES, TASK_PREFIX, PipelineRegistry
from bot.pipelines.stages import PipelineDefinitionError

#: The statuses a report can have (bot.jobs.reports.FINAL_STATES; a unit test keeps them equal:
#: this layer is below bot.jobs).
FINAL_STATUSES: tuple[str, ...] = ("succeeded", "failed", "rejected", "dead")
#: A trigger's name: job id characters (it is part of the ids of the jobs it starts).
_NAME = re.compile(r"^[A-Za-z0-9._:@-]{1,100}$")

TriggerPayload = Mapping[str, Any] | BaseModel | None
TriggerFunction = Callable[[Any], TriggerPayload]
F = TypeVar("F", bound=Callable[..., Any])


class TriggerDefinitionError(PipelineDefinitionError):
    """A trigger that cannot fire as declared (bad status, unknown op or pipeline, a static
    payload the target refuses, a duplicate name). Refused at import, or when discovery ends."""


@dataclass(frozen=True)
class Target:
    """An op or a pipeline, as a trigger's source (whose reports) or target (what it starts)."""

    kind: Literal["op", "pipeline"]
    name: str

    @property
    def report_op(self) -> str:
        """The `op` field of this op's or pipeline's reports."""
        return self.name if self.kind == "op" else TASK_PREFIX + self.name

    def label(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass(frozen=True)
class Trigger:
    """One declared trigger. `fn` (compared by its module and name, so a module imported twice
    declares the same trigger) maps a report to the target's payload; without it, `payload`."""

    name: str
    statuses: tuple[str, ...]
    source: Target
    target: Target
    fn: TriggerFunction | None = field(default=None, compare=False, repr=False)
    payload: Mapping[str, Any] | None = None
    module: str = ""
    origin: str = ""

    def matches(self, op: str, status: str) -> bool:
        """Whether a report of `op` (an op name or `pipelines.<name>`) with `status` fires it."""
        return status in self.statuses and op == self.source.report_op

    def payload_for(self, report: Any) -> TriggerPayload:
        """The target's payload for this report; None: do not fire. May raise (the function's
        own error)."""
        if self.fn is None:
            return dict(self.payload or {})
        return self.fn(report)

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for `bot triggers --json`."""
        return {
            "name": self.name,
            "on": list(self.statuses),
            "source": {"kind": self.source.kind, "name": self.source.name},
            "target": {"kind": self.target.kind, "name": self.target.name},
            "function": self.origin or None,
            "payload": dict(self.payload) if self.payload is not None else None,
            "module": self.module,
        }


class TriggerRegistry:
    """name -> Trigger, over the op and pipeline registries. One process-wide: `TRIGGERS`."""

    def __init__(self, ops: OpRegistry = REGISTRY, pipelines: PipelineRegistry = PIPELINES):
        self._ops = ops
        self._pipelines = pipelines
        self._triggers: dict[str, Trigger] = {}
        self._pending: dict[str, Trigger] = {}

    def define(self, trigger: Trigger) -> Trigger:
        """Add a trigger; checked now if what it names is registered, else at `resolve()`."""
        existing = self._pending.get(trigger.name) or self._triggers.get(trigger.name)
        if existing is not None:
            if existing == trigger:  # the same module imported again
                return existing
            raise TriggerDefinitionError(
                f"trigger {trigger.name!r} is already defined (in {existing.module or '?'}); "
                f"a second definition (in {trigger.module or '?'}) is refused",
                trigger.module,
            )
        if self._unknown(trigger):
            self._pending[trigger.name] = trigger
        else:
            self._add_checked(trigger)
        return trigger

    def resolve(self) -> None:
        """Check every trigger left for the end of discovery; the first that names an unknown
        op or pipeline, or does not fit, raises `TriggerDefinitionError`."""
        while self._pending:
            name, trigger = next(iter(self._pending.items()))
            del self._pending[name]
            unknown = self._unknown(trigger)
            if unknown:
                raise TriggerDefinitionError(
                    f"trigger {name!r}: {unknown[0].label()} is not registered"
                    f" (known: {self._known(unknown[0].kind)})",
                    trigger.module,
                )
            self._add_checked(trigger)

    def pending(self) -> list[str]:
        return sorted(self._pending)

    def matching(self, op: str, status: str) -> list[Trigger]:
        """The triggers a report of `op` with `status` fires, by name."""
        return [t for t in self if t.matches(op, status)]

    def get(self, name: str) -> Trigger:
        return self._triggers[name]

    def __contains__(self, name: object) -> bool:
        return name in self._triggers

    def __iter__(self) -> Iterator[Trigger]:
        return iter(sorted(self._triggers.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._triggers)

    def names(self) -> list[str]:
        return sorted(self._triggers)

    def remove(self, name: str) -> None:
        """Forget a trigger (tests declare their own)."""
        self._triggers.pop(name, None)
        self._pending.pop(name, None)

    def _known(self, kind: str) -> str:
        names = self._ops.names() if kind == "op" else self._pipelines.names()
        return ", ".join(names) or "none"

    def _unknown(self, trigger: Trigger) -> list[Target]:
        return [t for t in (trigger.source, trigger.target) if not self._registered(t)]

    def _registered(self, target: Target) -> bool:
        if target.kind == "op":
            return target.name in self._ops
        return target.name in self._pipelines

    def _add_checked(self, trigger: Trigger) -> None:
        if trigger.payload is not None:
            try:
                self._validate(trigger.target, trigger.payload)
            except PayloadRejected as exc:
                raise TriggerDefinitionError(
                    f"trigger {trigger.name!r}: its payload is not valid for "
                    f"{trigger.target.label()}: {exc.message}",
                    trigger.module,
                ) from None
        self._triggers[trigger.name] = trigger

    def _validate(self, target: Target, payload: Mapping[str, Any]) -> None:
        if target.kind == "op":
            self._ops.get(target.name).validate(payload)
        else:
            self._pipelines.get(target.name).validate(payload)


TRIGGERS = TriggerRegistry()


@overload
def on(
    status: str | tuple[str, ...],
    *,
    op: str | None = ...,
    pipeline: str | None = ...,
    submit: str | None = ...,
    start: str | None = ...,
    payload: Mapping[str, Any],
    name: str | None = ...,
) -> Trigger: ...


@overload
def on(
    status: str | tuple[str, ...],
    *,
    op: str | None = ...,
    pipeline: str | None = ...,
    submit: str | None = ...,
    start: str | None = ...,
    payload: None = ...,
    name: str | None = ...,
) -> Callable[[F], F]: ...


def on(
    status: str | tuple[str, ...],
    *,
    op: str | None = None,
    pipeline: str | None = None,
    submit: str | None = None,
    start: str | None = None,
    payload: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Trigger | Callable[[F], F]:
    """When a report of op `op` (or pipeline `pipeline`) ends with `status` (one final status
    or a tuple of them), submit op `submit` (or start pipeline `start`).

    As a decorator over `fn(report) -> payload | None` (the name defaults to
    `module.function`); or, with `payload=`, a trigger that always sends that payload (the
    name defaults to `module.<source>.<status>.<target>`)."""
    module = str(sys._getframe(1).f_globals.get("__name__", ""))
    statuses = _statuses(status, module)
    source = _one_of("whose reports fire it", ("op", op), ("pipeline", pipeline), module)
    target = _one_of("what it starts", ("submit", submit), ("start", start), module)
    if payload is not None:
        default = f"{module}.{source.name}.{'-'.join(statuses)}.{target.name}"
        trigger = _declare(name or default, statuses, source, target, None, payload, module)
        return TRIGGERS.define(trigger)

    def decorate(fn: F) -> F:
        _check_function(fn, module)
        default = f"{fn.__module__}.{fn.__qualname__}".replace(".<locals>", "")
        TRIGGERS.define(_declare(name or default, statuses, source, target, fn, None, module))
        return fn

    return decorate


def _declare(
    name: str,
    statuses: tuple[str, ...],
    source: Target,
    target: Target,
    fn: TriggerFunction | None,
    payload: Mapping[str, Any] | None,
    module: str,
) -> Trigger:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TriggerDefinitionError(
            f"trigger name {name!r} must match {_NAME.pattern} (it is part of job ids; "
            "give one with name=)",
            module,
        )
    if fn is None and source == target:
        raise TriggerDefinitionError(
            f"trigger {name!r} starts {target.label()} on its own reports with a fixed "
            "payload: it would never stop (use a function that returns None to end the chain)",
            module,
        )
    origin = f"{fn.__module__}.{fn.__qualname__}" if fn is not None else ""
    frozen_payload = dict(payload) if payload is not None else None
    return Trigger(name, statuses, source, target, fn, frozen_payload, module, origin)


def _statuses(status: str | tuple[str, ...], module: str) -> tuple[str, ...]:
    statuses = (status,) if isinstance(status, str) else tuple(status)
    bad = [s for s in statuses if s not in FINAL_STATUSES]
    if not statuses or bad:
        raise TriggerDefinitionError(
            f"trigger status {status!r}: each must be one of {', '.join(FINAL_STATUSES)}",
            module,
        )
    return tuple(dict.fromkeys(statuses))


def _one_of(
    what: str, as_op: tuple[str, str | None], as_pipeline: tuple[str, str | None], module: str
) -> Target:
    """The op (first keyword) or pipeline (second keyword) named; exactly one must be."""
    (op_kw, op_name), (pipeline_kw, pipeline_name) = as_op, as_pipeline
    given = [value for value in (op_name, pipeline_name) if value is not None]
    if len(given) != 1 or not isinstance(given[0], str) or not given[0]:
        raise TriggerDefinitionError(
            f"a trigger names {what} with exactly one of {op_kw}= (an op) and {pipeline_kw}= "
            f"(a pipeline); got {op_kw}={op_name!r}, {pipeline_kw}={pipeline_name!r}",
            module,
        )
    if op_name is not None:
        return Target("op", op_name.removeprefix(OP_TASK_PREFIX))
    return Target("pipeline", given[0].removeprefix(TASK_PREFIX))


def _check_function(fn: Any, module: str) -> None:
    if not callable(fn):
        raise TriggerDefinitionError(f"@on(...) decorates a function, not {fn!r}", module)
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        raise TriggerDefinitionError(
            f"trigger function {getattr(fn, '__qualname__', fn)!r} must take one argument "
            "(the report)",
            module,
        ) from None
    except ValueError:  # no signature to read (a builtin): called as it is
        pass
