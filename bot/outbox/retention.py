"""Outbox retention: keeps the report streams within their bounds, whether or not a relay runs.

Every worker runs a pass every BOT_OUTBOX_TRIM_INTERVAL (a fleet service); one worker per
interval fleet-wide does the work, the holder of `bot:outbox:retention:lock` (hold_lock.lua,
kept for one interval and taken again at its next pass, like the reaper's lock). A pass:

1. trims `bot:outbox`, then each group's replay stream `bot:outbox:replay:{group}`: entries
   older than BOT_OUTBOX_MAX_AGE, and the oldest beyond BOT_OUTBOX_MAX_LEN, go; never an entry
   some consumer group still owes (outbox_trim.lua's floor);
2. bounds the dead letters `bot:outbox:dead`: never by age (a dead letter is a report a sink
   refused, waiting for `bot outbox replay`); the oldest beyond BOT_OUTBOX_DEAD_MAX_LEN are
   dropped (0: kept however many), with a warning and `bot:stats` `outbox_dead_dropped`;
3. names the groups that are *behind*: a group is behind when it owes an entry the bounds
   would otherwise drop, older than BOT_OUTBOX_MAX_AGE or beyond the newest BOT_OUTBOX_MAX_LEN
   (the length check sees up to TRIM_SCAN_MAX entries past the bound: with several groups
   behind by length, the furthest behind is named first). What it owes is still kept; each
   pass logs a warning per behind group and rewrites the hash `bot:outbox:behind` {group:
   JSON of owed, oldest owed age, bound}, which expires after three intervals without a pass.
   `bot outbox`, `bot fleet` and `bot_outbox_group_behind{sink}` read it. The operator fixes
   the consumer or removes the group (`XGROUP DESTROY bot:outbox <group>`); the Redis memory
   guard (bot/fleet/memory_guard.py) is what warns before such a group fills Redis.

Redis over its maxmemory refuses the lock's SET (OOM) but not XTRIM: then the pass runs
without the lock in every worker (trimming is atomic and idempotent, and it is what frees
memory), and the behind hash is left as it was.
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

from bot.jobs.envelope import printable
from bot.jobs.ports import AppPort
from bot.outbox.stream import Outbox, Trimmed, parse_id
from bot.store import scripts
from bot.store.connect import UNREACHABLE
from bot.store.keys import Keys
from config.settings import Settings

logger = logging.getLogger(__name__)

#: The behind hash outlives this many intervals without a pass (its writer died).
BEHIND_TTL_INTERVALS = 3
#: `bot:stats` field counting dead letters dropped past BOT_OUTBOX_DEAD_MAX_LEN.
DEAD_DROPPED_STAT = "outbox_dead_dropped"


@dataclass(frozen=True)
class Bounds:
    """BOT_OUTBOX_MAX_AGE, BOT_OUTBOX_MAX_LEN, BOT_OUTBOX_DEAD_MAX_LEN."""

    max_age_s: float
    max_len: int
    dead_max_len: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Bounds:
        return cls(settings.outbox_max_age, settings.outbox_max_len, settings.outbox_dead_max_len)


@dataclass(frozen=True)
class Behind:
    """A consumer group that owes an entry the bounds would drop, and which bound."""

    group: str
    owed: int
    oldest_owed_age_s: float
    bound: str  # "age" or "length"

    def record(self) -> str:
        return json.dumps(
            {"owed": self.owed, "oldest_owed_age_s": self.oldest_owed_age_s, "bound": self.bound}
        )

    def describe(self, bounds: Bounds, stream: str) -> str:
        past = (
            f"older than BOT_OUTBOX_MAX_AGE ({bounds.max_age_s:g}s)"
            if self.bound == "age"
            else f"beyond BOT_OUTBOX_MAX_LEN ({bounds.max_len})"
        )
        group = printable(self.group)
        return (
            f"outbox group {group} is behind: owes {self.owed} report(s), the oldest "
            f"{self.oldest_owed_age_s:.0f}s old, {past}; they are kept: fix its consumer or "
            f"remove the group (XGROUP DESTROY {stream} {group})"
        )


def behind_of(group: dict[str, Any], target: tuple[int, int], bounds: Bounds) -> Behind | None:
    """The group (a row of `Outbox.stats()['groups']`) if it owes an entry below the trim's
    retention target; None when it is within the bounds."""
    oldest = group.get("oldest_owed_id")
    if not oldest or parse_id(str(oldest)) >= target:
        return None
    age_s = float(group["oldest_owed_age_s"])
    bound = "age" if age_s > bounds.max_age_s else "length"
    return Behind(str(group["group"]), int(group["owed"]), age_s, bound)


def read_behind(client: redis.Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    """The last pass's verdict: group -> {owed, oldest_owed_age_s, bound}; {} when none."""
    raw: Any = client.hgetall(keys.outbox_behind)
    verdict: dict[str, dict[str, Any]] = {}
    for group, text in (raw or {}).items():
        try:
            verdict[str(group)] = dict(json.loads(text))
        except (TypeError, ValueError):
            verdict[str(group)] = {}
    return verdict


