"""Fault-test ops: `touch` counts how often its body really ran; `crash` kills its pool child
(or raises SystemExit).

Both count each execution of their body in Redis (`Keys.fault_touches(job_id)`), so a test
can tell "the job ended once" (one report) from "its body ran once" (one touch).

They live here, not in `tasks/`, so no production worker has them (`crash` would let anyone who
can submit kill pool children); tests and benchmarks load them through BOT_OPS_MODULES
(`tests.support.processes.FAULT_OPS`): `bot_env` for subprocesses, the `make_settings` fixture
for in-process apps.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Literal

from celery import current_app, current_task
from pydantic import BaseModel, Field

from bot.jobs.progress import progress
from bot.ops import op

#: Seconds a touch counter lives: long enough for any test or benchmark to read it.
TOUCH_TTL_S = 86_400
#: Upper bound of one `touch` job, seconds.
MAX_TOUCH_S = 3600.0


def touch_count() -> int:
    """Count one execution of the running job's op body; return the new count."""
    app = current_app
    key = app.keys.fault_touches(current_task.request.id)
    client = app.redis()
    pipe = client.pipeline()
    pipe.incr(key)
    pipe.expire(key, TOUCH_TTL_S)
    count, _ = pipe.execute()
    return int(count)


class TouchPayload(BaseModel):
    seconds: float = Field(0, ge=0, le=MAX_TOUCH_S, description="Sleep this long after touching.")
    steps: int = Field(1, ge=1, le=1000, description="Progress reports while sleeping.")


@op("touch")
def touch(payload: TouchPayload) -> dict[str, int]:
    """Count this execution, then sleep `seconds`; returns the execution count."""
    count = touch_count()
    step_s = payload.seconds / payload.steps
    for done in range(1, payload.steps + 1):
        time.sleep(step_s)
        progress(done, payload.steps)
    return {"executions": count}


class CrashPayload(BaseModel):
    times: int = Field(
        -1, ge=-1, description="Crash on the first `times` executions; -1: always (a poison job)."
    )
    exit_code: int = Field(1, ge=0, le=255)
    how: Literal["os_exit", "sys_exit"] = Field(
        "os_exit",
        description="os._exit (the whole process dies) or sys.exit (SystemExit from the op).",
    )


@op("crash")
def crash(payload: CrashPayload) -> dict[str, int]:
    """Kill the pool child running this job with os._exit (no cleanup, no outcome), or raise
    SystemExit from the op body (`how=sys_exit`: under the threads pool, only its thread)."""
    count = touch_count()
    if payload.times < 0 or count <= payload.times:
        if payload.how == "sys_exit":
            sys.exit(payload.exit_code)
        os._exit(payload.exit_code)
    return {"executions": count}
