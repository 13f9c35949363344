"""The reaper: hands the in-flight jobs of dead instances back to the queue.

Runs on a timer in every worker; one pass per interval fleet-wide through a Redis lock
(`bot:reaper:lock`, `hold_lock.lua`) that its holder keeps for one interval and takes again
at its next pass, never releases: releasing it after each pass let every worker make a pass
of its own each interval, so the fleet judged every member once per worker (W² lease reads
per interval; about 4,000 lease reads a second with 20 workers and 220 members at a 1 s
interval, docs/scaling.md). A pass:
1. for each instance in `bot:workers` whose lease `bot:lease:{id}` is gone, for each job id in
   its in-flight set whose record still names it and is `running`: `reap.lua` sets the job
   `queued`, `recoveries` + 1 (fenced on owner and fence), then its very message is put back
   at the head of its queue (kombu `restore_by_tag`), or, where the unacked entry is gone,
   published again from the record. What its inboxes hold (messages it had taken off a queue
   and not yet recorded as unacked, bot/broker/inbox.py) goes back onto their lists. Then
   the instance is forgotten (`forget_instance.lua`);
2. optionally (`orphan_age_s`), every unacked message nobody renewed for that long goes back
   too: live workers refresh the `unacked_index` score of every message they hold on each
   heartbeat, so an old score means its holder is dead. This catches what no in-flight set
   records: messages a dead worker had reserved or held for a countdown/retry.
The recovery bound is applied where the job runs next: acquire hands back `recoveries` and
`run_op` ends a job with more than BOT_MAX_RECOVERIES as `dead`.

A reaper that has just (re)connected to Redis (first pass, a Redis restart seen as a new
`run_id`, a connection error, or a gap between passes longer than a lease TTL) waits one
lease TTL before judging others: their leases may be missing only because they too have
not yet renewed them since the outage.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from bot.jobs.ports import AppPort
from bot.jobs.store import REAPER_COUNTER, Requeued, reap_job
from bot.recovery.requeue import BrokerRequeue, Requeue
from bot.store import scripts
from bot.store.connect import UNREACHABLE
from bot.store.keys import Keys

logger = logging.getLogger(__name__)


@dataclass
class ReaperCounters:
    """What this worker's reaper did since it started (shown in the worker record)."""

    passes: int = 0
    instances_reaped: int = 0
    recovered: int = 0
    restored: int = 0
    republished: int = 0
    orphans_restored: int = 0
    inbox_returned: int = 0
    unrecoverable: int = 0
    errors: int = 0


