"""One attempt at running a job: what it acquired, and how it records its outcome.

The attempt owns the write side of the job lifecycle: `finish()` builds the report and calls
the fenced complete script; `record_retrying()` hands the job back between retries. A Redis
outage at that moment is waited out here (the message stays unacked meanwhile), so no outcome
is acked before it is durable.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.base.backoff import full_jitter
from bot.base.clock import now_ms
from bot.errors import PayloadRejected
from bot.jobs.ports import AppPort
from bot.jobs.reports import Report, ReportError, ReportWorker, ms_to_datetime
from bot.jobs.store import Acquired, Delivery, Outcome, ResultMeta
from bot.runtime.process import RUNTIME
from bot.store.connect import UNREACHABLE

logger = logging.getLogger(__name__)


def error_of(exc: BaseException) -> ReportError:
    details = exc.errors if isinstance(exc, PayloadRejected) else []
    return ReportError(type=type(exc).__name__, message=str(exc), details=details)


@dataclass
class Attempt:
    app: AppPort
    delivery: Delivery
    acquired: Acquired
    owner: str
    started_monotonic: float = field(default_factory=time.monotonic)

    @property
    def job_id(self) -> str:
        return self.delivery.job_id

    def report(self, status: str, result: Any, error: ReportError | None) -> Report:
        finished = now_ms()
        return Report(
            job_id=self.job_id,
            op=self.delivery.op,
            status=status,
            result=result,
            error=error,
            attempts=self.acquired.attempts,
            recoveries=self.acquired.recoveries,
            worker=ReportWorker(
                bot_id=RUNTIME.bot_id, instance_id=RUNTIME.instance_id, hostname=RUNTIME.hostname
            ),
            enqueued_at=ms_to_datetime(self.acquired.enqueued_at_ms),
            started_at=ms_to_datetime(self.acquired.started_at_ms),
            finished_at=ms_to_datetime(finished),
            duration_ms=int((time.monotonic() - self.started_monotonic) * 1000),
        )

    def finish(
        self,
        status: str,
        *,
        result: Any = None,
        error: BaseException | None = None,
        result_meta: ResultMeta | None = None,
    ) -> bool:
        """Record a final outcome and its report (and Celery's result meta, when given, in
        the same step). False when the lease was lost."""
        entry = self._record(self._final_outcome(status, result, error), result_meta)
        if entry is None:
            logger.warning("job %s: lease lost, outcome %s discarded", self.job_id, status)
            return False
        logger.debug("job %s %s (report %s)", self.job_id, status, entry)
        return True

    def finish_once(
        self, status: str, *, result: Any = None, error: BaseException | None = None
    ) -> bool:
        """`finish()` in one try, for a caller that must not wait (the worker main process):
        a Redis error propagates instead of being waited out. False when the lease was lost."""
        return self._complete(self._final_outcome(status, result, error)) is not None

    def _final_outcome(self, status: str, result: Any, error: BaseException | None) -> Outcome:
        """The outcome and its report. Never raises: a result or error that cannot be put in
        a report (not JSON, circular) gives a minimal report saying so, so the job still ends
        with exactly one report instead of staying `running`."""
        try:
            report = self.report(status, result, error_of(error) if error else None)
            report_json = report.model_dump_json()
            detail = (
                {"result": result} if report.error is None else {"error": report.error.model_dump()}
            )
            json.dumps(detail, default=str)  # what complete stores must serialise too
        except Exception as exc:
            logger.exception("job %s: report not built; sending a minimal one", self.job_id)
            report = self._minimal_report(status, exc)
            report_json = report.model_dump_json()
            detail = {"error": report.error.model_dump() if report.error else {}}
        return self._outcome(status, detail, report_json)

    def _minimal_report(self, status: str, exc: Exception) -> Report:
        error = ReportError(
            type="ReportNotBuilt",
            message=f"the {status} outcome could not be reported: {type(exc).__name__}",
        )
        return Report(
            job_id=self.job_id,
            op=self.delivery.op,
            status=status,
            error=error,
            attempts=max(0, self.acquired.attempts),
            recoveries=max(0, self.acquired.recoveries),
            worker=ReportWorker(bot_id=None, instance_id=None, hostname=RUNTIME.hostname),
            finished_at=datetime.now(UTC),
        )

    def record_retrying(self, exc: BaseException, countdown_s: float) -> bool:
        detail = {"error": error_of(exc).model_dump(), "retry_in_s": round(countdown_s, 3)}
        return self._record(self._outcome("retrying", detail, "")) is not None

    def _outcome(self, state: str, detail: dict[str, Any], report_json: str) -> Outcome:
        duration_s = time.monotonic() - self.started_monotonic
        return Outcome(state, detail, report_json, self.delivery.op, duration_s)

    def _complete(self, outcome: Outcome, result_meta: ResultMeta | None = None) -> str | None:
        """One call of the fenced complete script (see `JobStore.complete`)."""
        return self.app.job_store().complete(
            self.job_id,
            self.owner,
            self.acquired.fence,
            outcome,
            self.app.settings.job_ttl,
            result_meta,
        )

    def _record(self, outcome: Outcome, result_meta: ResultMeta | None = None) -> str | None:
        """Record the outcome. Across a Redis outage the outcome is held in this process's
        memory (counted as `outcomes_held` in the worker record; at most one per pool process,
        which waits) and tried again with backoff until Redis answers; the message stays unacked
        meanwhile. There is no giving up: a job abandoned here would stay `running` under this
        live worker and never be recovered. If the outage outlasts the lease, the reaper hands
        the job to another worker and this outcome, once Redis is back, is refused (lease_lost):
        at-least-once execution, exactly-once report."""
        settings = self.app.settings
        failures = 0
        try:
            while True:
                try:
                    return self._complete(outcome, result_meta)
                except UNREACHABLE as exc:
                    if failures == 0:
                        RUNTIME.counters.held(+1)
                    delay = full_jitter(
                        failures, settings.retry_base_delay, settings.retry_max_delay
                    )
                    failures += 1
                    logger.warning(
                        "job %s: cannot record %s (%s); holding it, retrying in %.1fs",
                        self.job_id,
                        outcome.state,
                        exc,
                        delay,
                    )
                    time.sleep(delay)
        finally:
            if failures:
                RUNTIME.counters.held(-1)
