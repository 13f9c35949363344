"""The job store: the fenced acquire/complete/reap steps on the job record `bot:job:{id}`.

acquire: before the op body runs, take the job (owner, fence+1, attempts+1) unless it ended
(duplicate delivery) or runs under a live owner. complete: only the owner holding the current
fence may record an outcome; a final outcome appends the report to the outbox in the same
script, and leaves the record only what a finished job needs (`RUNNING_ONLY_FIELDS` go; what
stays, and why, is in bot/jobs/record.py). reap: hand a job back (`queued`, recoveries + 1) if
it still runs under the owner named, at the fence read; used by the reaper, the unheld-job
audit and the lost-child hand-back.
All are single Lua scripts (`bot/store/lua/`), so every multi-key change is atomic.

With `BOT_REDIS_MIN_REPLICAS` > 0, a complete that ended the job is followed by
`WAIT min_replicas timeout_ms` (`ReplicaWait`): the end of the job (record + outbox entry) then
survives a failover once that many replicas hold it. Fewer in time is logged and counted in
`bot:stats` (`replica_wait_short`), never a failed job: the write is on the primary already.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import redis

from bot.base.clock import now_ms
from bot.jobs.record import RUNNING_ONLY_FIELDS, JobRecord
from bot.store import scripts
from bot.store.keys import Keys
from bot.store.metrics_hash import duration_sum_field, outcome_fields

logger = logging.getLogger(__name__)

#: The `bot:stats` field counting job ends fewer replicas acknowledged than asked for in time.
REPLICA_WAIT_SHORT = "replica_wait_short"


@dataclass(frozen=True)
class ReplicaWait:
    """How many replicas must acknowledge the end of a job (0: no WAIT) and for how long."""

    min_replicas: int = 0
    timeout_ms: int = 500

    def after_end(self, client: redis.Redis, stats_key: str, job_id: str) -> int | None:
        """WAIT for the replicas; the number that acknowledged (None when not asked)."""
        if self.min_replicas <= 0:
            return None
        acked = int(client.wait(self.min_replicas, self.timeout_ms))
        if acked < self.min_replicas:
            logger.warning(
                "job %s ended but only %d of %d replica(s) acknowledged it within %d ms",
                job_id,
                acked,
                self.min_replicas,
                self.timeout_ms,
                extra={"job_id": job_id},
            )
            client.hincrby(stats_key, REPLICA_WAIT_SHORT, 1)
        return acked


#: complete.lua's argument naming what a finished record drops (bot/jobs/record.py).
_RUNNING_ONLY_ARG = " ".join(RUNNING_ONLY_FIELDS)

#: How many times acquire re-reads the owner when it moved between read and script.
_ACQUIRE_READ_ATTEMPTS = 5


def process_alive(pid: int) -> bool:
    """Whether a process with that pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Delivery:
    """What the worker knows about the message it is about to run."""

    job_id: str
    op: str
    queue: str
    delivery_tag: str
    message: dict[str, Any]
    enqueued_at_ms: int | None = None
    #: Binds the job id to what was submitted (bot.jobs.envelope.payload_digest); '' for none.
    digest: str = ""


@dataclass(frozen=True)
class ResultMeta:
    """Celery's result meta of the job, for a script to write with the record (SET with
    `ttl_s`, 0: none; complete.lua also PUBLISHes it): see bot/jobs/celery_meta.py."""

    key: str
    value: str
    ttl_s: int


