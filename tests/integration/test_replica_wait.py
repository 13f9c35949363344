"""BOT_REDIS_MIN_REPLICAS: WAIT after a job's end, against a real primary and replica; and a
short count (logged and counted, the job is not failed) where no replica answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bot.jobs.store import REPLICA_WAIT_SHORT, ReplicaWait
from tests.support.redis_server import RedisServer
from tests.support.sentinel import ReplicaServer

pytestmark = pytest.mark.integration

STATS = "bot:stats"


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer(tmp_path / "primary", appendonly=False)
    replica = ReplicaServer(tmp_path / "replica", primary.port)
    primary.start()
    replica.start()
    try:
        yield primary, replica
    finally:
        replica.stop(kill=True)
        primary.stop(kill=True)


def wait_linked(replica: RedisServer) -> None:
    for _ in range(200):
        if replica.client().info("replication").get("master_link_status") == "up":
            return
        time.sleep(0.05)
    raise AssertionError("replica never linked")


def test_a_replica_acknowledges_the_end_of_a_job(
    primary_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = primary_and_replica
    wait_linked(replica)
    client = primary.client()
    client.xadd("bot:outbox", {"job_id": "j1"})

    acked = ReplicaWait(min_replicas=1, timeout_ms=2000).after_end(client, STATS, "j1")

    assert acked == 1
    assert client.hget(STATS, REPLICA_WAIT_SHORT) is None
    assert replica.client().xlen("bot:outbox") == 1


def test_no_replica_in_time_is_logged_and_counted(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = private_redis.client()
    client.xadd("bot:outbox", {"job_id": "j2"})

    acked = ReplicaWait(min_replicas=1, timeout_ms=100).after_end(client, STATS, "j2")

    assert acked == 0
    assert client.hget(STATS, REPLICA_WAIT_SHORT) == "1"
    assert "only 0 of 1 replica(s) acknowledged" in caplog.text


def test_no_wait_when_not_asked(private_redis: RedisServer) -> None:
    client: redis.Redis = private_redis.client()
    assert ReplicaWait().after_end(client, STATS, "j3") is None
