"""Test-only op and triggers for the trigger tests: `emit` returns its payload, and its reports
fire `touch` (tests/support/fault_ops.py), which counts how often each triggered job really ran.

- `on_emit` (succeeded -> touch): its function sleeps `trigger_sleep_s` of the report's result
  first (a slow trigger, so a consumer can be killed while it holds entries), then returns a
  touch payload; `mode` "skip" returns None, "raise" raises, "bad" returns a payload touch
  refuses.
- `on_emit_failed` (failed -> touch, a static payload).
- `on_emit_pipeline` (succeeded -> the pipeline difference_of_squares), for `mode` "pipeline"
  only; `on_squares` (that pipeline's run succeeded -> touch, a static payload).

Loaded through BOT_OPS_MODULES (`tests.support.trigger_process.TRIGGER_OPS`) after the fault
ops, only by the tests that want them (in worker and CLI subprocesses): importing this module
declares the triggers in the process-wide registry.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from bot import Report, on, op
from tests.support.trigger_process import ON_EMIT, ON_EMIT_FAILED, ON_EMIT_PIPELINE, ON_SQUARES


@op("emit")
def emit(
    tag: str = "",
    mode: Literal["fire", "skip", "raise", "bad", "fail", "pipeline"] = "fire",
    trigger_sleep_s: float = 0.0,
) -> dict[str, Any]:
    """Returns its payload (the trigger reads it from the report); `mode="fail"` fails."""
    if mode == "fail":
        raise RuntimeError(f"emit {tag} fails as asked")
    return {"tag": tag, "mode": mode, "trigger_sleep_s": trigger_sleep_s}


@on("succeeded", op="emit", submit="touch", name=ON_EMIT)
def on_emit(report: Report) -> dict[str, Any] | None:
    result = report.result or {}
    time.sleep(float(result.get("trigger_sleep_s", 0.0)))
    mode = result.get("mode")
    if mode in ("skip", "pipeline"):
        return None
    if mode == "raise":
        raise ValueError(f"no touch for {result.get('tag')}")
    return {"seconds": -1 if mode == "bad" else 0}


on("failed", op="emit", submit="touch", payload={"seconds": 0}, name=ON_EMIT_FAILED)


@on("succeeded", op="emit", start="difference_of_squares", name=ON_EMIT_PIPELINE)
def on_emit_pipeline(report: Report) -> dict[str, Any] | None:
    result = report.result or {}
    return {"a": 3, "b": 2} if result.get("mode") == "pipeline" else None


on("succeeded", pipeline="difference_of_squares", submit="touch", payload={}, name=ON_SQUARES)