def mark_behind(stats: dict[str, Any], behind: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`Outbox.stats()` with each group's `behind` flag (and `behind_bound`) from the verdict,
    and the list of the behind groups (a group destroyed since the verdict is not listed)."""
    for group in stats["groups"]:
        verdict = behind.get(group["group"])
        group["behind"] = verdict is not None
        group["behind_bound"] = (verdict or {}).get("bound")
    stats["behind"] = sorted(g["group"] for g in stats["groups"] if g["behind"])
    return stats


@dataclass
class RetentionCounters:
    """What this worker's retention passes did since it started."""

    passes: int = 0
    trimmed: int = 0
    dead_dropped: int = 0
    errors: int = 0


class Retention:
    """One worker's retention pass; `run_once()` is called every BOT_OUTBOX_TRIM_INTERVAL."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        bounds: Bounds,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.keys = keys
        self.bounds = bounds
        self.interval_s = interval_s
        self.clock = clock
        self.outbox = Outbox(client, keys)
        self.counters = RetentionCounters()
        #: This worker's token for the fleet-wide lock (kept from pass to pass).
        self._token = uuid.uuid4().hex

    @classmethod
    def for_app(cls, app: AppPort) -> Retention:
        settings = app.settings
        return cls(
            app.redis(),
            app.keys,
            Bounds.from_settings(settings),
            interval_s=settings.outbox_trim_interval,
        )

    def snapshot(self) -> dict[str, Any]:
        return asdict(self.counters)

    def run_once(self) -> bool:
        """One pass; True when this worker did it (it held the lock, or Redis was full)."""
        try:
            locked = self._hold_lock()
            if locked is False:
                return False
            self._pass(record=locked)
            return True
        except UNREACHABLE as exc:
            self.counters.errors += 1
            logger.warning("outbox retention: Redis unreachable (%s); next pass later", exc)
            return False

    def _hold_lock(self) -> bool | None:
        """True: this worker holds the lock for an interval; False: another does; None:
        Redis is over maxmemory and refused the lock (the pass runs anyway)."""
        lock_ms = int(max(1.0, self.interval_s) * 1000)
        try:
            reply = scripts.register(self.client, "hold_lock")(
                keys=[self.keys.outbox_retention_lock], args=[self._token, lock_ms]
            )
        except redis.OutOfMemoryError:
            logger.warning("outbox retention: Redis is over maxmemory; trimming without the lock")
            return None
        return bool(reply)

    def _pass(self, *, record: bool | None) -> None:
        now = int(self.clock() * 1000)
        trimmed = self._trim(self.keys.outbox, now)
        stats = self.outbox.stats(now)
        for group in stats["groups"]:
            self._trim(self.keys.outbox_replay(str(group["group"])), now)
        self._bound_dead()
        behind = [b for g in stats["groups"] if (b := behind_of(g, trimmed.target, self.bounds))]
        for late in behind:
            logger.warning("%s", late.describe(self.bounds, self.keys.outbox))
        if record:
            self._record(behind)
        self.counters.passes += 1

    def _trim(self, stream: str, now: int) -> Trimmed:
        done = self.outbox.trim_to(
            stream, max_age_s=self.bounds.max_age_s, max_len=self.bounds.max_len, now_ms=now
        )
        if done.count:
            self.counters.trimmed += done.count
            logger.info("outbox retention: trimmed %d entries of %s", done.count, stream)
        return done

    def _bound_dead(self) -> int:
        """Drop the oldest dead letters beyond BOT_OUTBOX_DEAD_MAX_LEN (0: none)."""
        limit = self.bounds.dead_max_len
        if not limit:
            return 0
        dropped = int(self.client.xtrim(self.keys.outbox_dead, maxlen=limit, approximate=False))
        if dropped:
            self.counters.dead_dropped += dropped
            logger.warning(
                "outbox retention: dropped the %d oldest dead letter(s) beyond "
                "BOT_OUTBOX_DEAD_MAX_LEN (%d); replay or inspect them sooner (bot outbox dead)",
                dropped,
                limit,
            )
            self._count_dropped(dropped)
        return dropped

    def _count_dropped(self, dropped: int) -> None:
        try:
            self.client.hincrby(self.keys.stats, DEAD_DROPPED_STAT, dropped)
        except redis.OutOfMemoryError:
            logger.debug("outbox retention: Redis full; %d drops not counted", dropped)

    def _record(self, behind: list[Behind]) -> None:
        """Rewrite `bot:outbox:behind` (one transaction), expiring after a few intervals."""
        key = self.keys.outbox_behind
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if behind:
            pipe.hset(key, mapping={late.group: late.record() for late in behind})
            pipe.pexpire(key, int(BEHIND_TTL_INTERVALS * max(1.0, self.interval_s) * 1000))
        try:
            pipe.execute()
        except redis.ResponseError as exc:  # over maxmemory: keep the last verdict
            logger.debug("outbox retention: behind groups not recorded (%s)", exc)
