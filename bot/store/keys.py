"""Every Redis key bot uses, built in one place from `BOT_KEY_PREFIX`.

kombu owns the broker's keys (queues, `unacked`, `unacked_index`); the names it uses are here
too, so the lease code and its tests read them from one place.
"""

from __future__ import annotations

from dataclasses import dataclass

#: kombu's Redis transport keeps delivered-but-unacked messages under these (unprefixed) keys.
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"


@dataclass(frozen=True)
class Keys:
    """Key builders for one prefix (default `bot`)."""

    prefix: str = "bot"

    @property
    def workers(self) -> str:
        """zset: instance_id -> last heartbeat (ms)."""
        return f"{self.prefix}:workers"

    def worker(self, instance_id: str) -> str:
        """hash: the worker record."""
        return f"{self.prefix}:worker:{instance_id}"

    def lease(self, instance_id: str) -> str:
        """string with PX TTL: the liveness lease."""
        return f"{self.prefix}:lease:{instance_id}"

    def inflight(self, instance_id: str) -> str:
        """set: job ids owned by that instance."""
        return f"{self.prefix}:inflight:{instance_id}"

    def job(self, job_id: str) -> str:
        """hash: the job record."""
        return f"{self.prefix}:job:{job_id}"

    def pipeline(self, run_id: str) -> str:
        """hash: a pipeline run's record (state, current stage, each stage job's state)."""
        return f"{self.prefix}:pipeline:{run_id}"

    @property
    def pipelines_running(self) -> str:
        """zset: run ids of pipeline runs not ended yet -> start time (ms); the audit's list."""
        return f"{self.prefix}:pipelines:running"

    @property
    def schedule_slots(self) -> str:
        """zset: schedule name -> the last slot it fired (epoch seconds), only moved forward."""
        return f"{self.prefix}:schedules:last"

    @property
    def redbeat_prefix(self) -> str:
        """celery-redbeat's `redbeat_key_prefix`: its lock is `<this>:lock` (redbeat adds the
        colon: `bot:redbeat::lock`), its schedule `<this>:schedule`, an entry `<this><name>`."""
        return f"{self.prefix}:redbeat:"

    @property
    def ops(self) -> str:
        """hash: op name -> JSON Schema of its payload."""
        return f"{self.prefix}:ops"

    @property
    def outbox(self) -> str:
        """stream: every report."""
        return f"{self.prefix}:outbox"

    @property
    def outbox_dead(self) -> str:
        """stream: reports a sink refused past BOT_OUTBOX_MAX_DELIVERIES."""
        return f"{self.prefix}:outbox:dead"

    def outbox_replay(self, group: str) -> str:
        """stream: dead reports `bot outbox replay` put back for one consumer group (sink)."""
        return f"{self.prefix}:outbox:replay:{group}"

    @property
    def outbox_behind(self) -> str:
        """hash with a TTL: consumer group -> JSON of how far behind the retention bounds it
        is (owed, oldest owed age, which bound); rewritten by each retention pass."""
        return f"{self.prefix}:outbox:behind"

    @property
    def outbox_retention_lock(self) -> str:
        """string with PX TTL: held by the one worker running the outbox retention pass."""
        return f"{self.prefix}:outbox:retention:lock"

    def metrics(self, instance_id: str) -> str:
        """hash: that instance's job counters and duration buckets, for its /metrics."""
        return f"{self.prefix}:metrics:{instance_id}"

    @property
    def reaper_lock(self) -> str:
        """string with PX TTL: held by the one worker reaping at a time."""
        return f"{self.prefix}:reaper:lock"

    @property
    def pipelines_audit_lock(self) -> str:
        """string with PX TTL: held by the one worker auditing pipeline runs at a time."""
        return f"{self.prefix}:pipelines:audit:lock"

    @property
    def stats(self) -> str:
        """hash: fleet-wide counters (duplicates skipped, lease_lost, recoveries, ...)."""
        return f"{self.prefix}:stats"

    def fault_touches(self, job_id: str) -> str:
        """string counter: how many times the `touch`/`crash` fault ops' body ran for a job."""
        return f"{self.prefix}:faults:touches:{job_id}"


def kombu_key(name: str, transport_options: dict[str, object] | None = None) -> str:
    """A kombu Redis-transport key as kombu itself names it: the transport option that renames
    it (e.g. `unacked_index_key`) if set, prefixed with `global_keyprefix` if set."""
    options = transport_options or {}
    base = str(options.get(f"{name}_key") or name)
    return f"{options.get('global_keyprefix') or ''}{base}"
