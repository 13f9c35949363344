"""The beat's scheduler: celery-redbeat's, with bot's schedules fired on every tick.

`celery -A bot beat` uses it (`beat_scheduler` in config/celery_config.py). What redbeat gives:
its lock in Redis (`bot:redbeat::lock`), taken before the first tick and extended on each one,
so that one beat of many fires and the others wait, each retrying every
`BOT_BEAT_MAX_INTERVAL` seconds; a lock whose beat died expires after five of them. Entries of
Celery's own `beat_schedule`, if an app adds any, still run as redbeat runs them.

bot's schedules (bot/pipelines/schedules.py) are not redbeat entries: redbeat fires an entry
"now" and remembers when it fired, so slots missed while no beat ran collapse into one run
with a fresh id (tests/integration/test_beat_observations.py pins it). On each tick this
scheduler works out every schedule's due slots from its timing and the slot ledger, and submits
each under its slot's id (bot/flows/slots.py); the first tick of a beat applies the catch-up
policies. It then sleeps until the next slot of any schedule, at most the max interval.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from redbeat import RedBeatScheduler

from bot.flows.slots import Clock, SlotLedger, fire, utc_now
from bot.pipelines.schedules import SCHEDULES, Schedule

log = logging.getLogger(__name__)

#: Seconds after a slot's time the beat wakes for it (a sleep never ends early by more).
WAKE_AFTER_SLOT_S = 0.005
#: Seconds before a schedule whose submission failed (Redis or broker down) is tried again.
RETRY_AFTER_S = 1.0


class BotScheduler(RedBeatScheduler):
    """RedBeatScheduler that also fires bot's schedules (`SCHEDULES`) on each tick."""

    def __init__(self, app: Any, *args: Any, clock: Clock = utc_now, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self.clock = clock
        #: Schedules this beat has fired at least once: catch-up is behind them.
        self._fired: set[str] = set()

    def tick(self, min: Any = min, **kwargs: Any) -> float:  # redbeat's signature
        """redbeat's tick (extend the lock, run its entries), then bot's schedules; seconds to
        sleep."""
        wait = super().tick(min=min, **kwargs)
        return float(min(wait, self.fire_schedules()))

    def fire_schedules(self) -> float:
        """Fire every schedule's due slots; seconds until the next slot of any of them."""
        now = self.clock()
        ledger = SlotLedger(self.app.redis(), self.app.keys)
        waits = [self._fire(item, ledger, now) for item in SCHEDULES]
        return min(waits, default=float(self.max_interval))

    def _fire(self, item: Schedule, ledger: SlotLedger, now: datetime) -> float:
        try:
            fire(self.app, item, ledger, now, starting=item.name not in self._fired)
        except Exception:
            log.exception("schedule %r: submitting its due slots failed; trying again", item.name)
            return RETRY_AFTER_S
        self._fired.add(item.name)
        upcoming = item.timing.following(now)
        if upcoming is None:
            return float(self.max_interval)
        return max((upcoming - self.clock()).total_seconds(), 0.0) + WAKE_AFTER_SLOT_S
