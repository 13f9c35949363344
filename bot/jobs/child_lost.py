"""When only a pool child dies: the worker main process settles the job before Celery acts.

Celery (acks_late + reject_on_worker_lost) requeues the message of a task whose pool child
died, and any worker may get it next. Left alone, the job record still says `running` under
this (live) instance, so a *different* worker's acquire answers `busy` and acks the copy: the
job would never run again. So before Celery requeues, `OpRequest.on_failure` runs `reap.lua`
on the job (fenced on this owner, the dead child's pid and the fence): `queued`,
`recoveries` + 1. The next acquire, wherever it happens, takes the job normally, and
`run_op` ends it `dead` past BOT_MAX_RECOVERIES: a job that kills its child every time
(Celery alone requeues it forever) stops after the bound.

A child killed by a hard time limit (`time_limit`) is different: Celery marks the task failed
and acks its message. `OpRequest.on_timeout` ends the job `failed` first (TimeLimitExceeded,
with its report, fenced on this owner, the child's pid and the fence), so it is not left
`running` under this live worker. If Redis is unreachable at that moment, the worker's claim
audit (bot/recovery/unheld_audit.py) hands the job back later instead, and it runs again.

Under the threads pool (`-P threads`) there is no child to lose: a job runs in a pool thread of
the worker's main process, and the pid a job records is the worker's own. An op that raises
`SystemExit` or `KeyboardInterrupt` (`sys.exit()` in op code) is what a lost child is there:
Celery's `apply_target` turns it into a `WorkerLostError` and hands that to the request's
*success* callback, whose unpacking fails in the pool thread; the request then never ends, its
message stays unacked (and renewed by every heartbeat) and the job stays `running` for good.
`OpRequest` routes that call to `on_failure`, so the job is handed back, requeued and bounded
by BOT_MAX_RECOVERIES, as under prefork. A process-wide crash (`os._exit`, a segfault) takes
every job of a threads worker with it; the reaper hands them all back after the lease TTL.
Time limits (`time_limit`, `soft_time_limit`) are enforced by the prefork pool only: a job
that carries one and runs in the worker's own process gets a warning line saying so.

`OpTask.Request` names this class (Celery's documented custom-request hook).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery.worker.request import Request

from bot.base.clock import now_ms
from bot.jobs.outcome import Attempt
from bot.jobs.ports import AppPort
from bot.jobs.record import JobRecord
from bot.jobs.store import CHILD_LOST_COUNTER, Acquired, Delivery, reap_job
from bot.runtime.process import RUNTIME
from bot.store.connect import UNREACHABLE

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


def lost_thread_to_failure(on_success: Callable[..., Any]) -> Callable[..., Any]:
    """`on_success` that sends the threads pool's lost-worker call (an `ExceptionInfo` of a
    `WorkerLostError` instead of Celery's `(failed, retval, runtime)`) to `on_failure`."""

    @functools.wraps(on_success)
    def wrapper(self: Request, failed__retval__runtime: Any, **kwargs: Any) -> Any:
        if isinstance(failed__retval__runtime, ExceptionInfo):
            return self.on_failure(failed__retval__runtime)
        return on_success(self, failed__retval__runtime, **kwargs)

    return wrapper


class OpRequest(Request):
    """Celery's request, plus handing the job back when its pool child was lost."""

    on_success = lost_thread_to_failure(Request.on_success)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Celery's strategy subclasses this class for each task (`create_request_cls`) with an
        # `on_success` of its own: wrap that one too.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("on_success")
        if own is not None:
            cls.on_success = lost_thread_to_failure(own)

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        if child_was_lost(self, exc_info.exception):
            hand_back(self.task.app, self.id, self.worker_pid)
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        super().on_accepted(pid, time_accepted)
        if pid == os.getpid():  # run in this process: the threads (or solo) pool
            warn_time_limit_not_enforced(self)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if not soft:
            end_timed_out(self.task.app, self.id, self.worker_pid, timeout)
        super().on_timeout(soft, timeout)


def warn_time_limit_not_enforced(request: Request) -> bool:
    """Say so when a job that runs in the worker's own process has a time limit: only the
    prefork pool enforces them (Celery's threads pool ignores both, silently)."""
    hard, soft = request.time_limits
    hard = hard or request.task.time_limit
    soft = soft or request.task.soft_time_limit
    if not (hard or soft):
        return False
    logger.warning(
        "job %s: time limit (hard %s, soft %s) not enforced: this pool runs jobs in the worker's "
        "own process; use the prefork pool for time limits",
        request.id,
        hard,
        soft,
    )
    return True


def hand_back(app: AppPort, job_id: str, pid: int | None) -> bool:
    """Mark `job_id` queued (recoveries + 1) if this instance's child `pid` was running it.
    (`OpRequest` is the request class of `OpTask` only, which bot registers on its own app.)"""
    if pid is None:
        return False  # never accepted by a child: this attempt cannot have acquired the job
    try:
        requeued = reap_job(
            app.redis(), app.keys, job_id, RUNTIME.owner(), CHILD_LOST_COUNTER, pid=pid
        )
    except UNREACHABLE as exc:
        # The record stays `running` under this live instance; on this worker acquire still
        # takes it over (dead recorded pid), elsewhere it is skipped as busy. Say so loudly.
        logger.error("job %s: pool child lost and Redis unreachable (%s)", job_id, exc)
        return False
    if requeued is not None:
        # Under the threads pool the job ran in this very process: its thread was "lost".
        lost = "its pool thread" if pid == os.getpid() else f"pool child {pid}"
        logger.warning(
            "job %s: %s lost; handed back (recovery %d)", job_id, lost, requeued.recoveries
        )
    return requeued is not None


def end_timed_out(app: AppPort, job_id: str, pid: int | None, timeout: float) -> bool:
    """End `job_id` `failed` (TimeLimitExceeded, with its report) if this instance's child
    `pid` was running it. One try: this runs in the main process, which must not wait."""
    if pid is None:
        return False
    try:
        record = JobRecord.from_hash(job_id, app.job_store().read(job_id))
        attempt = _attempt_from_record(app, record, pid)
        if attempt is None:
            return False
        error = TimeLimitExceeded(f"hard time limit ({timeout}s) exceeded; pool child killed")
        ended = attempt.finish_once("failed", error=error)
    except UNREACHABLE as exc:
        logger.error("job %s: hard time limit hit and Redis unreachable (%s)", job_id, exc)
        return False
    if ended:
        logger.warning("job %s: failed, hard time limit (%ss) exceeded", job_id, timeout)
    return ended


def _attempt_from_record(app: AppPort, record: JobRecord, pid: int) -> Attempt | None:
    """The attempt the record describes, if it runs under this instance in process `pid`."""
    owner = RUNTIME.owner()
    if (record.state, record.owner, record.pid) != ("running", owner, pid):
        return None
    enqueued = record.enqueued_at_ms
    started = record.started_at_ms or now_ms()
    delivery = Delivery(
        record.job_id,
        record.op or "",
        record.queue,
        record.delivery_tag,
        record.message,
        enqueued,
    )
    acquired = Acquired(record.fence, record.attempts, record.recoveries, enqueued, started)
    # The attempt began when it was acquired: its report's duration counts from there.
    began = time.monotonic() - max(0, now_ms() - started) / 1000
    return Attempt(app, delivery, acquired, owner, started_monotonic=began)
