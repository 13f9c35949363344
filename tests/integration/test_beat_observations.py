"""What bot relies on in celery beat and celery-redbeat, pinned against a real Redis
(bot/flows/beat.py says why each matters):

- the versions these observations were made on: Celery 5.7, celery-redbeat 2.4;
- a redbeat entry fires "now" and remembers when it fired, so the slots missed while no beat
  ran collapse into one run: the reason bot's schedules are not redbeat entries;
- redbeat's lock is `bot:redbeat::lock` (under BOT_KEY_PREFIX), taken before the first tick with
  a TTL of five max intervals, extended on each tick; a second scheduler cannot take it; a tick
  whose lock was lost raises (celery beat's loop lets it end the beat); close() releases it;
- BotScheduler's tick fires bot's schedules and sleeps until the next slot; a slot whose
  publish failed is tried again a second later, not lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery.schedules import schedule as every
from kombu.exceptions import OperationalError
from redbeat.schedulers import RedBeatSchedulerEntry, acquire_distributed_beat_lock

from bot.application import BotApp
from bot.flows import beat as beat_module
from bot.flows.beat import RETRY_AFTER_S, BotScheduler
from bot.flows.slots import SlotLedger
from bot.pipelines.schedules import Interval, Schedule, ScheduleRegistry

pytestmark = pytest.mark.integration

LOCK_KEY = "bot:redbeat::lock"


def test_the_versions_these_observations_hold_for() -> None:
    assert version("celery").startswith("5.7.")
    assert version("celery-redbeat").startswith("2.4.")


def test_a_redbeat_entry_collapses_the_slots_missed_during_an_outage_into_one_run(
    bot_app: BotApp,
) -> None:
    ten_seconds_ago = datetime.now(UTC) - timedelta(seconds=10)
    entry = RedBeatSchedulerEntry(
        "one-second", "ops.touch", every(timedelta(seconds=1)), app=bot_app
    )
    entry.last_run_at = ten_seconds_ago
    entry.save()
    assert entry.key == "bot:redbeat:one-second"  # under BOT_KEY_PREFIX
    due, _ = entry.is_due()
    assert due  # ten slots missed: due, once
    fired = next(entry)  # what the scheduler does when it sends the task
    # last_run_at is now, not ten_seconds_ago + 1 s: the nine other slots are gone
    assert fired.last_run_at > ten_seconds_ago + timedelta(seconds=9)
    again, wait_s = fired.is_due()
    assert not again and 0 < wait_s <= 1


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> ScheduleRegistry:
    """A fresh registry in place of the one BotScheduler fires."""
    fresh = ScheduleRegistry()
    monkeypatch.setattr(beat_module, "SCHEDULES", fresh)
    return fresh


def locked_scheduler(app: BotApp, clock: Any = None) -> BotScheduler:
    """A BotScheduler that took redbeat's lock as `celery beat` has it take it (beat_init)."""
    kwargs = {"clock": clock} if clock is not None else {}
    scheduler = BotScheduler(app, lazy=True, **kwargs)
    acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=scheduler))
    return scheduler


@pytest.fixture
def scheduler(bot_app: BotApp) -> Iterator[BotScheduler]:
    held = locked_scheduler(bot_app)
    yield held
    held.close()


def test_redbeat_takes_its_lock_under_the_key_prefix_and_releases_it_on_close(
    bot_app: BotApp, client: redis.Redis
) -> None:
    held = locked_scheduler(bot_app)
    lock_timeout_ms = bot_app.settings.beat_max_interval * 5 * 1000
    assert 0 < client.pttl(LOCK_KEY) <= lock_timeout_ms
    standby = redis.Redis.from_url(bot_app.settings.redis_url).lock(LOCK_KEY, timeout=5)
    assert not standby.acquire(blocking=False)  # a second beat waits
    held.close()
    assert not client.exists(LOCK_KEY)
    assert standby.acquire(blocking=False)
    standby.release()


def test_a_tick_whose_lock_was_lost_raises(
    scheduler: BotScheduler, client: redis.Redis, registry: ScheduleRegistry
) -> None:
    scheduler.tick()
    client.delete(LOCK_KEY)  # e.g. expired while the beat stalled, and another beat took it
    with pytest.raises(redis.exceptions.LockNotOwnedError):
        scheduler.tick()


def test_a_tick_fires_bot_schedules_and_sleeps_until_the_next_slot(
    bot_app: BotApp, client: redis.Redis, registry: ScheduleRegistry
) -> None:
    now = [datetime(2024, 1, 1, 10, 0, 0, 250_000, tzinfo=UTC)]
    registry.define(Schedule("tick", Interval(2), "op", "touch", {}))
    registry.resolve()
    held = locked_scheduler(bot_app, clock=lambda: now[0])
    try:
        wait_s = held.tick()  # first sight: the current slot is recorded, nothing submitted
        assert 1.7 < wait_s < 1.8 and client.llen("celery") == 0
        now[0] += timedelta(seconds=4)
        held.tick()
        assert client.llen("celery") == 2
        assert client.exists("bot:job:sched.tick.2024-01-01T10:00:04Z")
        last = SlotLedger(bot_app.redis(), bot_app.keys).last("tick")
        assert last == datetime(2024, 1, 1, 10, 0, 4, tzinfo=UTC)
    finally:
        held.close()


def test_a_slot_whose_publish_failed_is_submitted_on_a_later_tick(
    bot_app: BotApp, client: redis.Redis, registry: ScheduleRegistry
) -> None:
    now = [datetime(2024, 1, 1, 10, 0, 0, 500_000, tzinfo=UTC)]
    registry.define(Schedule("tick", Interval(1), "op", "touch", {}))
    registry.resolve()
    held = locked_scheduler(bot_app, clock=lambda: now[0])
    try:
        held.tick()
        now[0] += timedelta(seconds=1)

        def broker_down(*args: Any, **kwargs: Any) -> Any:
            raise OperationalError("broker down")

        bot_app.send_task = broker_down  # type: ignore[method-assign]
        assert held.tick() == RETRY_AFTER_S
        assert not client.exists("bot:job:sched.tick.2024-01-01T10:00:01Z")  # the id is free
        del bot_app.send_task  # Celery's own again
        now[0] += timedelta(seconds=1)
        held.tick()
        assert client.exists("bot:job:sched.tick.2024-01-01T10:00:01Z")
        assert client.exists("bot:job:sched.tick.2024-01-01T10:00:02Z")
        assert client.llen("celery") == 2
    finally:
        held.close()
