"""The outbox retention pass against a real redis-server 7.0, in-process: trimming to the bounds
with no relay, never past what a group owes, a group behind (by length, by age) reported and
recorded, the replay streams trimmed, dead letters bounded by count only, one pass per interval
fleet-wide (two instances), and a Redis over its maxmemory still trimmed."""

from __future__ import annotations

import logging

import pytest
import redis

from bot.outbox.retention import (
    DEAD_DROPPED_STAT,
    Bounds,
    Retention,
    mark_behind,
    read_behind,
)
from bot.outbox.stream import Outbox
from bot.store.keys import Keys
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

KEYS = Keys("bot")
BOUNDS = Bounds(max_age_s=3600.0, max_len=10, dead_max_len=5)


def retention(client: redis.Redis, bounds: Bounds = BOUNDS, interval_s: float = 60.0) -> Retention:
    return Retention(client, KEYS, bounds, interval_s=interval_s)


def append(client: redis.Redis, n: int, stream: str = KEYS.outbox, **xadd: str) -> list[str]:
    return [
        str(client.xadd(stream, {"job_id": f"j{i}", "report": "{}"}, **xadd))  # type: ignore[arg-type]
        for i in range(n)
    ]


def test_with_no_group_and_no_relay_the_outbox_is_trimmed_to_its_length(
    client: redis.Redis,
) -> None:
    ids = append(client, 25)

    assert retention(client).run_once() is True

    assert [e[0] for e in client.xrange(KEYS.outbox)] == ids[-10:]
    assert read_behind(client, KEYS) == {}


def test_entries_older_than_the_age_bound_go_once_no_group_owes_them(
    client: redis.Redis,
) -> None:
    box = Outbox(client, KEYS)
    box.ensure_group("http")
    old = [str(client.xadd(KEYS.outbox, {"job_id": f"o{i}"}, id=f"1000-{i}")) for i in range(3)]
    new = append(client, 2)
    read = box.read_new(KEYS.outbox, "http", "r", 10)
    box.ack(KEYS.outbox, "http", *[e.id for e in read])

    assert retention(client).run_once() is True

    assert [e[0] for e in client.xrange(KEYS.outbox)] == new
    assert len(old) == 3 and read_behind(client, KEYS) == {}


