"""bot.broker.transport against a real redis-server that stops between BRPOP and the unacked write.

The fault is put exactly in the window: kombu's own `QoS.append` (the unacked write) is wrapped
so that redis-server is stopped just before it runs. With kombu's transport the message is then
gone for good (pinned: an upgrade that fixes kombu shows up here); with bot's it is back at the
head of its queue as soon as the process connects again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError
from kombu.transport import redis as kombu_redis

from bot.broker.transport import STRANDED, TRANSPORT, Transport, install
from tests.support.redis_server import RedisServer

#: kombu's own Redis transport, named so: once bot's is installed, `redis://` resolves to bot's.
KOMBU = "kombu.transport.redis:Transport"
QUEUE = Queue("stranded-test", Exchange("stranded-test"), "stranded-test")


@pytest.fixture
def outage_at_unacked_write(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Stop redis-server right after BRPOP returned, before kombu records the message."""
    original = kombu_redis.QoS.append

    def append_after_outage(self: Any, message: Any, delivery_tag: Any) -> None:
        monkeypatch.setattr(kombu_redis.QoS, "append", original)  # once
        private_redis.stop()
        original(self, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", append_after_outage)
    monkeypatch.setattr(STRANDED, "_messages", [])  # this test's own; the process's after
    yield


def publish(url: str, transport: str | None, bodies: list[dict[str, int]]) -> None:
    with Connection(url, transport=transport) as conn:
        producer = conn.Producer(serializer="json")
        for body in bodies:
            producer.publish(
                body, exchange=QUEUE.exchange, routing_key="stranded-test", declare=[QUEUE]
            )


def open_channel(url: str, transport: str | None) -> bool:
    """Connect and open a channel, as Celery does when it reconnects."""
    with Connection(url, transport=transport, connect_timeout=1) as conn:
        return conn.default_channel is not None


def consume_one(url: str, transport: str | None) -> list[Any]:
    """Consume with a consumer that acks; returns what reached the callback (maybe nothing)."""
    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    with (
        Connection(url, transport=transport) as conn,
        conn.Consumer(QUEUE, callbacks=[on_message], accept=["json"]),
        contextlib.suppress(*conn.connection_errors),
    ):
        conn.drain_events(timeout=5)
    return received


def test_kombu_loses_a_message_taken_just_before_redis_went_away(
    private_redis: RedisServer, outage_at_unacked_write: None
) -> None:
    # Given one message on a queue and kombu's own Redis transport
    publish(private_redis.url(), KOMBU, [{"n": 1}])

    # When Redis goes away after BRPOP and before the unacked write, then comes back
    received = consume_one(private_redis.url(), KOMBU)
    private_redis.start()
    assert open_channel(private_redis.url(), KOMBU)

    # Then the message is nowhere: not delivered, not queued, not unacked (kombu 5.7)
    client = private_redis.client()
    assert received == []
    assert client.llen("stranded-test") == 0
    assert client.hlen("unacked") == 0


def test_installed_bot_transport_serves_redis_urls_and_keeps_their_scheme() -> None:
    install()
    with Connection("redis://127.0.0.1:1/0") as conn, Connection("rediss://127.0.0.1:1/0") as tls:
        assert conn.transport_cls == "redis" and tls.transport_cls == "rediss"
        assert type(conn.transport) is Transport and type(tls.transport) is Transport
        # the scheme Flower reads to pick its broker client
        assert conn.as_uri().startswith("redis://")


def test_bot_transport_puts_that_message_back_at_the_head_of_its_queue(
    private_redis: RedisServer, outage_at_unacked_write: None
) -> None:
    # Given two messages on a queue and bot's transport
    publish(private_redis.url(), TRANSPORT, [{"n": 1}, {"n": 2}])

    # When Redis goes away after the first BRPOP and before its unacked write
    received = consume_one(private_redis.url(), TRANSPORT)
    assert received == []
    assert len(STRANDED) == 1
    private_redis.start()
    assert open_channel(private_redis.url(), TRANSPORT)  # the first new channel puts it back

    # Then it is back, at the head: it is delivered first, marked redelivered
    assert len(STRANDED) == 0
    assert private_redis.client().llen("stranded-test") == 2
    assert consume_one(private_redis.url(), TRANSPORT) == [{"n": 1}]
    assert consume_one(private_redis.url(), TRANSPORT) == [{"n": 2}]


def test_stranded_messages_wait_while_redis_is_still_away(
    private_redis: RedisServer, outage_at_unacked_write: None
) -> None:
    # Given a message stranded by an outage
    publish(private_redis.url(), TRANSPORT, [{"n": 7}])
    consume_one(private_redis.url(), TRANSPORT)
    assert len(STRANDED) == 1

    # When a channel cannot be opened yet, they stay; once it can, they go back
    with pytest.raises(OperationalError):
        open_channel(private_redis.url(), TRANSPORT)
    assert len(STRANDED) == 1
    private_redis.start()
    assert open_channel(private_redis.url(), TRANSPORT)
    assert len(STRANDED) == 0
    assert consume_one(private_redis.url(), TRANSPORT) == [{"n": 7}]


def test_a_put_back_interrupted_by_redis_keeps_the_messages(
    private_redis: RedisServer, outage_at_unacked_write: None
) -> None:
    # Given a channel opened while Redis was up, and then a message stranded by an outage
    publish(private_redis.url(), TRANSPORT, [{"n": 3}])
    with Connection(private_redis.url(), transport=TRANSPORT) as conn:
        channel = conn.default_channel
        consume_one(private_redis.url(), TRANSPORT)
        assert len(STRANDED) == 1

        # When a put-back through that channel fails (Redis still away)
        with pytest.raises(redis.ConnectionError):
            STRANDED.put_back(channel)

    # Then the message is still kept, and goes back once a channel can be opened
    assert len(STRANDED) == 1
    private_redis.start()
    assert open_channel(private_redis.url(), TRANSPORT)
    assert len(STRANDED) == 0
    assert consume_one(private_redis.url(), TRANSPORT) == [{"n": 3}]


def restore_on_a_detached_channel(private_redis: RedisServer, transport: str | None) -> None:
    """The state a Celery worker's channel was seen in when Redis went away (a CI run,
    Celery 5.7 / kombu 5.7): the consumer's `collect()` had detached the transport from its
    connection (`client = None`) and an earlier close had stopped at a Redis error, so the
    final close disconnects the pools and restores the unacked messages once more."""
    publish(private_redis.url(), transport, [{"n": 1}])
    conn = Connection(private_redis.url(), transport=transport)
    held: list[Any] = []
    consumer = conn.Consumer(QUEUE, callbacks=[lambda body, message: held.append(message)])
    consumer.consume()
    conn.drain_events(timeout=5)  # delivered, not acked
    assert len(held) == 1
    channel = conn.default_channel
    private_redis.stop()
    channel._disconnect_pools()  # what the Redis channel's close() does first
    channel.connection.client = None  # what Connection.collect() does to the transport
    channel.qos.restore_unacked_once()  # what the virtual channel's close() does next


def test_kombu_crashes_restoring_on_a_detached_channel(private_redis: RedisServer) -> None:
    # kombu 5.7 dereferences the missing connection: an AttributeError, which Celery reports
    # as an unrecoverable error, and the worker shuts down
    with pytest.raises(AttributeError, match="hostname"):
        restore_on_a_detached_channel(private_redis, KOMBU)


def test_bot_transport_leaves_the_messages_to_the_sweeps_instead(
    private_redis: RedisServer,
) -> None:
    # bot's transport skips the restore: the message stays in Redis's unacked hash, which the
    # orphan sweep (bot/recovery/reaper.py) and kombu's visibility sweep put back
    restore_on_a_detached_channel(private_redis, TRANSPORT)
    private_redis.start()
    assert private_redis.client().hlen("unacked") == 1


def settle_on_a_closed_channel(redis_url: str, transport: str | None, how: str) -> None:
    """A worker's state seen in CI (Celery 5.7 / kombu 5.7): a pool child handed its job back
    (`Reject(requeue=True)`, Redis unreachable) and the reject reached the main process after
    the consumer had reconnected: the message's channel was closed, and closing a channel
    unhooks it from its connection (`close_channel` sets `channel.connection = None`)."""
    publish(redis_url, transport, [{"n": 1}])
    conn = Connection(redis_url, transport=transport)
    held: list[Any] = []
    consumer = conn.Consumer(QUEUE, callbacks=[lambda body, message: held.append(message)])
    consumer.consume()
    conn.drain_events(timeout=5)  # delivered, not acked
    held[0].channel._disconnect_pools()  # what the Redis channel's close() does first
    held[0].channel.connection = None  # what Transport.close_channel() does last
    if how == "reject":
        held[0].reject(requeue=True)
    else:
        held[0].ack()


@pytest.mark.parametrize("how", ["reject", "ack"])
def test_kombu_crashes_settling_a_message_of_a_closed_channel(redis_url: str, how: str) -> None:
    with pytest.raises(AttributeError, match="client"):
        settle_on_a_closed_channel(redis_url, KOMBU, how)


@pytest.mark.parametrize("how", ["reject", "ack"])
def test_bot_transport_leaves_such_a_message_to_the_sweeps(
    redis_url: str, client: redis.Redis, how: str
) -> None:
    settle_on_a_closed_channel(redis_url, TRANSPORT, how)

    assert client.hlen("unacked") == 1  # the reaper's orphan sweep and kombu's sweep restore it


@pytest.mark.parametrize("item", [b"not json", b"[1, 2]", b"[" * 100_000], ids=str)
def test_kombu_stops_on_a_queue_item_that_is_not_one_of_its_messages(
    redis_url: str, item: bytes
) -> None:
    # stock kombu 5.7 raises out of its read: in a worker, Celery's "Unrecoverable error"
    redis.Redis.from_url(redis_url).lpush("stranded-test", item)
    with pytest.raises((ValueError, TypeError, KeyError, RecursionError)):
        consume_one(redis_url, KOMBU)


@pytest.mark.parametrize("item", [b"not json", b'{"body": 5}', b"[1, 2]", b"[" * 100_000], ids=str)
def test_bot_transport_drops_such_an_item_and_reads_on(redis_url: str, item: bytes) -> None:
    # Given an item no kombu message is, ahead of a good message
    publish(redis_url, TRANSPORT, [{"n": 1}])
    redis.Redis.from_url(redis_url).rpush("stranded-test", item)  # the end BRPOP takes first
    # When a consumer reads: the bad item is dropped (logged), the good message delivered
    received: list[Any] = []
    for _ in range(2):
        received += consume_one(redis_url, TRANSPORT)
    assert received == [{"n": 1}]
    assert redis.Redis.from_url(redis_url).llen("stranded-test") == 0


def test_a_channel_reuses_one_redis_client_per_connection_pool(redis_url: str) -> None:
    """kombu builds a new client for every publish and ack; bot's channel keeps one per pool,
    and a new one when the pool is replaced (after a reconnect)."""
    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        given = redis.Redis.from_url(redis_url)
        with channel.conn_or_acquire(given) as passed:
            assert passed is given
        channel._pool = None  # what kombu does when it drops its pools
        with channel.conn_or_acquire() as fresh:
            assert fresh is not first
            assert fresh.connection_pool is channel.pool
        publish(redis_url, TRANSPORT, [{"n": 1}])
        assert consume_one(redis_url, TRANSPORT) == [{"n": 1}]


def test_message_reads_use_redis_pys_own_parser(redis_url: str) -> None:
    """Messages are read whole (BRPOP, the asynchronous pool) in the worker's main process;
    hiredis's reader kept the largest one's size until the next reply
    (tests/e2e/test_hostile_input.py bounds what a 50 MB body leaves)."""
    from redis._parsers import _RESP2Parser

    with Connection(redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        assert channel.async_pool.connection_kwargs["parser_class"] is _RESP2Parser
        assert "parser_class" not in channel.pool.connection_kwargs  # hiredis where installed
