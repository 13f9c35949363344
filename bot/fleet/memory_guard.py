"""The Redis memory guard: a worker goes DEGRADED before Redis refuses writes.

The Redis of bot runs `maxmemory-policy noeviction` (README): at its `maxmemory` it refuses
every write, so no job can be acquired or recorded anywhere in the fleet. Each worker's
heartbeat thread reads `INFO memory` (one cheap round trip, at most once per heartbeat
interval, never per job) and, when `maxmemory` is set and `used_memory` is at least
BOT_REDIS_MEMORY_LIMIT_SHARE of it, reports a problem that makes the worker DEGRADED with the
reason (`redis memory 93% of maxmemory (limit 90%)`): in the worker record (`state_reason`,
`memory_guard`), so in `bot fleet`, `bot health` and /metrics (`bot_worker_state`,
`bot_redis_memory_guard`). It is left once used memory is HYSTERESIS (two points) below the
limit, so a Redis hovering at the limit does not flap the state. `maxmemory 0` (no limit)
turns the guard off: Redis then grows until the host runs out of memory, which bot cannot see
coming; set `maxmemory`.

A worker DEGRADED for memory keeps taking jobs. Taking a job drains its message from the queue
while running it writes a record, a result and a report: roughly even, and stopping would only
let the queues grow (submitters keep sending) while nothing drains them. The guard's purpose is
to warn the operator while writes still succeed; what frees memory is the operator (a consumer
group fixed or destroyed, BOT_OUTBOX_MAX_LEN lowered, maxmemory raised) and the retention pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

logger = logging.getLogger("bot.fleet")

#: The guard is left only below (share - HYSTERESIS) of maxmemory (at most half the share).
HYSTERESIS = 0.02


class MemoryGuard:
    """One worker's verdict on Redis's memory, kept between checks."""

    def __init__(
        self, share: float, min_interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.share = share
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.tripped = False
        self.reason: str | None = None
        self._next_check = 0.0
        self._off = False

    def judge(self, used: int, maxmemory: int) -> str | None:
        """The verdict on one reading: the reason while over the limit, else None."""
        if maxmemory <= 0:
            self.tripped, self.reason = False, None
            return None
        ratio = used / maxmemory
        limit = self.share - min(HYSTERESIS, self.share / 2) if self.tripped else self.share
        self.tripped = ratio >= limit
        self.reason = (
            f"redis memory {ratio:.0%} of maxmemory (limit {self.share:.0%})"
            if self.tripped
            else None
        )
        return self.reason

    def check(self, client: redis.Redis) -> str | None:
        """Read INFO memory when due and judge it; between checks, the last verdict. A Redis
        that refuses INFO (an ACL user without it) turns the guard off with one log line; an
        unreachable one keeps the last verdict (the heartbeat itself degrades then)."""
        now = self.clock()
        if self._off or now < self._next_check:
            return self.reason
        self._next_check = now + self.min_interval_s
        try:
            info: Any = client.info("memory")
        except redis.ResponseError as exc:
            self._off = True
            logger.warning("Redis memory guard off: INFO memory refused (%s)", exc)
            return None
        except (redis.RedisError, OSError):
            return self.reason
        return self.judge(int(info.get("used_memory") or 0), int(info.get("maxmemory") or 0))
