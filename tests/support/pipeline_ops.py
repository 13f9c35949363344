"""Test-only ops and pipelines for pipeline runs (tests/e2e/test_pipelines.py), loaded through
BOT_OPS_MODULES beside `tests.support.fault_ops` (whose `crash` one pipeline uses).

Each op counts the executions of its body for its job id (`touch_count`), so a test can tell a
stage that ran once from one that ran twice.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from bot.errors import TransientError
from bot.ops import op
from bot.pipelines import parallel, pipeline, stage
from tests.support.fault_ops import crash, touch_count

_ = crash  # registered by importing fault_ops: the poison_chord pipeline names it


class Pause(BaseModel):
    seconds: float = Field(0, ge=0, le=60)


class Counted(BaseModel):
    executions: int


@op("p_begin")
def p_begin(seconds: float = 0) -> Pause:
    """Pass `seconds` on to the next stage."""
    touch_count()
    return Pause(seconds=seconds)


@op("p_slow")
def p_slow(seconds: float) -> Pause:
    """Sleep `seconds` (a stage long enough to kill its worker in)."""
    touch_count()
    time.sleep(seconds)
    return Pause(seconds=seconds)


@op("p_fail")
def p_fail(seconds: float) -> Pause:
    """Always fails (a ValueError, not retried)."""
    touch_count()
    raise ValueError("p_fail fails on purpose")


@op("p_flaky")
def p_flaky(seconds: float) -> Pause:
    """Fails with a transient error on its first execution (retried), then passes on."""
    if touch_count() == 1:
        raise TransientError("p_flaky: first try fails")
    return Pause(seconds=seconds)


@op("p_last")
def p_last(seconds: float) -> Counted:
    """The last stage: how many times its body ran for this job."""
    return Counted(executions=touch_count())


class Poison(BaseModel):
    times: int


@op("p_poison")
def p_poison(seconds: float = 0) -> Poison:
    """Hand `crash` an input that kills its pool child every time."""
    return Poison(times=-1)


@op("p_ok")
def p_ok(times: int) -> dict[str, int]:
    return {"executions": touch_count()}


@op("p_join")
def p_join(results: list[Any]) -> int:
    return len(results)


pipeline("recover_mid", "p_begin", "p_slow", "p_last", description="kill -9 during stage 2")
pipeline(
    "poison_chord",
    "p_poison",
    parallel("p_ok", "crash"),
    "p_join",
    description="a parallel member that never ends but dead",
)
pipeline(
    "fails_continue",
    "p_begin",
    stage("p_fail", on_failure="continue", default={"seconds": 0.25}),
    "p_last",
)
pipeline("fails_stop", "p_begin", "p_fail", "p_last")
pipeline("flaky_mid", "p_begin", "p_flaky", "p_last", description="stage 2 is retried once")
