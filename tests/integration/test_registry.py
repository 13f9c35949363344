"""The registry scripts against a real redis-server: register, heartbeat (one script call,
the same number of Redis commands with 0 and with 50 jobs in flight), renewal of kombu's
`unacked_index` scores with ZADD XX, deregister, and reading the fleet back."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from kombu import Connection

from bot.fleet.records import WorkerRecords
from bot.store.keys import KOMBU_UNACKED_INDEX, Keys, kombu_key

pytestmark = pytest.mark.integration

KEYS = Keys("bot")
LEASE_MS = 3000


@pytest.fixture
def registry(client: redis.Redis) -> WorkerRecords:
    return WorkerRecords(client, KEYS)


def register(registry: WorkerRecords, instance_id: str = "i-1", **fields: Any) -> None:
    record = {"instance_id": instance_id, "bot_id": "bot-x", "state": "READY", **fields}
    registry.register(instance_id, record, LEASE_MS, "bot-x", {"sum": '{"type": "object"}'})


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def commands_of_one_heartbeat(
    client: redis.Redis, registry: WorkerRecords, tags: list[str]
) -> dict:
    registry.heartbeat("i-1", {"state": "READY"}, LEASE_MS, "bot-x", tags)  # load the script
    client.config_resetstat()
    registry.heartbeat(
        "i-1", {"state": "PROCESSING", "in_flight": len(tags)}, LEASE_MS, "bot-x", tags
    )
    stats = commandstats(client)
    stats.pop("config|resetstat", None)
    return stats


def test_register_writes_record_lease_registry_entry_and_op_schemas(
    client: redis.Redis, registry: WorkerRecords
) -> None:
    # Given a stale field from an earlier registration of the same instance
    client.hset(KEYS.worker("i-1"), "stale", "x")

    register(registry, queues=["celery", "bulk"])

    record = client.hgetall(KEYS.worker("i-1"))
    assert record["state"] == "READY"
    assert json.loads(record["queues"]) == ["celery", "bulk"]
    assert "stale" not in record  # replaced, not merged
    assert 0 < client.pttl(KEYS.lease("i-1")) <= LEASE_MS
    assert client.get(KEYS.lease("i-1")) == "bot-x"
    assert client.zscore(KEYS.workers, "i-1") == pytest.approx(time.time() * 1000, abs=5000)
    assert client.hget(KEYS.ops, "sum") == '{"type": "object"}'


def test_heartbeat_renews_lease_and_refreshes_the_record(
    client: redis.Redis, registry: WorkerRecords
) -> None:
    register(registry)
    client.pexpire(KEYS.lease("i-1"), 100)

    beat = registry.heartbeat("i-1", {"state": "PROCESSING", "done": 3}, LEASE_MS, "bot-x")

    assert beat.record_missing is False and beat.lease_existed is True
    assert client.pttl(KEYS.lease("i-1")) > 1000
    record = client.hgetall(KEYS.worker("i-1"))
    assert (record["state"], record["done"]) == ("PROCESSING", "3")
    assert int(record["last_heartbeat"]) == pytest.approx(time.time() * 1000, abs=5000)


def test_heartbeat_reports_an_expired_lease_and_takes_it_again(
    client: redis.Redis, registry: WorkerRecords
) -> None:
    register(registry)
    client.delete(KEYS.lease("i-1"))

    beat = registry.heartbeat("i-1", {}, LEASE_MS, "bot-x")

    assert beat.lease_existed is False
    assert client.exists(KEYS.lease("i-1")) == 1


def test_heartbeat_without_a_record_writes_nothing(
    client: redis.Redis, registry: WorkerRecords
) -> None:
    # Given a worker the reaper already forgot
    beat = registry.heartbeat("i-1", {"state": "READY"}, LEASE_MS, "bot-x", ["t1"])

    assert beat.record_missing is True
    assert client.exists(KEYS.worker("i-1"), KEYS.lease("i-1"), KEYS.workers) == 0


def test_heartbeat_renews_held_tags_and_does_not_recreate_acked_ones(
    client: redis.Redis, registry: WorkerRecords
) -> None:
    register(registry)
    client.zadd(KOMBU_UNACKED_INDEX, {"held-1": 1.0, "held-2": 2.0, "someone-elses": 3.0})

    before = time.time()
    beat = registry.heartbeat("i-1", {}, LEASE_MS, "bot-x", ["held-1", "held-2", "acked"])

    assert beat.tags_renewed == 2
    scores = dict(client.zrange(KOMBU_UNACKED_INDEX, 0, -1, withscores=True))
    assert scores["held-1"] >= before and scores["held-2"] >= before
    assert scores["someone-elses"] == 3.0
    assert "acked" not in scores  # ZADD XX: an acked tag is not re-created


def test_renewal_honours_global_keyprefix_and_renamed_index(client: redis.Redis) -> None:
    options = {"global_keyprefix": "pfx:", "unacked_index_key": "my_index"}
    registry = WorkerRecords(client, KEYS, options)
    register(registry)
    client.zadd("pfx:my_index", {"t1": 1.0})

    registry.heartbeat("i-1", {}, LEASE_MS, "bot-x", ["t1"])

    assert registry.unacked_index == "pfx:my_index"
    assert client.zscore("pfx:my_index", "t1") > 1.0
    assert client.exists(KOMBU_UNACKED_INDEX) == 0


def test_kombu_indexes_a_delivery_under_the_prefixed_key_with_float_seconds(
    redis_url: str, client: redis.Redis
) -> None:
    """Pins what the renewal mimics (kombu 5.7 transport/redis.py QoS.append): the tag goes
    into `global_keyprefix + unacked_index` scored with time() in float seconds."""
    options = {"global_keyprefix": "pfx:"}
    with Connection(redis_url, transport_options=options) as conn:
        queue = conn.SimpleQueue("registry-test")
        queue.put({"n": 1})
        before = time.time()
        message = queue.get(timeout=5)
        try:
            tag = message.delivery_tag
            assert kombu_key(KOMBU_UNACKED_INDEX, options) == "pfx:unacked_index"
            score = client.zscore("pfx:unacked_index", tag)
            assert score is not None and before - 1 <= score <= time.time() + 1
            assert score != int(score) or score > 1e9  # seconds, not milliseconds
        finally:
            message.ack()
            queue.close()


def test_one_heartbeat_is_one_script_call_with_0_or_50_jobs_in_flight(
    client: redis.Redis, registry: WorkerRecords
) -> None:
    # Given a worker holding 50 unacked deliveries
    register(registry)
    tags = [f"tag-{n}" for n in range(50)]
    client.zadd(KOMBU_UNACKED_INDEX, {tag: 1.0 for tag in tags})

    # When it beats holding none, one, and all of them
    idle = commands_of_one_heartbeat(client, registry, [])
    one = commands_of_one_heartbeat(client, registry, tags[:1])
    busy = commands_of_one_heartbeat(client, registry, tags)

    # Then each heartbeat is one round trip (EVALSHA), whatever the jobs in flight ...
    for stats in (idle, one, busy):
        assert {k: v for k, v in stats.items() if k in ("evalsha", "eval")} == {"evalsha": 1}
    # ... and inside the script Redis runs the same commands for 1 and for 50 tags; with none
    # held it only skips the one ZADD XX of the tags.
    assert one == busy
    assert idle == {**busy, "zadd": busy["zadd"] - 1}
    assert all(
        score > 1.0 for _, score in client.zrange(KOMBU_UNACKED_INDEX, 0, -1, withscores=True)
    )


def test_deregister_leaves_nothing_behind(client: redis.Redis, registry: WorkerRecords) -> None:
    register(registry)

    left = registry.deregister("i-1")

    assert left == 0
    assert client.exists(KEYS.worker("i-1"), KEYS.lease("i-1")) == 0
    assert client.zscore(KEYS.workers, "i-1") is None


def test_deregister_keeps_the_registry_entry_while_jobs_are_owed(
    client: redis.Redis, registry: WorkerRecords
) -> None:
    # Given a cold shutdown that killed a job this instance owns
    register(registry)
    client.sadd(KEYS.inflight("i-1"), "job-1")

    left = registry.deregister("i-1")

    # Then record and lease go, but the reaper can still find the instance and its job
    assert left == 1
    assert client.exists(KEYS.worker("i-1"), KEYS.lease("i-1")) == 0
    assert client.zscore(KEYS.workers, "i-1") is not None
    (view,) = registry.fleet()
    assert view.state == "GONE"


def test_fleet_shows_live_dead_and_gone_workers(
    client: redis.Redis, registry: WorkerRecords
) -> None:
    register(registry, "alive")
    register(registry, "dead")
    register(registry, "gone")
    client.delete(KEYS.lease("dead"))
    client.delete(KEYS.lease("gone"), KEYS.worker("gone"))

    views = {view.instance_id: view for view in registry.fleet()}

    assert {k: v.state for k, v in views.items()} == {
        "alive": "READY",
        "dead": "DEAD",
        "gone": "GONE",
    }
    assert views["alive"].alive and not views["dead"].alive
    assert registry.worker("nobody") is None
