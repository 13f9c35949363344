"""Pins how kombu 5.7's Redis transport keeps unacked messages: bot's renewal and reaper build
on exactly this, so a kombu upgrade that changes it must fail here first.

Real kombu against the session's private redis-server. Relied on (DESIGN "Job lifecycle and
leases"): hash `unacked` (tag -> [payload, exchange, routing_key]); zset `unacked_index` (tag
-> delivery time in time.time() seconds); the visibility sweep restores entries older than
visibility_timeout; restore_by_tag puts one message back (leftmost=False: the head, next to
be consumed; leftmost=True: the tail); a redelivered copy keeps its tag; keys unprefixed
unless global_keyprefix; the sweep's knobs are transport options of those names.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from bot.store.keys import KOMBU_UNACKED, KOMBU_UNACKED_INDEX

pytestmark = pytest.mark.integration

QUEUE = "layout"


def open_channel(redis_url: str, **options: Any) -> Iterator[Any]:
    conn = Connection(redis_url, transport_options=options)
    try:
        yield conn.channel()
    finally:
        conn.release()


@pytest.fixture
def channel(redis_url: str) -> Iterator[Any]:
    yield from open_channel(redis_url, visibility_timeout=60)


def queue_of(name: str = QUEUE) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def publish(channel: Any, *bodies: Any, queue: Queue | None = None) -> None:
    queue = queue or queue_of()
    producer = Producer(channel)
    for body in bodies:
        producer.publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            serializer="json",
        )


def take(channel: Any, queue: Queue | None = None) -> Any:
    """Consume one message without acking it (what a worker holding a job does)."""
    message = (queue or queue_of())(channel).get(no_ack=False)
    assert message is not None, "queue was empty"
    return message


def test_unacked_hash_and_index_layout(channel: Any, client: redis.Redis) -> None:
    # Given a published message
    publish(channel, {"n": 1})
    before = time.time()
    # When it is delivered and not acked
    message = take(channel)
    after = time.time()
    # Then `unacked` maps its tag to [payload, exchange, routing_key]
    tag = message.delivery_tag
    assert client.hkeys(KOMBU_UNACKED) == [tag]
    payload, exchange, routing_key = json.loads(client.hget(KOMBU_UNACKED, tag))
    assert (exchange, routing_key) == (QUEUE, QUEUE)
    assert payload["properties"]["delivery_tag"] == tag
    assert payload["properties"]["body_encoding"] == "base64"
    assert json.loads(base64.b64decode(payload["body"])) == {"n": 1}
    # and `unacked_index` scores the tag with the delivery time in seconds (time.time())
    score = client.zscore(KOMBU_UNACKED_INDEX, tag)
    assert score is not None and before - 0.01 <= score <= after + 0.01
    # When it is acked, both entries go
    message.ack()
    assert not client.exists(KOMBU_UNACKED) and not client.exists(KOMBU_UNACKED_INDEX)


def test_visibility_sweep_restores_only_entries_older_than_the_timeout(
    redis_url: str, client: redis.Redis
) -> None:
    for channel in open_channel(redis_url, visibility_timeout=30):
        # Given two held messages, one delivered (scored) 31 s ago and one just now
        publish(channel, {"n": "old"}, {"n": "new"})
        old, new = take(channel), take(channel)
        client.zadd(KOMBU_UNACKED_INDEX, {old.delivery_tag: time.time() - 31})
        # When kombu's sweep runs (interval=1: scan on this call, no throttling)
        channel.qos.restore_visible(num=10, interval=1)
        # Then only the old one is back in its queue, and out of both unacked keys
        assert client.llen(QUEUE) == 1
        assert client.hkeys(KOMBU_UNACKED) == [new.delivery_tag]
        assert client.zrange(KOMBU_UNACKED_INDEX, 0, -1) == [new.delivery_tag]


def test_renewing_the_score_with_zadd_xx_keeps_a_message_from_the_sweep(
    redis_url: str, client: redis.Redis
) -> None:
    for channel in open_channel(redis_url, visibility_timeout=30):
        # Given a held message delivered 31 s ago, and a tag acked a moment ago
        publish(channel, {"n": 1})
        held = take(channel)
        client.zadd(KOMBU_UNACKED_INDEX, {held.delivery_tag: time.time() - 31})
        # When a heartbeat renews both with ZADD XX (what bot's renewal does)
        renewed = client.zadd(
            KOMBU_UNACKED_INDEX, {held.delivery_tag: time.time(), "acked-tag": time.time()}, xx=True
        )
        channel.qos.restore_visible(num=10, interval=1)
        # Then the held one is not restored, and XX did not create an orphan entry
        assert renewed == 0  # XX updates without adding
        assert client.llen(QUEUE) == 0
        assert client.zrange(KOMBU_UNACKED_INDEX, 0, -1) == [held.delivery_tag]


def test_restore_by_tag_puts_the_message_at_the_head_and_keeps_its_tag(
    channel: Any, client: redis.Redis
) -> None:
    # Given a held message A and two waiting messages B, C
    publish(channel, {"n": "A"}, {"n": "B"}, {"n": "C"})
    first = take(channel)
    assert first.decode() == {"n": "A"}
    # When A is restored by its tag (leftmost=False, the default)
    channel.qos.restore_by_tag(first.delivery_tag)
    # Then it is out of both unacked keys and the very next delivery, before B and C
    assert not client.exists(KOMBU_UNACKED) and not client.exists(KOMBU_UNACKED_INDEX)
    again = take(channel)
    assert again.decode() == {"n": "A"}
    # and the redelivered copy keeps its tag (and is marked redelivered)
    assert again.delivery_tag == first.delivery_tag
    assert again.delivery_info.get("redelivered") is True
    assert client.hkeys(KOMBU_UNACKED) == [first.delivery_tag]


def test_restore_by_tag_leftmost_puts_the_message_at_the_tail(
    channel: Any, client: redis.Redis
) -> None:
    # Given a held message A and two waiting messages B, C
    publish(channel, {"n": "A"}, {"n": "B"}, {"n": "C"})
    first = take(channel)
    # When A is restored with leftmost=True (what Celery's reject(requeue=True) uses)
    channel.qos.restore_by_tag(first.delivery_tag, leftmost=True)
    # Then B and C come first: publishers LPUSH, consumers BRPOP (the right end is the head)
    order = [take(channel).decode()["n"] for _ in range(3)]
    assert order == ["B", "C", "A"]


def test_restore_by_tag_of_a_gone_entry_does_nothing(channel: Any, client: redis.Redis) -> None:
    publish(channel, {"n": 1})
    message = take(channel)
    message.ack()
    channel.qos.restore_by_tag(message.delivery_tag)
    assert client.llen(QUEUE) == 0


def test_keys_are_unprefixed_unless_global_keyprefix(redis_url: str, client: redis.Redis) -> None:
    # Given a channel with global_keyprefix
    for channel in open_channel(redis_url, global_keyprefix="pfx:"):
        publish(channel, {"n": 1})
        take(channel)
        # Then its queue and unacked keys carry the prefix
        assert client.exists(f"pfx:{KOMBU_UNACKED}", f"pfx:{KOMBU_UNACKED_INDEX}") == 2
        assert not client.exists(KOMBU_UNACKED)
        assert channel.unacked_key == KOMBU_UNACKED  # the name before prefixing
    # and without it the names are exactly bot.store.keys' constants
    for channel in open_channel(redis_url):
        assert (channel.unacked_key, channel.unacked_index_key) == (
            KOMBU_UNACKED,
            KOMBU_UNACKED_INDEX,
        )


def test_sweep_knobs_are_transport_options(redis_url: str) -> None:
    # Given the options BOT_BROKER_TRANSPORT_OPTIONS passes through for a frequent sweep
    for channel in open_channel(
        redis_url, visibility_timeout=5, unacked_restore_interval=1, unacked_restore_throttle=1
    ):
        # Then the channel takes them under exactly those names
        assert channel.visibility_timeout == 5
        assert channel.unacked_restore_interval == 1
        assert channel.unacked_restore_throttle == 1
    # and the defaults make the sweep scan about every 100 s (interval 10 x throttle 10)
    for channel in open_channel(redis_url):
        assert (channel.unacked_restore_interval, channel.unacked_restore_throttle) == (10, 10)
        assert channel.visibility_timeout == 3600