def test_a_group_that_never_reads_keeps_what_it_owes_and_is_reported_behind(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a group "billing" that never reads, and 30 reports (the bound is 10)
    box = Outbox(client, KEYS)
    box.ensure_group("billing")
    ids = append(client, 30)

    with caplog.at_level(logging.WARNING, logger="bot.outbox.retention"):
        assert retention(client).run_once() is True

    # Then nothing it owes is trimmed
    assert [e[0] for e in client.xrange(KEYS.outbox)] == ids
    # and it is reported: a warning naming it, its lag and the way out; the recorded verdict
    assert "outbox group billing is behind: owes 30 report(s)" in caplog.text
    assert "beyond BOT_OUTBOX_MAX_LEN (10)" in caplog.text
    assert "XGROUP DESTROY bot:outbox billing" in caplog.text
    verdict = read_behind(client, KEYS)
    assert set(verdict) == {"billing"}
    assert (verdict["billing"]["owed"], verdict["billing"]["bound"]) == (30, "length")
    assert 0 <= verdict["billing"]["oldest_owed_age_s"] < 60
    assert 0 < client.pttl(KEYS.outbox_behind) <= 180_000  # three intervals
    stats = mark_behind(box.stats(), verdict)
    assert stats["behind"] == ["billing"]
    assert (stats["groups"][0]["behind"], stats["groups"][0]["behind_bound"]) == (True, "length")

    # When it catches up, the next pass trims to the bound and clears the verdict
    box.ack(KEYS.outbox, "billing", *[e.id for e in box.read_new(KEYS.outbox, "billing", "b", 50)])
    assert retention(client).run_once() is False  # another instance: the lock is held
    client.delete(KEYS.outbox_retention_lock)  # as it expires after one interval
    assert retention(client).run_once() is True
    assert [e[0] for e in client.xrange(KEYS.outbox)] == ids[-10:]
    assert read_behind(client, KEYS) == {} and not client.exists(KEYS.outbox_behind)


def test_a_group_owing_entries_past_the_age_bound_is_behind_by_age(client: redis.Redis) -> None:
    box = Outbox(client, KEYS)
    box.ensure_group("http")
    box.ensure_group("stuck")
    client.xadd(KEYS.outbox, {"job_id": "old"}, id="1000-0")
    box.ensure_group("fresh", start_id="$")  # created after the old entry
    append(client, 3)
    box.ack(KEYS.outbox, "http", *[e.id for e in box.read_new(KEYS.outbox, "http", "r", 10)])
    box.read_new(KEYS.outbox, "stuck", "s", 1)  # holds the old entry pending, never acks
    box.read_new(KEYS.outbox, "fresh", "f", 1)  # owes new entries only: within the bounds

    retention(client).run_once()

    verdict = read_behind(client, KEYS)
    assert set(verdict) == {"stuck"}
    assert (verdict["stuck"]["bound"], verdict["stuck"]["owed"]) == ("age", 4)
    assert verdict["stuck"]["oldest_owed_age_s"] > 3600
    assert client.xrange(KEYS.outbox, "-", "+", 1)[0][0] == "1000-0"  # still kept


def test_replay_streams_are_trimmed_and_dead_letters_bounded_by_count_only(
    client: redis.Redis,
) -> None:
    # Given the http group, 20 entries on its replay stream (read and acked), and 8 dead
    # letters from long ago
    box = Outbox(client, KEYS)
    box.ensure_group("http")
    replay = KEYS.outbox_replay("http")
    box.ensure_group("http", replay)
    replayed = append(client, 20, replay)
    box.ack(replay, "http", *[e.id for e in box.read_new(replay, "http", "r", 50)])
    dead = [f"{1000 + i}-0" for i in range(8)]
    for dead_id in dead:
        client.xadd(KEYS.outbox_dead, {"job_id": dead_id}, id=dead_id)

    retention(client).run_once()

    assert [e[0] for e in client.xrange(replay)] == replayed[-10:]
    assert [e[0] for e in client.xrange(KEYS.outbox_dead)] == dead[-5:]  # old, but kept
    assert client.hget(KEYS.stats, DEAD_DROPPED_STAT) == "3"


def test_dead_letters_are_all_kept_with_no_dead_bound(client: redis.Redis) -> None:
    for i in range(8):
        client.xadd(KEYS.outbox_dead, {"job_id": f"d{i}"})

    retention(client, Bounds(3600.0, 10, dead_max_len=0)).run_once()

    assert client.xlen(KEYS.outbox_dead) == 8


def test_one_instance_passes_per_interval_fleet_wide(client: redis.Redis) -> None:
    # Given two workers' retention services on one Redis
    first, second = retention(client, interval_s=2.0), retention(client, interval_s=2.0)
    append(client, 15)

    # The first to come holds the lock for an interval and keeps it at its next pass
    assert first.run_once() is True
    assert second.run_once() is False
    assert first.run_once() is True
    assert 0 < client.pttl(KEYS.outbox_retention_lock) <= 2000
    assert (first.counters.passes, second.counters.passes) == (2, 0)
    assert first.counters.trimmed == 5

    # Once its holder stops passing, the lock expires and the other takes over
    client.delete(KEYS.outbox_retention_lock)
    assert second.run_once() is True
    assert first.run_once() is False


def test_a_redis_over_maxmemory_is_still_trimmed(private_redis: RedisServer) -> None:
    # Given a Redis refusing writes (noeviction, over its maxmemory) and an outbox past its bound
    client = private_redis.client()
    ids = append(client, 200)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 300_000)
    with pytest.raises(redis.OutOfMemoryError):
        for i in range(100):
            client.set(f"junk{i}", "x" * 10_000)

    # When the retention pass runs: the lock's SET is refused, XTRIM is not
    assert retention(client).run_once() is True

    # Then it trimmed (what frees memory) without the lock, and recorded nothing
    assert [e[0] for e in client.xrange(KEYS.outbox)] == ids[-10:]
    assert not client.exists(KEYS.outbox_retention_lock)
    assert read_behind(client, KEYS) == {}


def test_a_group_destroyed_since_the_verdict_is_not_listed_behind(client: redis.Redis) -> None:
    box = Outbox(client, KEYS)
    box.ensure_group("billing")
    append(client, 30)
    retention(client).run_once()
    assert set(read_behind(client, KEYS)) == {"billing"}

    client.xgroup_destroy(KEYS.outbox, "billing")

    assert mark_behind(box.stats(), read_behind(client, KEYS))["behind"] == []
