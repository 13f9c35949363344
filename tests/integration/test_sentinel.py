"""Under Redis Sentinel, against real processes (a primary, a replica, three sentinels): bot's
own client and bot's kombu transport follow the master to the promoted replica by themselves,
and the transport's no-message-lost repair holds across a failover.

Observed (redis-py 7 / kombu 5.7), pinned here: a command on a connection to the killed primary
raises ConnectionError (the caller retries, as bot's callers do with UNREACHABLE); the next
connection asks the sentinels, which name the old primary until they promote the replica
(connection refused meanwhile) and the replica after."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from bot.broker.transport import STRANDED, SentinelChannel, install
from bot.store.connect import UNREACHABLE, connect
from config.settings import Settings
from tests.support.sentinel import MASTER_NAME, SentinelSet, running_sentinel_set

pytestmark = pytest.mark.integration

QUEUE = Queue("sentinel-test", Exchange("sentinel-test"), "sentinel-test")
OPTIONS = {"master_name": MASTER_NAME}


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    with running_sentinel_set(tmp_path / "sentinel-set") as cluster:
        yield cluster


def retry_until_written(client: redis.Redis, key: str, timeout_s: float) -> int:
    """SET `key` until it succeeds; how many attempts failed as unreachable."""
    failures = 0
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.set(key, "1")
            return failures
        except UNREACHABLE:
            failures += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_bots_client_follows_the_master_to_the_promoted_replica(
    sentinel_set: SentinelSet, tmp_path: Path
) -> None:
    # Given bot's client on the sentinels, writing to the primary
    settings = Settings(
        redis_url=sentinel_set.url(), redis_sentinel_master=MASTER_NAME, state_dir=tmp_path
    )
    client = connect(settings, socket_timeout_s=2.0)
    client.set("before", "1")
    assert sentinel_set.primary.client().get("before") == "1"

    # When the primary is killed and Sentinel promotes the replica
    sentinel_set.primary.stop(kill=True)
    failures = retry_until_written(client, "during", timeout_s=20)
    sentinel_set.wait_promoted(timeout_s=20)

    # Then the same client object writes to the promoted replica; at least one command failed
    # as unreachable on the way (the caller's retry is what carries it over)
    assert failures >= 1
    assert sentinel_set.replica.client().get("during") == "1"
    client.set("after", "1")
    assert sentinel_set.replica.client().get("after") == "1"


@pytest.fixture
def primary_killed_at_unacked_write(
    sentinel_set: SentinelSet, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """kill -9 the primary right after BRPOP returned, before kombu records the message."""
    original = kombu_redis.QoS.append

    def append_after_kill(self: Any, message: Any, delivery_tag: Any) -> None:
        monkeypatch.setattr(kombu_redis.QoS, "append", original)  # once
        sentinel_set.primary.stop(kill=True)
        original(self, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", append_after_kill)
    monkeypatch.setattr(STRANDED, "_messages", [])
    yield


def test_a_message_taken_as_the_primary_dies_is_put_back_on_the_promoted_replica(
    sentinel_set: SentinelSet, primary_killed_at_unacked_write: None
) -> None:
    # Given bot's Sentinel transport (sentinel:// resolves to it) and one message
    install()
    url = sentinel_set.url()
    with Connection(url, transport_options=OPTIONS) as conn:
        assert isinstance(conn.default_channel, SentinelChannel)
    publish_via_sentinel(url, [{"n": 1}])

    # When the primary dies between BRPOP and the unacked write, and the replica is promoted
    received = consume_via_sentinel(url)
    sentinel_set.wait_promoted(timeout_s=20)

    # Then the message was kept, and the next channel puts it back on the new primary
    assert received == []
    assert len(STRANDED) == 1
    assert open_channel_via_sentinel(url)
    assert len(STRANDED) == 0
    assert sentinel_set.replica.client().llen(QUEUE.name) == 1
    assert consume_via_sentinel(url) == [{"n": 1}]


def publish_via_sentinel(url: str, bodies: list[dict[str, int]]) -> None:
    with Connection(url, transport_options=OPTIONS) as conn:
        producer = conn.Producer(serializer="json")
        for body in bodies:
            producer.publish(body, exchange=QUEUE.exchange, routing_key=QUEUE.name, declare=[QUEUE])


def consume_via_sentinel(url: str) -> list[Any]:
    """Consume with a consumer that acks; what reached the callback (maybe nothing)."""
    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    with (
        Connection(url, transport_options=OPTIONS) as conn,
        conn.Consumer(QUEUE, callbacks=[on_message], accept=["json"]),
        contextlib.suppress(*conn.connection_errors),
    ):
        conn.drain_events(timeout=5)
    return received


def open_channel_via_sentinel(url: str, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(*UNREACHABLE, OSError),
            Connection(url, transport_options=OPTIONS, connect_timeout=1) as conn,
        ):
            return conn.default_channel is not None
        time.sleep(0.2)
    return False