@dataclass(frozen=True)
class Acquired:
    fence: int
    attempts: int
    recoveries: int
    enqueued_at_ms: int | None
    started_at_ms: int
    #: Recovered more than BOT_MAX_RECOVERIES times: taken only to be ended `dead`, not run.
    exhausted: bool = False


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: a final state (with its report) or `retrying`."""

    state: str
    detail: dict[str, Any]  # {"result": ...} or {"error": ...}
    report_json: str  # the Report as JSON for a final state, '' for retrying
    op: str
    duration_s: float


@dataclass(frozen=True)
class Skipped:
    """This delivery must not run: the job ended (`duplicate`), runs elsewhere (`busy`), or
    the id belongs to another submission (`reused`: another op or payload digest)."""

    reason: str
    detail: str


class JobStore:
    """Reads and guards job records for one key prefix."""

    def __init__(
        self, client: redis.Redis, keys: Keys, replica_wait: ReplicaWait | None = None
    ) -> None:
        self.client = client
        self.keys = keys
        self.replica_wait = replica_wait or ReplicaWait()
        self._acquire = scripts.register(client, "acquire")
        self._complete = scripts.register(client, "complete")
        self._claim = scripts.register(client, "claim_id")

    def read(self, job_id: str) -> dict[str, str]:
        return self.client.hgetall(self.keys.job(job_id))  # type: ignore[return-value]

    def claim(self, job_id: str, op: str, queue: str, digest: str, job_ttl_s: int) -> bool:
        """Create a caller's job id's record `queued`, bound to this op and payload digest
        (claim_id.lua, one round trip); False when the id is known already."""
        created = self._claim(
            keys=[self.keys.job(job_id)],
            args=[job_id, op, queue, digest, now_ms(), job_ttl_s],
        )
        return bool(created)

    def acquire(
        self,
        delivery: Delivery,
        owner: str,
        pid: int,
        claim: str = "",
        *,
        max_recoveries: int | None = None,
        result_meta: ResultMeta | None = None,
    ) -> Acquired | Skipped:
        """Take the job, or say why this delivery must not run. One round trip for a job that
        nobody owns yet (the common case); a second one when it has an owner, whose lease key
        the script needs in KEYS (it reports the owner it found). `claim` names the caller's
        attempt: calling again with it after a Redis error is safe (see acquire.lua). Past
        `max_recoveries` (None: no bound) the job is taken `exhausted`: to be ended, not run.
        `result_meta` (Celery's STARTED meta) is written when the job is taken."""
        seen = ("", "0", "")  # owner, fence, pid: optimistically, a job nobody owns yet
        meta_keys, meta_args = _meta_parts(result_meta)
        for _ in range(_ACQUIRE_READ_ATTEMPTS):
            reply = self._acquire(
                keys=[
                    self.keys.job(delivery.job_id),
                    self.keys.inflight(owner),
                    self.keys.lease(seen[0] or owner),
                    self.keys.stats,
                    *meta_keys,
                ],
                args=[
                    *self._acquire_args(delivery, owner, pid, seen),
                    claim,
                    -1 if max_recoveries is None else max_recoveries,
                    delivery.digest,
                    *meta_args,
                ],
            )
            verdict = reply[0]
            if verdict in ("acquired", "exhausted"):
                _, fence, attempts, recoveries, enqueued, started = reply
                return Acquired(
                    int(fence),
                    int(attempts),
                    int(recoveries),
                    int(enqueued) if enqueued else None,
                    int(started),
                    exhausted=verdict == "exhausted",
                )
            if verdict != "retry":
                return Skipped(verdict, reply[1])
            seen = (str(reply[1]), str(reply[2]), str(reply[3]))
        raise RuntimeError(f"job {delivery.job_id}: owner kept changing during acquire")

    @staticmethod
    def _acquire_args(
        delivery: Delivery, owner: str, pid: int, seen: tuple[str, str, str]
    ) -> list[Any]:
        seen_owner, seen_fence, seen_pid = seen
        own_process_dead = (
            seen_owner == owner and seen_pid != "" and not process_alive(int(seen_pid))
        )
        return [
            delivery.job_id,
            owner,
            seen_owner,
            seen_fence,
            now_ms(),
            delivery.op,
            delivery.queue,
            delivery.delivery_tag,
            json.dumps(delivery.message, separators=(",", ":")),
            pid,
            "1" if own_process_dead else "0",
            delivery.enqueued_at_ms or "",
        ]

    def complete(
        self,
        job_id: str,
        owner: str,
        fence: int,
        outcome: Outcome,
        job_ttl_s: int,
        result_meta: ResultMeta | None = None,
    ) -> str | None:
        """Record an attempt's outcome (and count it in the owner's metrics), with Celery's
        result meta when given. Returns the outbox entry id ('' if not final), or None when
        the fence was lost (the outcome is discarded and counted as lease_lost)."""
        meta_keys, meta_args = _meta_parts(result_meta)
        reply = self._complete(
            keys=[
                self.keys.job(job_id),
                self.keys.inflight(owner),
                self.keys.outbox,
                self.keys.stats,
                self.keys.metrics(owner),
                *meta_keys,
            ],
            args=[
                job_id,
                owner,
                fence,
                outcome.state,
                json.dumps(outcome.detail, default=str),
                outcome.report_json,
                now_ms(),
                job_ttl_s,
                duration_sum_field(outcome.op),
                int(outcome.duration_s * 1000),
                *meta_args,
                _RUNNING_ONLY_ARG,
                *outcome_fields(outcome.op, outcome.state, outcome.duration_s),
            ],
        )
        entry_id = reply[1] if int(reply[0]) == 1 else None
        if entry_id:
            self.replica_wait.after_end(self.client, self.keys.stats, job_id)
        return entry_id

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self.client.hset(
            self.keys.job(job_id),
            mapping={"progress": json.dumps(progress), "updated_at": now_ms()},
        )


def _meta_parts(meta: ResultMeta | None) -> tuple[list[str], list[Any]]:
    """The script's optional result-meta key, and its two arguments ('' and 0 for none)."""
    if meta is None:
        return [], ["", 0]
    return [meta.key], [meta.value, meta.ttl_s]


#: bot:stats counters naming the path that recovered a job.
REAPER_COUNTER = "reaper_recovered"
CHILD_LOST_COUNTER = "child_lost_recovered"
UNHELD_COUNTER = "unheld_recovered"


@dataclass(frozen=True)
class Requeued:
    """A job that `reap.lua` moved back to `queued`; its message must now be put back."""

    job_id: str
    recoveries: int
    delivery_tag: str
    message: str


def reap_job(
    client: redis.Redis,
    keys: Keys,
    job_id: str,
    owner: str,
    counter: str,
    pid: int | None = None,
    fence: str | None = None,
) -> Requeued | None:
    """Move `job_id` back to `queued` if it still runs under `owner` (and, given `pid`, in that
    process). The fence (read here unless the caller read it along with what it judged) makes
    the script a no-op if the job moved meanwhile."""
    if fence is None or pid is not None:
        names = ("fence", "pid")
        values: list[str | None] = client.hmget(keys.job(job_id), names)  # type: ignore[assignment]
        seen = JobRecord.from_hash(job_id, dict(zip(names, values, strict=True)))
        if pid is not None and seen.pid != pid:
            return None
        fence = fence if fence is not None else str(seen.fence)
    reply = scripts.register(client, "reap")(
        keys=[keys.job(job_id), keys.inflight(owner), keys.stats],
        args=[job_id, owner, fence, now_ms(), counter],
    )
    if reply[0] != "queued":
        return None
    return Requeued(job_id, int(reply[1]), reply[2], reply[3])
