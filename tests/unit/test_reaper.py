"""The reaper's decisions with fakeredis (Lua via lupa), a fake broker and an injected clock."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
import redis

from bot.recovery.reaper import Reaper
from bot.store.keys import Keys

KEYS = Keys("bot")
LEASE_TTL_S = 3.0
INTERVAL_S = 1.0


class FakeRequeue:
    """Records what the reaper asked of the broker; `unacked` plays kombu's unacked hash."""

    def __init__(self) -> None:
        self.unacked: set[str] = set()
        self.restored: list[str] = []
        self.republished: list[tuple[str, dict[str, Any]]] = []
        self.stale: list[str] = []
        self.resets = 0
        self.down = False
        self.inboxes_returned: list[str] = []
        self.inbox_counts: dict[str, int] = {}

    def restore(self, tag: str) -> bool:
        if tag not in self.unacked:
            return False
        self.unacked.discard(tag)
        self.restored.append(tag)
        return True

    def republish(self, job_id: str, message: dict[str, Any]) -> None:
        if self.down:
            raise redis.ConnectionError("broker unreachable")
        self.republished.append((job_id, message))

    def stale_tags(self, older_than_s: float) -> list[str]:
        return list(self.stale)

    def return_inboxes(self, instance_id: str) -> int:
        self.inboxes_returned.append(instance_id)
        return self.inbox_counts.get(instance_id, 0)

    def reset(self) -> None:
        self.resets += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker() -> FakeRequeue:
    return FakeRequeue()


def make_reaper(client: redis.Redis, broker: FakeRequeue, clock: Clock, **kw: Any) -> Reaper:
    return Reaper(
        client,
        KEYS,
        broker,
        lease_ttl_s=LEASE_TTL_S,
        interval_s=INTERVAL_S,
        lock_ttl_s=1.0,
        clock=clock,
        **kw,
    )


def settle(reaper: Reaper, clock: Clock) -> None:
    """Run the first pass (which only starts the wait) and move past one lease TTL."""
    assert reaper.run_once() is False
    clock.now += LEASE_TTL_S


def register(client: redis.Redis, instance: str, *, alive: bool) -> None:
    client.zadd(KEYS.workers, {instance: 1})
    client.hset(KEYS.worker(instance), mapping={"state": "PROCESSING"})
    if alive:
        client.set(KEYS.lease(instance), "1", px=60_000)


def running_job(client: redis.Redis, job_id: str, owner: str, *, tag: str = "", fence: int = 1):
    message = {"task": "ops.touch", "args": [], "kwargs": {"seconds": 1}, "queue": "celery"}
    client.hset(
        KEYS.job(job_id),
        mapping={
            "state": "running",
            "owner": owner,
            "fence": fence,
            "attempts": 1,
            "recoveries": 0,
            "pid": 123,
            "delivery_tag": tag,
            "message": json.dumps(message),
        },
    )
    client.sadd(KEYS.inflight(owner), job_id)
    return message


def test_a_fresh_reaper_waits_one_lease_ttl_before_judging(client, broker, clock):
    # Given a dead instance with a running job
    register(client, "dead", alive=False)
    running_job(client, "j1", "dead", tag="t1")
    broker.unacked.add("t1")
    reaper = make_reaper(client, broker, clock)
    # When the reaper has only just connected
    assert reaper.run_once() is False
    clock.now += LEASE_TTL_S - 0.1
    assert reaper.run_once() is False
    # Then nothing was judged until a lease TTL went by
    assert client.hget(KEYS.job("j1"), "state") == "running"
    clock.now += 0.1
    assert reaper.run_once() is True
    assert client.hget(KEYS.job("j1"), "state") == "queued"


