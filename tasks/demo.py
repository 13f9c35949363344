"""Demo and fault-test ops: `sleep` (reports progress each step) and `flaky`.

`flaky` is the predecessor's FAILURE_RATE / PROCESSING_DURATION_MS behaviour as an op: it works
for `duration_ms`, then fails with a transient error with probability `failure_rate`.
"""

from __future__ import annotations

import random
import time

from pydantic import BaseModel, Field

from bot.errors import TransientError
from bot.jobs.progress import progress
from bot.ops import op

#: Upper bound of one `sleep` job, seconds: long enough for any demo or fault test.
MAX_SLEEP_S = 3600.0


class SleepPayload(BaseModel):
    seconds: float = Field(ge=0, le=MAX_SLEEP_S, description="How long to sleep in all.")
    steps: int = Field(10, ge=1, le=10_000, description="How many progress reports to make.")


@op("sleep")
def sleep(payload: SleepPayload) -> dict[str, float]:
    """Sleep `seconds` in `steps` equal steps, reporting progress after each."""
    step_s = payload.seconds / payload.steps
    started = time.monotonic()
    for done in range(1, payload.steps + 1):
        time.sleep(step_s)
        progress(done, payload.steps, note=f"slept {done * step_s:.1f}s")
    return {"slept_s": round(time.monotonic() - started, 3)}


class FlakyFailure(TransientError):
    """The failure `flaky` draws; transient, so it is retried with backoff."""


class FlakyPayload(BaseModel):
    failure_rate: float = Field(0.15, ge=0, le=1, description="Chance of a transient failure.")
    duration_ms: int = Field(0, ge=0, le=600_000, description="Work time before the draw.")


@op("flaky", max_retries=3)
def flaky(payload: FlakyPayload) -> dict[str, int]:
    """Work for `duration_ms`, then fail transiently with probability `failure_rate`."""
    time.sleep(payload.duration_ms / 1000)
    if random.random() < payload.failure_rate:
        raise FlakyFailure(f"flaky failure (failure_rate={payload.failure_rate})")
    return {"duration_ms": payload.duration_ms}
