"""The unheld-job audit: a live worker hands back the jobs it is recorded as running but no
longer holds.

While a job's record names a live instance as owner, every other delivery of that job is acked
without running (`busy` in bot/store/lua/acquire.lua). That is right only while the owner really
holds the job. Two paths leave a live instance recorded as owner of a job it let go of:
- an acquire whose reply was lost: the script ran, then Redis went away before the answer
  came back; the pool child saw an error, kept retrying, then handed the message back
  (`Reject(requeue=True)`), and the copy delivered next was acked as `busy`;
- a pool child lost while Redis was unreachable, so bot/jobs/child_lost.py could not hand the
  job back before Celery requeued its message.
The reaper cannot see either (the owner's lease is alive), so each worker audits its own
claims, every BOT_REAPER_INTERVAL in the reaper's thread:
1. note the time t0, then the ids of the requests the main process holds
   (`celery.worker.state.requests`: reserved, scheduled and running);
2. read this instance's in-flight set; for each job id in it that is not held, read the
   record's `fence` and `started_at`;
3. a job whose attempt started before t0, found so on two passes in a row at the same fence,
   is handed back: `reap.lua` fenced on that fence (`queued`, recoveries + 1, counter
   `unheld_recovered`), then its message is put back like the reaper does it (restore the
   unacked entry, or publish again from the record).
Why "started before t0" is safe: the main process holds a request from its delivery until
after its outcome is recorded (Celery's `task_ready` runs once the pool child has returned,
and the complete script leaves the in-flight set first), and acquire runs in between. So a job
acquired before t0 that still runs was held at t0; one acquired after t0 is not judged this
pass. The fence makes a job acquired again meanwhile a no-op. Two passes, because Celery
itself lets go of a request for a moment: when the broker connection closes, the consumer
drops the requests that are not yet accepted by a pool child from `requests`, and a child's
acceptance can reach the main process after the child has already acquired the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from bot.base.clock import now_ms
from bot.jobs.record import JobRecord
from bot.jobs.store import UNHELD_COUNTER, Requeued, reap_job
from bot.store.connect import UNREACHABLE
from bot.store.keys import Keys

logger = logging.getLogger(__name__)


@dataclass
class UnheldAudit:
    """One worker's audit of its own claims. `run_once()` returns the job ids handed back."""

    client: redis.Redis
    keys: Keys
    owner: Callable[[], str]
    held_job_ids: Callable[[], set[str]]
    put_back: Callable[[Requeued], None]
    clock_ms: Callable[[], int] = now_ms
    handed_back: int = 0
    #: (job id, fence) found unheld by the previous pass.
    suspects: set[tuple[str, str]] = field(default_factory=set)

    def run_once(self) -> list[str]:
        try:
            return self._audit()
        except UNREACHABLE as exc:
            logger.debug("unheld-job audit skipped: Redis unreachable (%s)", exc)
            return []

    def _audit(self) -> list[str]:
        t0 = self.clock_ms()
        held = self.held_job_ids()
        owner = self.owner()
        claimed: set[str] = self.client.smembers(self.keys.inflight(owner))  # type: ignore[assignment]
        unheld = sorted(claimed - held)
        if not unheld:
            self.suspects = set()
            return []
        names = ("fence", "started_at")
        pipe = self.client.pipeline(transaction=False)
        for job_id in unheld:
            pipe.hmget(self.keys.job(job_id), names)
        suspects, previous = set(), self.suspects
        for job_id, values in zip(unheld, pipe.execute(), strict=True):
            record = JobRecord.from_hash(job_id, dict(zip(names, values, strict=True)))
            started = record.started_at_ms
            if started is None or started < t0:  # else acquired after the snapshot
                suspects.add((job_id, str(record.fence)))
        self.suspects = suspects - previous
        return [
            job_id
            for job_id, fence in sorted(suspects & previous)
            if self._hand_back(job_id, fence, owner)
        ]

    def _hand_back(self, job_id: str, fence: str, owner: str) -> bool:
        requeued = reap_job(self.client, self.keys, job_id, owner, UNHELD_COUNTER, fence=fence)
        if requeued is None:
            return False  # ended, or taken again, since it was read
        self.handed_back += 1
        logger.warning(
            "job %s: recorded as running here but held by no request; handed back (recovery %d)",
            job_id,
            requeued.recoveries,
        )
        self.put_back(requeued)
        return True
