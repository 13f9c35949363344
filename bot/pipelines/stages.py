"""What a pipeline is made of: `Stage` (one op and its failure policy), `Parallel` (ops run side
by side), the `stage()` and `parallel()` constructors, and `PipelineDefinitionError`.

These are plain declarations: nothing here knows whether an op exists or whether stages fit.
`bot.pipelines.registry` checks a whole pipeline's shape (with its name and each stage's
position in every message), and `bot.pipelines.contract` checks that the stages fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bot.errors import BotError

#: What a stage does when its op's job fails for good (failed, rejected or dead):
#: "stop" ends the pipeline `failed`; "continue" passes the stage's `default` on as its output.
FailurePolicy = Literal["stop", "continue"]
FAILURE_POLICIES: tuple[str, ...] = ("stop", "continue")


class PipelineDefinitionError(BotError):
    """A pipeline that cannot run as declared: a bad shape, an unknown op, a duplicate name, or
    stages whose types do not fit. Raised when the pipeline is defined (at import), or when
    discovery ends for a pipeline naming an op registered after it. `module` is the module
    that declared the pipeline, when known."""

    def __init__(self, message: str, module: str = "") -> None:
        super().__init__(message)
        self.module = module


class _NoDefault:
    """The `default` of a stage that has none (JSON null is a valid default)."""

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class Stage:
    """One op. Its input is the previous stage's output (the pipeline's payload for the first
    stage); its output is the op's return value, or `default` when the op fails and
    `on_failure` is "continue". In a checked pipeline (`PipelineSpec.stages`), `default` is
    the JSON value the op's return type gives it."""

    op: str
    on_failure: FailurePolicy = "stop"
    default: Any = NO_DEFAULT

    @property
    def continues(self) -> bool:
        """Whether a failure of this stage passes `default` on instead of ending the pipeline."""
        return self.on_failure == "continue"

    def describe(self) -> dict[str, Any]:
        """JSON-ready: {"op", "on_failure"} and, for a "continue" stage, "default"."""
        out: dict[str, Any] = {"op": self.op, "on_failure": self.on_failure}
        if self.continues:
            out["default"] = self.default
        return out

    def label(self) -> str:
        return f"{self.op} (continue: {self.default!r})" if self.continues else self.op


@dataclass(frozen=True)
class Parallel:
    """Two or more ops run side by side on the same input. The next stage receives
    `{"results": [out_1, out_2, ...]}`, one output per op in declared order."""

    members: tuple[Stage, ...]

    def describe(self) -> dict[str, Any]:
        return {"parallel": [member.describe() for member in self.members]}

    def label(self) -> str:
        return "[" + ", ".join(member.label() for member in self.members) + "]"


#: What `pipeline()` accepts as a stage: an op name, a `stage(...)`, or a `parallel(...)`.
StageLike = str | Stage | Parallel


def stage(op: str, *, on_failure: FailurePolicy = "stop", default: Any = NO_DEFAULT) -> Stage:
    """The op `op` as a stage. `on_failure="continue"` needs a `default`: the stage's output
    when its op fails for good; it must validate as the op's return type."""
    return Stage(op=op, on_failure=on_failure, default=default)


def parallel(*ops: str | Stage) -> Parallel:
    """Ops run in parallel on the same input (at least two); each may be a `stage(...)` with its
    own failure policy. The next stage receives `{"results": [...]}` in this order."""
    return Parallel(tuple(Stage(op) if isinstance(op, str) else op for op in ops))


def members(item: Stage | Parallel) -> tuple[Stage, ...]:
    """The ops of a stage: itself, or the members of a parallel stage."""
    return item.members if isinstance(item, Parallel) else (item,)


def stage_label(index: int, item: Stage | Parallel) -> str:
    """How messages name a stage: `stage 2 (score_a)`, `stage 2 (parallel: sum, subtract)`."""
    if isinstance(item, Parallel):
        return f"stage {index} (parallel: {', '.join(m.op for m in item.members)})"
    return f"stage {index} ({item.op})"