def test_dead_instance_jobs_are_restored_by_tag_and_instance_forgotten(client, broker, clock):
    # Given a live and a dead instance, each with a running job whose message is unacked
    register(client, "live", alive=True)
    register(client, "dead", alive=False)
    running_job(client, "j-live", "live", tag="t-live")
    running_job(client, "j-dead", "dead", tag="t-dead", fence=4)
    broker.unacked |= {"t-live", "t-dead"}
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    # When a pass runs
    assert reaper.run_once() is True
    # Then only the dead instance's job is queued again, with one more recovery, same fence
    dead_job = client.hgetall(KEYS.job("j-dead"))
    assert dead_job["state"] == "queued"
    assert dead_job["recoveries"] == "1"
    assert dead_job["fence"] == "4"
    assert dead_job["owner"] == ""
    assert dead_job["recovered_from"] == "dead"
    assert client.hget(KEYS.job("j-live"), "state") == "running"
    # and its very message went back; nothing was published again
    assert broker.restored == ["t-dead"]
    assert broker.republished == []
    # and the dead instance is forgotten, the live one untouched
    assert client.zrange(KEYS.workers, 0, -1) == ["live"]
    assert not client.exists(KEYS.worker("dead"), KEYS.inflight("dead"))
    assert client.sismember(KEYS.inflight("live"), "j-live")
    stats = client.hgetall(KEYS.stats)
    assert stats["recoveries"] == "1"
    assert stats["reaper_recovered"] == "1"
    assert stats["reaper_restored"] == "1"
    assert stats["reaper_instances"] == "1"
    assert reaper.snapshot()["recovered"] == 1
    assert reaper.snapshot()["restored"] == 1


def test_a_dead_instance_inboxes_are_returned_and_only_its_own(client, broker, clock):
    # Given a dead instance (no job in flight) holding 2 taken messages, and a live one
    register(client, "live", alive=True)
    register(client, "dead", alive=False)
    broker.inbox_counts = {"dead": 2, "live": 5}
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    # When a pass runs
    assert reaper.run_once() is True
    # Then the dead instance's inboxes went back, counted; the live one's were left alone
    assert broker.inboxes_returned == ["dead"]
    assert reaper.snapshot()["inbox_returned"] == 2
    assert client.hget(KEYS.stats, "reaper_inbox_returned") == "2"
    assert client.zrange(KEYS.workers, 0, -1) == ["live"]


def test_job_whose_unacked_entry_is_gone_is_published_again(client, broker, clock):
    # Given a dead instance's job whose unacked entry is gone (acked by a duplicate copy)
    register(client, "dead", alive=False)
    message = running_job(client, "j1", "dead", tag="t-gone")
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    # When a pass runs
    reaper.run_once()
    # Then the job is published again from its record, under its own id
    assert broker.republished == [("j1", message)]
    assert reaper.snapshot()["republished"] == 1
    assert client.hget(KEYS.stats, "reaper_republished") == "1"


def test_a_put_back_the_broker_refused_is_owed_until_it_goes_through(client, broker, clock):
    # Given a dead instance's job, and a broker that fails just as it is to be published again
    register(client, "dead", alive=False)
    message = running_job(client, "j1", "dead", tag="t-gone")
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    broker.down = True
    # When a pass hands the job back but cannot put its message back
    assert reaper.run_once() is False
    assert client.hget(KEYS.job("j1"), "state") == "queued"
    assert broker.republished == []
    # Then the next pass, the broker back, publishes it first thing (before any waiting)
    broker.down = False
    reaper.run_once()
    assert broker.republished == [("j1", message)]
    reaper.run_once()
    assert broker.republished == [("j1", message)]  # once


def test_stale_inflight_entries_are_dropped_without_touching_the_job(client, broker, clock):
    # Given a dead instance whose in-flight set names a job that ended, and one taken over
    register(client, "dead", alive=False)
    register(client, "other", alive=True)
    client.hset(KEYS.job("ended"), mapping={"state": "succeeded", "owner": "dead", "fence": 1})
    client.sadd(KEYS.inflight("dead"), "ended")
    running_job(client, "moved", "other", tag="t")
    client.sadd(KEYS.inflight("dead"), "moved")
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    # When a pass runs
    reaper.run_once()
    # Then neither job changed, nothing was put back, and the instance is forgotten
    assert client.hget(KEYS.job("ended"), "state") == "succeeded"
    assert client.hget(KEYS.job("moved"), "state") == "running"
    assert broker.restored == [] and broker.republished == []
    assert client.zrange(KEYS.workers, 0, -1) == ["other"]
    assert reaper.snapshot()["recovered"] == 0


def test_a_reaped_job_is_not_reaped_twice(client, broker, clock):
    # Given a dead instance's job that one pass already recovered
    register(client, "dead", alive=False)
    running_job(client, "j1", "dead", tag="t1")
    broker.unacked.add("t1")
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    reaper.run_once()
    # When the same id shows up again in the (re-created) in-flight set and a pass runs
    register(client, "dead", alive=False)
    client.sadd(KEYS.inflight("dead"), "j1")
    clock.now += INTERVAL_S
    reaper.run_once()
    # Then the job counts one recovery only
    assert client.hget(KEYS.job("j1"), "recoveries") == "1"
    assert broker.restored == ["t1"]


