"""Recovery when only a pool child dies: the worker main process hands the job back first.

Celery (acks_late + reject_on_worker_lost) requeues the message of a task whose pool child
died, and any worker may get it next. Left alone, the job record still says `running` under
this (live) instance, so a *different* worker's acquire answers `busy` and acks the copy: the
job would never run again. So before Celery requeues, `OpRequest.on_failure` runs `reap.lua`
on the job (fenced on this owner, the dead child's pid and the fence): `queued`,
`recoveries` + 1. The next acquire, wherever it happens, takes the job normally, and
`run_op` ends it `dead` past BOT_MAX_RECOVERIES: a job that kills its child every time
(Celery alone requeues it forever) stops after the bound.

`OpTask.Request` names this class (Celery's documented custom-request hook).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from bot.reaper import CHILD_LOST_COUNTER, reap_job
from bot.runtime import RUNTIME

logger = logging.getLogger(__name__)

#: What `Request.on_failure` sees when the pool child running the request died (billiard
#: >= 4.3 may report the child's exit as SystemExit before it is gone; Celery treats that
#: as a lost worker too unless the request was cancelled or revoked).
LOST_CHILD_ERRORS = (WorkerLostError, SystemExit, KeyboardInterrupt)


def child_was_lost(request: Request, exc: BaseException) -> bool:
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    if not isinstance(exc, LOST_CHILD_ERRORS):
        return False
    return not (request._already_cancelled or request._already_revoked)


class OpRequest(Request):
    """Celery's request, plus handing the job back when its pool child was lost."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        if child_was_lost(self, exc_info.exception):
            hand_back(self.task.app, self.id, self.worker_pid)
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )


def hand_back(app: Any, job_id: str, pid: int | None) -> bool:
    """Mark `job_id` queued (recoveries + 1) if this instance's child `pid` was running it."""
    if pid is None or not hasattr(app, "keys"):
        return False  # never accepted by a child: this attempt cannot have acquired the job
    try:
        requeued = reap_job(
            app.redis(), app.keys, job_id, RUNTIME.owner(), CHILD_LOST_COUNTER, pid=pid
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # The record stays `running` under this live instance; on this worker acquire still
        # takes it over (dead recorded pid), elsewhere it is skipped as busy. Say so loudly.
        logger.error("job %s: pool child lost and Redis unreachable (%s)", job_id, exc)
        return False
    if requeued is not None:
        logger.warning(
            "job %s: pool child %s lost; handed back (recovery %d)",
            job_id,
            pid,
            requeued.recoveries,
        )
    return requeued is not None
