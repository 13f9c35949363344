"""The outbox's stream operations against a real redis-server 7.0: groups, claims, dead
letters, replay, retention trimming and stats; plus the Redis 7.0 stream behaviours they rely
on, pinned so a Redis upgrade that changes them fails here first."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

import bot.outbox.stream as stream_module
from bot.outbox.stream import Outbox, id_ms
from bot.store.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys("bot")


@pytest.fixture
def box(client: redis.Redis) -> Outbox:
    return Outbox(client, KEYS)


def append(client: redis.Redis, n: int, start: int = 0) -> list[str]:
    report = {"job_id": "", "status": "succeeded"}
    return [
        str(
            client.xadd(
                KEYS.outbox,
                {"job_id": f"j{i}", "report": json.dumps({**report, "job_id": f"j{i}"})},
            )
        )
        for i in range(start, start + n)
    ]


def test_redis_70_stream_behaviours_the_relay_relies_on(client: redis.Redis) -> None:
    # Given a group with two entries delivered to consumer c1, one of them then XDEL'd
    stream = KEYS.outbox
    client.xgroup_create(stream, "g", "0", mkstream=True)
    first, second = append(client, 2)
    client.xreadgroup("g", "c1", {stream: ">"})
    client.xdel(stream, first)

    # XPENDING still lists the deleted id; reading history returns it with nil fields
    assert [p["message_id"] for p in client.xpending_range(stream, "g", "-", "+", 10)] == [
        first,
        second,
    ]
    history: Any = client.xreadgroup("g", "c1", {stream: "0"})
    assert history[0][1][0][0] == first
    assert not history[0][1][0][1]  # nil fields (redis-py 8 shows them as {})
    # XCLAIM JUSTID resets idle without counting a delivery; XCLAIM counts one
    counts = {
        p["message_id"]: p["times_delivered"]
        for p in client.xpending_range(stream, "g", "-", "+", 10)
    }
    client.xclaim(stream, "g", "c1", 0, [second], justid=True)
    after = {
        p["message_id"]: p["times_delivered"]
        for p in client.xpending_range(stream, "g", "-", "+", 10)
    }
    assert after[second] == counts[second]
    claimed: Any = client.xclaim(stream, "g", "c2", 0, [second])
    assert claimed[0][0] == second
    assert (
        client.xpending_range(stream, "g", second, second, 1)[0]["times_delivered"]
        == counts[second] + 1
    )
    # XAUTOCLAIM (7.0) answers deleted ids in its third element and drops them from the list
    reply: Any = client.xautoclaim(stream, "g", "c3", 0, "0-0")
    assert reply[2] == [first]
    assert [p["message_id"] for p in client.xpending_range(stream, "g", "-", "+", 10)] == [second]
    # XINFO GROUPS reports lag (7.0+), used for "unread" in stats
    assert "lag" in client.xinfo_groups(stream)[0]


def test_a_new_group_reads_every_retained_entry(box: Outbox, client: redis.Redis) -> None:
    ids = append(client, 3)

    assert box.ensure_group("billing") is True
    assert box.ensure_group("billing") is False

    entries = box.read_new(KEYS.outbox, "billing", "b1", 10)
    assert [e.id for e in entries] == ids
    assert [e.job_id for e in entries] == ["j0", "j1", "j2"]


def test_dead_letter_moves_and_acks_but_other_groups_still_get_the_entry(
    box: Outbox, client: redis.Redis
) -> None:
    # Given two groups; http has read j0 and failed it 3 times
    box.ensure_group("http")
    box.ensure_group("billing")
    append(client, 1)
    (entry,) = box.read_new(KEYS.outbox, "http", "r1", 10)

    # When it is dead-lettered
    dead_id = box.dead_letter(entry, "http", "HTTP 500")

    # Then it is in the dead stream with its sink and reason, acked for http, kept for billing
    (dead,) = box.dead()
    assert dead["id"] == dead_id
    assert (dead["job_id"], dead["group"], dead["reason"], dead["source_id"]) == (
        "j0",
        "http",
        "HTTP 500",
        entry.id,
    )
    assert json.loads(dead["report"])["job_id"] == "j0"
    assert box.pending(KEYS.outbox, "http", 10) == []
    assert [e.id for e in box.read_new(KEYS.outbox, "billing", "b1", 10)] == [entry.id]
    # and a second dead-letter of the same entry does nothing
    assert box.dead_letter(entry, "http", "HTTP 500") == "acked"
    assert len(box.dead()) == 1


def test_dead_letter_of_a_deleted_entry_only_acks_it(box: Outbox, client: redis.Redis) -> None:
    box.ensure_group("http")
    append(client, 1)
    (entry,) = box.read_new(KEYS.outbox, "http", "r1", 10)
    client.xdel(KEYS.outbox, entry.id)

    assert box.dead_letter(entry, "http", "HTTP 500") == "gone"
    assert box.dead() == []
    assert box.pending(KEYS.outbox, "http", 10) == []


def test_replay_goes_back_to_the_refusing_group_only_once(box: Outbox, client: redis.Redis) -> None:
    # Given j0 dead-lettered by http while billing has it already
    box.ensure_group("http")
    box.ensure_group("billing")
    append(client, 1)
    box.read_new(KEYS.outbox, "billing", "b1", 10)
    (entry,) = box.read_new(KEYS.outbox, "http", "r1", 10)
    (dead,) = [box.dead_letter(entry, "http", "HTTP 500")] and box.dead()

    # When it is replayed (twice)
    new_id = box.replay(dead["id"])
    again = box.replay(dead["id"])

    # Then http reads it once from its replay stream, billing not again, the dead stream is empty
    assert new_id is not None and again is None
    replayed = box.read_new(KEYS.outbox_replay("http"), "http", "r1", 10)
    assert [(e.id, e.job_id, json.loads(e.report)["job_id"]) for e in replayed] == [
        (new_id, "j0", "j0")
    ]
    assert box.read_new(KEYS.outbox, "billing", "b1", 10) == []
    assert box.read_new(KEYS.outbox, "http", "r1", 10) == []
    assert box.dead() == []


def test_replay_all(box: Outbox, client: redis.Redis) -> None:
    box.ensure_group("http")
    append(client, 7)
    for entry in box.read_new(KEYS.outbox, "http", "r1", 10):
        box.dead_letter(entry, "http", "HTTP 500")

    assert box.replay_all(batch=3) == 7

    assert box.dead() == []
    assert len(box.read_new(KEYS.outbox_replay("http"), "http", "r1", 100)) == 7


def test_trim_with_a_sink_far_behind_keeps_everything_it_owes(
    box: Outbox, client: redis.Redis
) -> None:
    # Given 1,000 entries: "fast" read and acked all; "slow" read 100, acked 50
    box.ensure_group("fast")
    box.ensure_group("slow")
    ids = append(client, 1000)
    box.ack(KEYS.outbox, "fast", *[e.id for e in box.read_new(KEYS.outbox, "fast", "f", 1000)])
    slow = box.read_new(KEYS.outbox, "slow", "s", 100)
    box.ack(KEYS.outbox, "slow", *[e.id for e in slow[:30]], *[e.id for e in slow[40:60]])

    # When trimmed to a 10-entry target
    trimmed = box.trim(max_len=10)

    # Then only what slow no longer owes went: its oldest pending entry (#30) is the first kept
    assert trimmed == 30
    assert client.xrange(KEYS.outbox, "-", "+", 1)[0][0] == ids[30]
    assert box.pending(KEYS.outbox, "slow", 100)[0].id == ids[30]
    # and once slow has caught up, the length target applies
    rest = box.read_new(KEYS.outbox, "slow", "s", 1000)
    box.ack(KEYS.outbox, "slow", *[e.id for e in slow[30:40] + slow[60:] + rest])
    assert box.trim(max_len=10) == 960
    assert [e[0] for e in client.xrange(KEYS.outbox)] == ids[-10:]


def test_trim_keeps_entries_a_group_has_not_read_yet(box: Outbox, client: redis.Redis) -> None:
    box.ensure_group("http")
    ids = append(client, 20)
    box.ack(KEYS.outbox, "http", *[e.id for e in box.read_new(KEYS.outbox, "http", "r", 5)])

    assert box.trim(max_len=1, max_age_s=0) == 5

    assert client.xlen(KEYS.outbox) == 15
    assert client.xrange(KEYS.outbox, "-", "+", 1)[0][0] == ids[5]


def test_trim_by_age(box: Outbox, client: redis.Redis) -> None:
    box.ensure_group("http")
    old = [
        str(client.xadd(KEYS.outbox, {"job_id": f"o{i}", "report": "{}"}, id=f"1000-{i}"))
        for i in range(3)
    ]
    new = append(client, 2)
    box.ack(KEYS.outbox, "http", *[e.id for e in box.read_new(KEYS.outbox, "http", "r", 10)])

    assert box.trim(max_age_s=3600, now_ms=id_ms(new[0]) + 1000) == len(old)

    assert [e[0] for e in client.xrange(KEYS.outbox)] == new


def test_trim_without_groups_uses_the_target_only(box: Outbox, client: redis.Redis) -> None:
    append(client, 5)
    assert box.trim(max_len=2) == 3
    assert box.trim(stream=KEYS.outbox_replay("http")) == 0  # a stream that does not exist


def test_trim_goes_past_the_scan_limit_in_steps(
    box: Outbox, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 100 entries, a 10-entry bound and a length scan of at most 7 entries per step
    monkeypatch.setattr(stream_module, "TRIM_SCAN_MAX", 7)
    ids = append(client, 100)

    done = box.trim_to(KEYS.outbox, max_age_s=3600, max_len=10)

    # Then one call trimmed to the bound, in steps; no group held it
    assert (done.count, done.held) == (90, False)
    assert [e[0] for e in client.xrange(KEYS.outbox)] == ids[-10:]


def test_trim_says_when_a_group_held_it_below_the_target(box: Outbox, client: redis.Redis) -> None:
    box.ensure_group("slow")
    ids = append(client, 30)
    box.read_new(KEYS.outbox, "slow", "s", 5)  # owes all 30: 5 pending, 25 unread

    done = box.trim_to(KEYS.outbox, max_age_s=3600, max_len=10)

    # Then nothing went, and the trim says a group held it below its target: the entry just
    # after the 20 beyond the bound
    assert (done.count, done.held) == (0, True)
    ms, seq = stream_module.parse_id(ids[19])
    assert done.target == (ms, seq + 1)
    assert client.xlen(KEYS.outbox) == 30


def test_claim_stale_takes_a_dead_consumers_entries(box: Outbox, client: redis.Redis) -> None:
    box.ensure_group("http")
    ids = append(client, 3)
    box.read_new(KEYS.outbox, "http", "dead-relay", 10)

    assert box.claim_stale(KEYS.outbox, "http", "live", min_idle_ms=60_000, count=10) == []
    claimed = box.claim_stale(KEYS.outbox, "http", "live", min_idle_ms=0, count=10)

    assert [(e.id, e.deliveries) for e in claimed] == [(i, 2) for i in ids]
    assert {p.consumer for p in box.pending(KEYS.outbox, "http", 10)} == {"live"}
    assert box.prune_consumers(KEYS.outbox, "http", keep="live", min_idle_ms=-1) == 1
    assert [c["name"] for c in client.xinfo_consumers(KEYS.outbox, "http")] == ["live"]


def test_stats(box: Outbox, client: redis.Redis) -> None:
    # Given 10 entries: http read 4 (acked 1), billing read none; one dead letter
    box.ensure_group("http")
    box.ensure_group("billing")
    ids = append(client, 10)
    read = box.read_new(KEYS.outbox, "http", "r", 4)
    box.ack(KEYS.outbox, "http", read[0].id)
    box.dead_letter(read[1], "http", "HTTP 500")

    stats = box.stats(now_ms=id_ms(ids[0]) + 5000)

    assert (stats["length"], stats["dead"]) == (10, 1)
    groups = {g["group"]: g for g in stats["groups"]}
    assert (groups["http"]["pending"], groups["http"]["unread"], groups["http"]["owed"]) == (
        2,
        6,
        8,
    )
    assert (groups["billing"]["pending"], groups["billing"]["unread"]) == (0, 10)
    assert groups["billing"]["oldest_owed_age_s"] == 5.0
    assert groups["http"]["oldest_owed_age_s"] == round(
        (id_ms(ids[0]) + 5000 - id_ms(read[2].id)) / 1000, 3
    )
    assert stats["oldest_pending_age_s"] == 5.0


def test_stats_of_an_empty_outbox(box: Outbox) -> None:
    assert box.stats() == {
        "stream": "bot:outbox",
        "length": 0,
        "groups": [],
        "oldest_pending_age_s": 0.0,
        "dead": 0,
    }
