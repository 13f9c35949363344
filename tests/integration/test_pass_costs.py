"""Per-pass cost of the fleet machinery against a real redis-server, in round trips (issue 12,
"Many workers"): a heartbeat is one, `bot fleet`'s read two, and a reaper pass the same few
whether the fleet has 10 members or 200, and whether 1 or 50 of them died at once; the memory
guard one INFO per interval, and the outbox retention pass of a worker not holding its lock one.

Round trips are counted on the client: every command or pipeline is one `send_packed_command`
of a redis-py connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bot.fleet.memory_guard import MemoryGuard
from bot.fleet.records import WorkerRecords
from bot.fleet.simulation import SimulatedFleet
from bot.outbox.retention import Bounds, Retention
from bot.recovery.reaper import Reaper
from bot.store import scripts
from bot.store.keys import Keys

pytestmark = pytest.mark.integration

KEYS = Keys("bot")


class CountingConnection(redis.Connection):
    """A connection that counts what it sends: one call per round trip."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


class NoBroker:
    """The reaper's broker side, for fleets without jobs: nothing to put back."""

    def restore(self, tag: str) -> bool:
        return False

    def republish(self, job_id: str, message: dict[str, Any]) -> None:
        raise AssertionError("no job to publish again")

    def stale_tags(self, older_than_s: float) -> list[str]:
        return []

    def return_inboxes(self, instance_id: str) -> int:
        return 0

    def reset(self) -> None:
        pass


@pytest.fixture
def counting(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(
        redis_url, decode_responses=True, connection_class=CountingConnection
    )
    yield client
    client.close()


def round_trips(client: redis.Redis, action: Any) -> int:
    client.ping()  # connected, scripts aside: the count is the action's own
    before = CountingConnection.sent
    action()
    return CountingConnection.sent - before


def simulated(client: redis.Redis, members: int, lease_ttl_s: float = 30.0) -> SimulatedFleet:
    fleet = SimulatedFleet(WorkerRecords(client, KEYS), members, 1.0, lease_ttl_s)
    fleet.register_all()
    return fleet


def reaper(client: redis.Redis) -> Reaper:
    return Reaper(client, KEYS, NoBroker(), lease_ttl_s=0.0, interval_s=1.0, lock_ttl_s=1.0)


def test_a_simulated_heartbeat_is_one_round_trip_and_uses_the_worker_script(counting):
    fleet = simulated(counting, 5)
    member = fleet.members[0]
    fleet.beat(member)  # scripts loaded
    assert round_trips(counting, lambda: fleet.beat(member)) == 1
    assert counting.hget(KEYS.worker(member.instance_id), "pool_kind") == "simulated"
    assert counting.zscore(KEYS.workers, member.instance_id) is not None


@pytest.mark.parametrize("members", [10, 200])
def test_reading_the_fleet_is_two_round_trips_at_any_size(counting, members):
    registry = WorkerRecords(counting, KEYS)
    simulated(counting, members)
    views: list[Any] = []
    assert round_trips(counting, lambda: views.extend(registry.fleet())) == 2
    assert len(views) == members and all(view.alive for view in views)


def test_a_reaper_pass_costs_the_same_round_trips_for_10_and_200_live_members(counting):
    simulated(counting, 10)
    judge = reaper(counting)
    judge.run_once()  # connected and settled
    small = round_trips(counting, judge.run_once)
    simulated(counting, 190)
    assert round_trips(counting, judge.run_once) == small
    assert counting.zcard(KEYS.workers) == 200


@pytest.mark.parametrize("dead", [1, 50])
def test_a_reaper_pass_forgets_dead_members_in_a_fixed_number_of_round_trips(counting, dead):
    fleet = simulated(counting, 200)
    judge = reaper(counting)
    judge.run_once()
    live_pass = round_trips(counting, judge.run_once)
    counting.script_load(scripts.lua_source("forget_instance"))  # as after any earlier pass
    for member in fleet.members[:dead]:
        counting.delete(KEYS.lease(member.instance_id))  # its lease expired
    # pipelines: in-flight sets, forget scripts (with their SCRIPT EXISTS), and the counter
    assert round_trips(counting, judge.run_once) == live_pass + 4
    assert counting.zcard(KEYS.workers) == 200 - dead
    assert judge.counters.instances_reaped == dead
    assert counting.hget(KEYS.stats, "reaper_instances") == str(dead)


def test_the_memory_guard_is_one_info_per_interval_however_often_it_is_asked(counting):
    guard = MemoryGuard(0.9, 60.0)
    assert round_trips(counting, lambda: [guard.check(counting) for _ in range(10)]) == 1


def test_a_retention_pass_of_a_worker_not_holding_the_lock_is_one_round_trip(counting):
    bounds = Bounds(3600.0, 10, 10)
    holder, other = (Retention(counting, KEYS, bounds, interval_s=60.0) for _ in range(2))
    assert holder.run_once() is True
    counting.script_load(scripts.lua_source("hold_lock"))  # as after any earlier pass
    assert round_trips(counting, other.run_once) == 1
