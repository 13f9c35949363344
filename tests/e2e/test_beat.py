"""Schedules under real celery beat processes (celery-redbeat's lock), a real worker and Redis.

One run of ~45 s over three one-second schedules (tests/support/schedule_ops.py):

1. beats `a` and `b` start: `a` takes the lock, `b` waits;
2. `a` is stopped (SIGTERM: it releases the lock) and started again as `a2`: `b` takes over;
3. `b` is killed (SIGKILL: its lock expires after 5 x BOT_BEAT_MAX_INTERVAL): `a2` takes over;
4. `a2` is stopped: no beat runs for 10 s;
5. beat `c` starts, runs a few seconds, stops.

Then: every slot's job exists once, was enqueued by one beat once and ran once (its `touch`
counter is 1); `each_second` (catch_up="run", max_catch_up=100) has no gap from its first slot
to its last, the outage included (its missed slots were submitted by `c` when it started);
`each_second_skip` has none of the outage's slots; `each_second_built` (the default: the latest
missed slot runs) ran everything the skip schedule ran, plus a few slots at takeovers, each
with the payload its function built from the slot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from tests.support.beat_process import SCHEDULE_OPS, BeatProcess, submissions
from tests.support.processes import FAULT_OPS, wait_for

pytestmark = pytest.mark.e2e

BEAT_ENV = {"BOT_OPS_MODULES": f"{FAULT_OPS},{SCHEDULE_OPS}", "BOT_BEAT_MAX_INTERVAL": "0.5"}
SCHEDULES = ("each_second", "each_second_skip", "each_second_built")
LOCK_KEY = "bot:redbeat::lock"
OUTAGE_S = 10.0


@pytest.fixture
def start_beat(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[[str], BeatProcess]]:
    started: list[BeatProcess] = []

    def start(name: str) -> BeatProcess:
        beat = BeatProcess(name, {**env, **BEAT_ENV}, tmp_path).start()
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop(timeout_s=10)


def slots_of(client: redis.Redis, name: str) -> dict[datetime, str]:
    """slot -> job id, for every job of the schedule `name`."""
    prefix = f"bot:job:sched.{name}."
    return {
        datetime.strptime(key[len(prefix) :], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC): key[8:]
        for key in client.scan_iter(f"{prefix}*")
    }


def gaps(slots: list[datetime]) -> list[tuple[datetime, datetime]]:
    """(last slot before, first slot after) of each hole in a run of one-second slots."""
    ordered = sorted(slots)
    return [(a, b) for a, b in pairwise(ordered) if b - a > timedelta(seconds=1)]


def wait_all_done(client: redis.Redis, job_ids: list[str]) -> None:
    def done() -> bool:
        return all(client.hget(f"bot:job:{job_id}", "state") == "succeeded" for job_id in job_ids)

    wait_for(done, 30, "every slot's job to complete")


def test_two_beats_a_restart_a_crash_and_an_outage_run_each_slot_once(
    workers: Any, start_beat: Callable[[str], BeatProcess], client: redis.Redis
) -> None:
    workers("w1", extra_env=BEAT_ENV, concurrency=2)
    a = start_beat("a").wait_holding_lock()
    first_tick = datetime.now(UTC)
    b = start_beat("b")
    time.sleep(6)
    assert client.pttl(LOCK_KEY) <= 2500  # 5 x BOT_BEAT_MAX_INTERVAL, in ms
    assert a.stop() == 0  # SIGTERM: a releases the lock, b takes it within 0.5 s
    b.wait_holding_lock(timeout_s=10)
    a2 = start_beat("a2")
    time.sleep(6)
    b.kill()  # its lock stays until it expires; then a2 takes it
    a2.wait_holding_lock(timeout_s=15)
    time.sleep(5)
    outage_from = datetime.now(UTC)
    assert a2.stop() == 0
    assert not client.exists(LOCK_KEY)
    time.sleep(OUTAGE_S)
    outage_to = datetime.now(UTC)
    c = start_beat("c").wait_holding_lock()
    time.sleep(4)
    last_tick = datetime.now(UTC)
    assert c.stop() == 0

    beats = [a, b, a2, c]
    runs, skips, built = (slots_of(client, name) for name in SCHEDULES)
    all_ids = [*runs.values(), *skips.values(), *built.values()]
    wait_all_done(client, all_ids)

    # each slot: enqueued by one beat, once; its op's body ran once
    enqueued = submissions(beats)
    assert sorted(enqueued) == sorted(all_ids)
    assert set(enqueued.values()) == {1}
    touches = [client.get(f"bot:faults:touches:{job_id}") for job_id in all_ids]
    assert touches == ["1"] * len(all_ids)

    # the redbeat lock was held by one beat at a time, in turn: a, b, a2, c
    holders = sorted(
        (when, beat.name)
        for beat in beats
        for when, what in beat.lock_events()
        if what == "acquired"
    )
    assert [name for _, name in holders] == ["a", "b", "a2", "c"]

    # catch_up="run" (bound 100): no gap at all, from the first slot to the last
    assert gaps(list(runs)) == []
    assert min(runs) <= first_tick + timedelta(seconds=2)
    assert max(runs) >= last_tick - timedelta(seconds=2)
    outage_slots = [slot for slot in runs if outage_from + timedelta(seconds=1) < slot < outage_to]
    assert len(outage_slots) >= OUTAGE_S - 2
    assert {runs[slot] for slot in outage_slots} <= set(c.submitted())  # caught up by c

    # catch_up="skip": none of the outage's slots
    assert [slot for slot in skips if outage_from + timedelta(seconds=1) < slot < outage_to] == []
    assert any(after - before >= timedelta(seconds=OUTAGE_S) for before, after in gaps(list(skips)))

    # the default (run the latest missed slot): the skip schedule's slots and one per takeover
    assert set(skips) <= set(built) and 1 <= len(set(built) - set(skips)) <= 3
    paris = ZoneInfo("Europe/Paris")
    for slot, job_id in built.items():
        meta = json.loads(client.get(f"celery-task-meta-{job_id}"))
        assert meta["kwargs"] == {"steps": 1 + slot.astimezone(paris).second % 3}