def test_only_one_reaper_passes_at_a_time(client, broker, clock):
    # Given two settled reapers and the lock held by a third
    first = make_reaper(client, broker, clock)
    second = make_reaper(client, broker, clock)
    first.run_once()
    second.run_once()
    clock.now += LEASE_TTL_S
    client.set(KEYS.reaper_lock, "someone-else", px=5000)
    # When both try to pass, then neither does while another holds the lock
    assert first.run_once() is False
    assert second.run_once() is False
    client.delete(KEYS.reaper_lock)
    assert first.run_once() is True
    # and the lock is kept after a pass: the holder passes again, the other not (one pass per
    # interval fleet-wide, not one per worker), until it expires
    assert client.pttl(KEYS.reaper_lock) > 0
    assert second.run_once() is False
    assert first.run_once() is True
    client.delete(KEYS.reaper_lock)  # as it expires when its holder dies
    assert second.run_once() is True


def test_a_redis_restart_makes_the_reaper_wait_again(client, broker, clock, monkeypatch):
    # Given a settled reaper
    run_ids = iter(["a", "a", "b", "b", "b"])
    monkeypatch.setattr(client, "info", lambda section=None: {"run_id": next(run_ids)})
    register(client, "dead", alive=False)
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    assert reaper.run_once() is True
    # When Redis comes back with a new run_id
    clock.now += INTERVAL_S
    # Then the reaper waits one lease TTL again
    assert reaper.run_once() is False
    clock.now += INTERVAL_S
    assert reaper.run_once() is False
    clock.now += LEASE_TTL_S
    assert reaper.run_once() is True


def test_a_long_gap_between_passes_counts_as_a_reconnect(client, broker, clock):
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    assert reaper.run_once() is True
    # When this process was paused (or its timer stalled) for longer than a lease TTL
    clock.now += LEASE_TTL_S + INTERVAL_S + 1
    # Then it does not judge others at once
    assert reaper.run_once() is False


def test_connection_errors_restart_the_wait(client, broker, clock, monkeypatch):
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)

    def down(*_: Any, **__: Any) -> Any:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(client, "zrange", down)
    assert reaper.run_once() is False
    assert reaper.snapshot()["errors"] == 1
    assert broker.resets == 1
    monkeypatch.undo()
    clock.now += INTERVAL_S
    assert reaper.run_once() is False  # waiting again
    clock.now += LEASE_TTL_S
    assert reaper.run_once() is True


def test_orphan_sweep_restores_messages_nobody_renews(client, broker, clock):
    # Given unacked messages that no live worker renewed (e.g. a dead worker's countdown job)
    broker.unacked |= {"o1", "o2"}
    broker.stale = ["o1", "o2", "already-gone"]
    reaper = make_reaper(client, broker, clock, orphan_age_s=2 * LEASE_TTL_S)
    settle(reaper, clock)
    # When a pass runs
    reaper.run_once()
    # Then they go back to their queue; a tag already gone counts nothing
    assert broker.restored == ["o1", "o2"]
    assert reaper.snapshot()["orphans_restored"] == 2
    assert client.hget(KEYS.stats, "reaper_orphans_restored") == "2"


def test_orphan_sweep_is_off_without_an_age(client, broker, clock):
    broker.unacked.add("o1")
    broker.stale = ["o1"]
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    reaper.run_once()
    assert broker.restored == []


def test_an_instance_whose_lease_is_back_is_not_forgotten(client, broker, clock, monkeypatch):
    # Given an instance judged dead whose lease comes back during the pass (it was paused)
    register(client, "paused", alive=False)
    running_job(client, "j1", "paused", tag="t1")
    broker.unacked.add("t1")
    original = broker.restore

    def restore_and_revive(tag: str) -> bool:
        client.set(KEYS.lease("paused"), "1", px=60_000)
        return original(tag)

    monkeypatch.setattr(broker, "restore", restore_and_revive)
    reaper = make_reaper(client, broker, clock)
    settle(reaper, clock)
    reaper.run_once()
    # Then its job was recovered (its owner cannot complete it: fenced) but its record stays
    assert client.hget(KEYS.job("j1"), "state") == "queued"
    assert client.zrange(KEYS.workers, 0, -1) == ["paused"]
    assert client.exists(KEYS.worker("paused"))