class Reaper:
    """One worker's reaper. `run_once()` is called every BOT_REAPER_INTERVAL."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        requeue: Requeue,
        *,
        lease_ttl_s: float,
        interval_s: float,
        lock_ttl_s: float,
        orphan_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.keys = keys
        self.requeue = requeue
        self.lease_ttl_s = lease_ttl_s
        self.interval_s = interval_s
        self.lock_ttl_s = lock_ttl_s
        self.orphan_age_s = orphan_age_s
        self.clock = clock
        self.counters = ReaperCounters()
        self._connected_since: float | None = None
        self._last_pass: float | None = None
        self._run_id: str | None = None
        #: This reaper's token for the fleet-wide lock (kept from pass to pass).
        self._token = uuid.uuid4().hex
        #: Jobs handed back whose message could not be put back yet (oldest first).
        self._owed: list[Requeued] = []

    @classmethod
    def for_app(cls, app: AppPort, *, orphan_sweep: bool = True) -> Reaper:
        """The reaper of a worker of `app`. The orphan sweep relies on the heartbeat renewing
        the `unacked_index` scores of held messages; it starts at two lease TTLs."""
        settings = app.settings
        return cls(
            app.redis(),
            app.keys,
            BrokerRequeue(app),
            lease_ttl_s=settings.lease_ttl_s,
            interval_s=settings.reaper_interval,
            # One interval: the holder passes again as it ends; a holder that died delays the
            # others by one interval at most (and, shorter than its lease, not its own jobs).
            lock_ttl_s=max(1.0, settings.reaper_interval),
            orphan_age_s=2 * settings.lease_ttl_s if orphan_sweep else None,
        )

    def snapshot(self) -> dict[str, Any]:
        return asdict(self.counters)

    def run_once(self) -> bool:
        """One pass. True when this reaper held the lock and judged the fleet."""
        try:
            self.put_back_owed()
            if not self._settled():
                return False
            if not self._hold_lock():
                return False
            self.counters.passes += 1
            self._reap_dead_instances()
            self._sweep_orphans()
            return True
        except UNREACHABLE as exc:
            self.counters.errors += 1
            self._connected_since = None
            self.requeue.reset()
            logger.warning("reaper: Redis unreachable (%s); will wait a lease TTL after", exc)
            return False

    def _hold_lock(self) -> bool:
        """Take or keep `bot:reaper:lock` for one lock TTL (`hold_lock.lua`); not released
        after the pass, so the fleet makes one pass per interval, not one per worker."""
        reply = scripts.register(self.client, "hold_lock")(
            keys=[self.keys.reaper_lock], args=[self._token, int(self.lock_ttl_s * 1000)]
        )
        return bool(reply)

    def _settled(self) -> bool:
        """Whether this reaper has been connected for a lease TTL (see the module docstring)."""
        now = self.clock()
        run_id = self._server_run_id()
        # A pass much later than its interval: this process was paused, or its timer did not
        # fire (the worker's event loop stops while the broker connection is down).
        gap = self._last_pass is not None and now - self._last_pass > (
            self.lease_ttl_s + self.interval_s
        )
        self._last_pass = now
        if self._connected_since is None or run_id != self._run_id or gap:
            self._connected_since = now
            self._run_id = run_id
            logger.info("reaper: (re)connected; judging others in %.1fs", self.lease_ttl_s)
        return now - self._connected_since >= self.lease_ttl_s

    def _server_run_id(self) -> str:
        """Redis's run_id (new on every restart); '' where INFO is not allowed (an ACL user
        without it): connection errors and pass gaps still restart the wait there."""
        try:
            return str(self.client.info("server").get("run_id", ""))
        except redis.ResponseError:
            return ""

    def _dead_instances(self) -> list[str]:
        instances: list[str] = self.client.zrange(self.keys.workers, 0, -1)  # type: ignore[assignment]
        if not instances:
            return []
        pipe = self.client.pipeline(transaction=False)
        for instance in instances:
            pipe.exists(self.keys.lease(instance))
        alive = pipe.execute()
        return [instance for instance, live in zip(instances, alive, strict=True) if not live]

    def _reap_dead_instances(self) -> None:
        """Hand back the jobs of every dead instance, then forget those left with none. The
        in-flight sets are read in one pipeline and the instances forgotten in another, so a
        pass costs the same few round trips however many instances died (plus two per job)."""
        dead = self._dead_instances()
        if not dead:
            return
        pipe = self.client.pipeline(transaction=False)
        for instance in dead:
            pipe.smembers(self.keys.inflight(instance))
        for instance, job_ids in zip(dead, pipe.execute(), strict=True):
            for job_id in sorted(job_ids):
                self._reap_job(job_id, instance)
            self._return_inboxes(instance)
        forgotten = [i for i, done in zip(dead, self._forget_all(dead), strict=True) if done]
        for instance in forgotten:
            logger.warning("reaper: instance %s is dead; forgotten", instance)
        if forgotten:
            self.counters.instances_reaped += len(forgotten)
            self.client.hincrby(self.keys.stats, "reaper_instances", len(forgotten))

    def _return_inboxes(self, instance: str) -> None:
        """Messages the dead instance had taken and not yet recorded (bot/broker/inbox.py)."""
        moved = self.requeue.return_inboxes(instance)
        if moved:
            self.counters.inbox_returned += moved
            self.client.hincrby(self.keys.stats, "reaper_inbox_returned", moved)
            logger.warning("reaper: %d message(s) in %s's inbox put back", moved, instance)

    def _reap_job(self, job_id: str, instance: str) -> None:
        requeued = reap_job(self.client, self.keys, job_id, instance, REAPER_COUNTER)
        if requeued is None:
            return
        self.counters.recovered += 1
        logger.warning(
            "job %s: owner %s is gone; recovery %d", job_id, instance, requeued.recoveries
        )
        self.put_back(requeued)

    def put_back(self, requeued: Requeued) -> None:
        """The job's very message back at the head of its queue, or published again. The job
        is `queued` already: if the broker fails here, the put-back is owed and tried first
        thing in every later pass until it goes through (else the job would wait forever)."""
        try:
            self._put_back_now(requeued)
        except UNREACHABLE:
            self._owed.append(requeued)
            logger.warning(
                "job %s: handed back; its message goes back once Redis answers", requeued.job_id
            )
            raise

    def put_back_owed(self) -> None:
        while self._owed:
            self._put_back_now(self._owed[0])
            self._owed.pop(0)

    def _put_back_now(self, requeued: Requeued) -> None:
        if requeued.delivery_tag and self.requeue.restore(requeued.delivery_tag):
            self._count("restored", "reaper_restored")
        elif requeued.message:
            self.requeue.republish(requeued.job_id, json.loads(requeued.message))
            self._count("republished", "reaper_republished")
        else:  # acquire always stores the message; a record without one was not made by bot
            self._count("unrecoverable", "reaper_unrecoverable")
            logger.error("job %s: no message to publish again; it stays queued", requeued.job_id)

    def _forget_all(self, instances: list[str]) -> list[bool]:
        """`forget_instance.lua` for each instance, in one pipeline: whether each was
        forgotten (its lease did not come back and no job is left in its in-flight set)."""
        keys, forget = self.keys, scripts.register(self.client, "forget_instance")
        pipe = self.client.pipeline(transaction=False)
        for instance in instances:
            forget(
                keys=[
                    keys.workers,
                    keys.worker(instance),
                    keys.inflight(instance),
                    keys.lease(instance),
                ],
                args=[instance],
                client=pipe,
            )
        return [bool(reply) for reply in pipe.execute()]

    def _sweep_orphans(self) -> None:
        if self.orphan_age_s is None:
            return
        for tag in self.requeue.stale_tags(self.orphan_age_s):
            if self.requeue.restore(tag):
                self._count("orphans_restored", "reaper_orphans_restored")
                logger.warning("reaper: unacked message %s not renewed by anyone; put back", tag)

    def _count(self, field: str, stat: str) -> None:
        setattr(self.counters, field, getattr(self.counters, field) + 1)
        self.client.hincrby(self.keys.stats, stat, 1)
