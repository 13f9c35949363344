"""The pipeline registry: `pipeline()` declares a named pipeline, `PIPELINES` holds the checked
ones (name -> `PipelineSpec`), as `bot.ops.REGISTRY` holds the ops.

A pipeline named `report` is the Celery task `pipelines.report` (`PipelineSpec.task_name`);
each of its stages runs as its op's own task (`ops.<op>`).

When a pipeline is checked: at its `pipeline(...)` call when every op it names is registered
(ops defined above it in its module, or in a module imported before it); otherwise when
discovery ends (`PipelineRegistry.resolve`, called by `discover_pipelines`), so a pipeline may
name an op of a module imported after its own: another module of `tasks/`, a module of
`BOT_OPS_MODULES`, an entry point. Either way a pipeline that does not fit is refused with a
`PipelineDefinitionError` and never enters the registry.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.errors import PayloadRejected, UnknownPipeline
from bot.ops import REGISTRY, OpRegistry, OpSpec, op_name_problem
from bot.pipelines.contract import check as check_stages
from bot.pipelines.stages import (
    FAILURE_POLICIES,
    NO_DEFAULT,
    Parallel,
    PipelineDefinitionError,
    Stage,
    StageLike,
    members,
    stage_label,
)

TASK_PREFIX = "pipelines."


@dataclass(frozen=True)
class Pipeline:
    """A pipeline as declared: its name, stages, description and the module declaring it."""

    name: str
    stages: tuple[Stage | Parallel, ...]
    description: str = ""
    module: str = ""

    @property
    def task_name(self) -> str:
        return TASK_PREFIX + self.name


@dataclass(frozen=True)
class PipelineSpec:
    """A checked pipeline: its stages fit (bot/pipelines/contract.py).

    `stages` are as declared, with op names as registered and each "continue" default as the
    JSON value of its op's return type; `ops` holds the `OpSpec` of every op they name;
    `input_schema` is the JSON Schema of the pipeline's payload (the first stage's payload
    model; `allOf` of them for a parallel first stage), `output_schema` that of its result;
    `unchecked` says what was accepted without a type check.
    """

    declared: Pipeline
    stages: tuple[Stage | Parallel, ...]
    ops: Mapping[str, OpSpec] = field(compare=False)
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    unchecked: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.declared.name

    @property
    def task_name(self) -> str:
        return self.declared.task_name

    @property
    def description(self) -> str:
        return self.declared.description

    def validate(self, payload: Mapping[str, Any]) -> None:
        """`PayloadRejected` (field errors) unless `payload` is valid for every op of the first
        stage: what a submitter checks before anything is enqueued."""
        for member in members(self.stages[0]):
            try:
                self.ops[member.op].validate(payload)
            except PayloadRejected as exc:
                raise PayloadRejected(
                    f"invalid payload for pipeline {self.name!r} (stage 1, op {member.op!r}): "
                    + exc.message.split(": ", 1)[-1],
                    exc.errors,
                ) from None

    def describe(self) -> dict[str, Any]:
        """JSON-ready: task, description, module, stages, input and output schemas, unchecked."""
        return {
            "task": self.task_name,
            "description": self.description,
            "module": self.declared.module,
            "stages": [item.describe() for item in self.stages],
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "unchecked": list(self.unchecked),
        }


class PipelineRegistry:
    """name -> PipelineSpec, over one op registry. One process-wide instance, `PIPELINES`."""

    def __init__(self, ops: OpRegistry = REGISTRY) -> None:
        self._ops = ops
        self._specs: dict[str, PipelineSpec] = {}
        self._pending: dict[str, Pipeline] = {}

    def define(
        self, name: str, *stages: StageLike, description: str = "", module: str = ""
    ) -> Pipeline:
        """Declare a pipeline; check it now if its ops are registered, else at `resolve()`."""
        try:
            return self._define(Pipeline(name, _shape(name, stages), description, module))
        except PipelineDefinitionError as exc:
            raise PipelineDefinitionError(str(exc), module) from None

    def _define(self, declared: Pipeline) -> Pipeline:
        name, module = declared.name, declared.module
        existing = self._pending.get(name) or (
            self._specs[name].declared if name in self._specs else None
        )
        if existing is not None:
            if existing == declared:  # the same module imported again
                return existing
            raise PipelineDefinitionError(
                f"pipeline {name!r} is already defined (in {existing.module or '?'}); "
                f"a second definition (in {module or '?'}) is refused"
            )
        if self._unknown_ops(declared):
            self._pending[name] = declared
        else:
            self._specs[name] = self._check(declared)
        return declared

    def resolve(self) -> None:
        """Check every pipeline left for the end of discovery; the first that names an op that
        is still unknown, or does not fit, raises `PipelineDefinitionError`."""
        while self._pending:
            name, declared = next(iter(self._pending.items()))
            del self._pending[name]
            unknown = self._unknown_ops(declared)
            if unknown:
                index, op = unknown[0]
                known = ", ".join(self._ops.names()) or "none"
                raise PipelineDefinitionError(
                    f"pipeline {name!r}: stage {index} names op {op!r}, which is not "
                    f"registered (known: {known})",
                    declared.module,
                )
            try:
                self._specs[name] = self._check(declared)
            except PipelineDefinitionError as exc:
                raise PipelineDefinitionError(str(exc), declared.module) from None

    def pending(self) -> list[str]:
        """Pipelines declared but not checked yet (an op they name is not registered yet)."""
        return sorted(self._pending)

    def get(self, name: str) -> PipelineSpec:
        key = name.removeprefix(TASK_PREFIX)
        if key in self._specs:
            return self._specs[key]
        if key in self._pending:
            raise PipelineDefinitionError(
                f"pipeline {key!r} is not checked yet: an op it names is not registered "
                "(discovery has not ended: bot.pipelines.discover_pipelines)"
            )
        known = ", ".join(sorted(self._specs)) or "none"
        raise UnknownPipeline(f"unknown pipeline {name!r} (known: {known})")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.removeprefix(TASK_PREFIX) in self._specs

    def __iter__(self) -> Iterator[PipelineSpec]:
        return iter(sorted(self._specs.values(), key=lambda spec: spec.name))

    def names(self) -> list[str]:
        return sorted(self._specs)

    def _unknown_ops(self, declared: Pipeline) -> list[tuple[int, str]]:
        return [
            (index, member.op)
            for index, item in enumerate(declared.stages, 1)
            for member in members(item)
            if member.op not in self._ops
        ]

    def _check(self, declared: Pipeline) -> PipelineSpec:
        resolved: dict[str, OpSpec] = {}
        for item in declared.stages:
            for member in members(item):
                spec = self._ops.get(member.op)
                resolved[member.op] = resolved[spec.name] = spec
        checked = check_stages(declared.name, declared.stages, resolved)
        return PipelineSpec(
            declared=declared,
            stages=checked.stages,
            ops={spec.name: spec for spec in resolved.values()},
            input_schema=checked.input_schema,
            output_schema=checked.output_schema,
            unchecked=checked.unchecked,
        )


def _shape(name: str, stages: tuple[Any, ...]) -> tuple[Stage | Parallel, ...]:
    """The stages as `Stage` and `Parallel`; `PipelineDefinitionError` for a bad name or shape."""
    problem = op_name_problem(name) if isinstance(name, str) else "it is not a string"
    if problem is not None:
        raise PipelineDefinitionError(
            f"pipeline name {name!r} is not valid (as for ops: {problem})"
        )
    if not stages:
        raise PipelineDefinitionError(f"pipeline {name!r} has no stages")
    shaped: list[Stage | Parallel] = []
    for index, item in enumerate(stages, 1):
        item = Stage(item) if isinstance(item, str) else item
        if isinstance(item, Parallel):
            _check_parallel(name, index, item)
        elif isinstance(item, Stage):
            _check_stage(name, f"stage {index}", item)
        else:
            raise PipelineDefinitionError(
                f"pipeline {name!r}: stage {index} is {item!r}; a stage is an op name, "
                "stage(...) or parallel(...)"
            )
        shaped.append(item)
    return tuple(shaped)


def _check_parallel(name: str, index: int, item: Parallel) -> None:
    for member in item.members:
        if not isinstance(member, Stage):
            what = f"parallel stage {member.label()}" if isinstance(member, Parallel) else member
            raise PipelineDefinitionError(
                f"pipeline {name!r}: stage {index} (parallel) holds {what!r}; its members "
                "are op names or stage(...), not another parallel stage"
            )
        _check_stage(name, f"stage {index} (parallel)", member)
    if len(item.members) < 2:
        raise PipelineDefinitionError(
            f"pipeline {name!r}: {stage_label(index, item)} has {len(item.members)} op; "
            "a parallel stage needs at least two (a single op is a plain stage)"
        )


def _check_stage(name: str, where: str, item: Stage) -> None:
    prefix = f"pipeline {name!r}: {where}"
    if not isinstance(item.op, str) or not item.op:
        raise PipelineDefinitionError(
            f"{prefix}: the op must be named by a string, not {item.op!r}"
        )
    if item.on_failure not in FAILURE_POLICIES:
        raise PipelineDefinitionError(
            f"{prefix} ({item.op}): on_failure must be 'stop' or 'continue', "
            f"not {item.on_failure!r}"
        )
    if item.continues and item.default is NO_DEFAULT:
        raise PipelineDefinitionError(
            f"{prefix} ({item.op}): on_failure='continue' needs a default (its output on failure)"
        )
    if not item.continues and item.default is not NO_DEFAULT:
        raise PipelineDefinitionError(
            f"{prefix} ({item.op}): a default is used only with on_failure='continue'"
        )


PIPELINES = PipelineRegistry()


def pipeline(name: str, *stages: StageLike, description: str = "") -> Pipeline:
    """Declare the pipeline `name` (Celery task `pipelines.<name>`): its stages run in order,
    each an op name, a `stage(op, on_failure=..., default=...)` or a `parallel(op, op, ...)`.
    Checked at once when its ops are registered, else when discovery ends."""
    module = str(sys._getframe(1).f_globals.get("__name__", ""))
    return PIPELINES.define(name, *stages, description=description, module=module)
