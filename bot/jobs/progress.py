"""`progress(current, total, note)`: an op's way to say how far it is.

Stored on the job record, in Celery's result backend (state PROGRESS), and sent as a custom
task event. Flower 2.2 shows a custom event as the task's state but not its extra fields, so
the event carries a readable summary in the standard `result` field. Updates are throttled;
the last step is always sent.

The binding of the running job is per thread: under the threads pool (`-P threads`) several
jobs run at once in one process, each op body in its own pool thread, and each `progress()`
call must reach the job of the thread that makes it (a process-wide binding sent one job's
progress to another op's task object, whose request in this thread has no id, and let one
job's `unbind` silence the others).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds between two progress updates of one job (the last step is always sent).
MIN_INTERVAL_S = 0.5
PROGRESS_STATE = "PROGRESS"
PROGRESS_EVENT = "task-progress"


class _Current(threading.local):
    """The job running in this thread (prefork: the pool child's one thread)."""

    task: Any = None
    last_sent: float = 0.0


_current = _Current()


def bind(task: Any) -> None:
    """Called by the executor around an op body: progress() reports for this task."""
    _current.task = task
    _current.last_sent = 0.0


def unbind() -> None:
    _current.task = None


def summary(current: float, total: float, note: str | None) -> str:
    text = f"{current:g}/{total:g}"
    return f"{text} {note}" if note else text


def progress(current: float, total: float, note: str | None = None) -> bool:
    """Report progress of the running job. Returns whether the update was sent (throttled);
    outside a worker it does nothing and returns False, so ops stay callable as functions."""
    task = _current.task
    if task is None:
        return False
    now = time.monotonic()
    if current < total and now - _current.last_sent < MIN_INTERVAL_S:
        return False
    _current.last_sent = now
    meta = {"current": current, "total": total, "note": note}
    job_id = task.request.id
    try:
        task.app.job_store().set_progress(job_id, meta)
        task.update_state(state=PROGRESS_STATE, meta=meta)
        task.send_event(PROGRESS_EVENT, result=summary(current, total, note), **meta)
    except Exception:  # progress is best effort: it must never fail the job
        logger.warning("job %s: progress update failed", job_id, exc_info=True)
        return False
    return True
