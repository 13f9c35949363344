"""`bot schedules` lists each schedule with its spec, target, catch-up policy, the last slot a beat
fired (from Redis) and the next one, as a table and as JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import redis

from tests.support.beat_process import SCHEDULE_OPS
from tests.support.processes import FAULT_OPS, run_bot

pytestmark = pytest.mark.integration

LAST = datetime(2024, 3, 31, 1, 0, 7, tzinfo=UTC)


def test_bot_schedules_shows_last_and_next_slot(env: dict[str, str], client: redis.Redis) -> None:
    env = {**env, "BOT_OPS_MODULES": f"{FAULT_OPS},{SCHEDULE_OPS}"}
    client.zadd("bot:schedules:last", {"each_second_built": LAST.timestamp()})
    before = datetime.now(UTC)

    done = run_bot(env, "schedules", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert sorted(listed) == ["each_second", "each_second_built", "each_second_skip"]
    built = listed["each_second_built"]
    assert built["every"] == 1 and built["tz"] == "Europe/Paris" and built["op"] == "touch"
    assert built["payload"] == "built per slot" and built["catch_up"] == "run"
    assert built["last_slot"] == "2024-03-31T01:00:07+00:00"
    assert built["last_id"] == "sched.each_second_built.2024-03-31T01:00:07Z"
    assert datetime.fromisoformat(built["next_slot"]) > before
    assert built["next_id"].startswith("sched.each_second_built.")
    assert listed["each_second"]["last_slot"] is None  # no beat fired it yet
    assert listed["each_second_skip"]["catch_up"] == "skip"

    done = run_bot(env, "schedules")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == [
        "schedule",
        "spec",
        "target",
        "catch-up",
        "last",
        "slot",
        "next",
        "slot",
    ]
    assert rows[0].split()[:7] == ["each_second", "every", "1s", "op", "touch", "run", "(newest"]
    # the built schedule's slots show in its zone: 01:00:07 UTC is 03:00:07 in Paris (CEST)
    assert "2024-03-31 03:00:07+02:00" in rows[1] and "every 1s Europe/Paris" in rows[1]
    assert rows[2].split()[:7] == ["each_second_skip", "every", "1s", "op", "touch", "skip", "-"]
