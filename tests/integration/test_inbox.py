"""bot/broker/inbox.py against a real redis-server that is restarted (SIGTERM) under a consumer.

Pinned first: Redis 7.0 stopped with SIGTERM drops the reply of a BRPOP it executed in its last
round, after writing the pop to its AOF, so a consumer that pops in a tight loop loses one
message per restart (kombu's consumer does exactly that). Then: bot's transport in a fleet
worker (an instance id set) loses none, and a dead consumer's inbox goes back through the
reaper's requeue.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from bot.application import create_app
from bot.broker.inbox import KEY_PREFIX_OPTION
from bot.broker.transport import TRANSPORT
from bot.recovery.requeue import BrokerRequeue
from bot.runtime.process import RUNTIME
from bot.store.inbox import inbox_key, registry_key
from config.settings import Settings
from tests.support.redis_server import RedisServer

QUEUE = Queue("inbox-test", Exchange("inbox-test"), "inbox-test")
INSTANCE = "inst-under-test"


@pytest.fixture
def fleet_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process plays a fleet worker's main process: its channels read through inboxes."""
    monkeypatch.setattr(RUNTIME, "instance_id", INSTANCE)
    yield INSTANCE


def publish(url: str, bodies: list[dict[str, int]], **options: Any) -> None:
    with Connection(url, transport=TRANSPORT, transport_options=options) as conn:
        producer = conn.Producer(serializer="json")
        for body in bodies:
            producer.publish(
                body, exchange=QUEUE.exchange, routing_key="inbox-test", declare=[QUEUE]
            )


def pop_until_stopped(port: int, got: list[bytes], stop: threading.Event) -> None:
    client = redis.Redis(port=port, socket_timeout=2)
    while not stop.is_set():
        try:
            item = client.brpop(["raw"], timeout=1)
        except redis.RedisError:
            return
        if item:
            got.append(item[1])


def test_redis_stopped_with_sigterm_drops_the_reply_of_a_brpop_it_executed(
    private_redis: RedisServer,
) -> None:
    # Given 2,000 items and a client popping them in a tight loop, as a consumer does
    lost = []
    for _trial in range(5):
        client = private_redis.client()
        client.delete("raw")
        client.lpush("raw", *range(2000))
        got: list[bytes] = []
        stop = threading.Event()
        popper = threading.Thread(target=pop_until_stopped, args=(private_redis.port, got, stop))
        popper.start()
        time.sleep(0.05)

        # When redis-server is stopped with SIGTERM (AOF, fsync always) and started again
        private_redis.stop()
        stop.set()
        popper.join(timeout=10)
        private_redis.start()

        # Then an item was popped for good (the AOF has the pop) and never reached the client
        lost.append(2000 - len(got) - private_redis.client().llen("raw"))
        if lost[-1]:
            break
    assert max(lost) >= 1, f"no item lost in {len(lost)} restarts: Redis flushes replies now"


def body_of(payload: dict[str, Any]) -> int:
    return int(json.loads(base64.b64decode(payload["body"]))["n"])


def held_in_redis(client: redis.Redis) -> list[int]:
    """Bodies still on the queue, or in the unacked hash (a message recorded unacked whose
    reply was lost: the reaper's orphan sweep or kombu's visibility sweep puts it back)."""
    queued = [body_of(json.loads(raw)) for raw in client.lrange("inbox-test", 0, -1)]
    unacked = [body_of(json.loads(raw)[0]) for raw in client.hvals("unacked")]
    return queued + unacked


def consume_across_restarts(
    redis_server: RedisServer, total: int, restarts: int
) -> tuple[list[int], list[int]]:
    """Consume QUEUE with bot's transport (acking each message) while another thread restarts
    redis-server with SIGTERM `restarts` times as messages flow; reconnect as Celery does.
    Returns the bodies received, and those still held in Redis at the end (`held_in_redis`)."""
    received: list[int] = []
    done = threading.Event()

    def restart_while_consuming() -> None:
        for n in range(1, restarts + 1):
            while len(received) < n * total // (restarts + 2) and not done.is_set():
                time.sleep(0.001)
            if done.is_set():
                return
            redis_server.restart()

    def on_message(body: Any, message: Any) -> None:
        received.append(body["n"])
        with contextlib.suppress(Exception):  # an ack on a dead connection: in unacked still
            message.ack()

    restarter = threading.Thread(target=restart_while_consuming)
    restarter.start()
    try:
        consume_until_drained(redis_server, on_message)
    finally:
        done.set()
        restarter.join(timeout=30)
    return received, held_in_redis(redis_server.client())


def consume_until_drained(redis_server: RedisServer, on_message: Any) -> None:
    idle_rounds = 0
    while idle_rounds < 2:
        try:
            with (
                Connection(redis_server.url(), transport=TRANSPORT) as conn,
                conn.Consumer(QUEUE, callbacks=[on_message], accept=["json"]),
            ):
                while True:
                    conn.drain_events(timeout=2)
                    idle_rounds = 0
        except TimeoutError:  # socket.timeout: nothing for 2 s
            idle_rounds += 1
        except Exception as exc:  # a connection error: reconnect, like Celery's consumer
            if not isinstance(exc, (redis.ConnectionError, OSError)) and "onnect" not in str(exc):
                raise
            time.sleep(0.1)


def test_a_fleet_worker_loses_no_message_when_redis_restarts_under_it(
    private_redis: RedisServer, fleet_worker: str
) -> None:
    # Given 1,500 messages and a consumer reading through its inbox
    total = 1500
    publish(private_redis.url(), [{"n": n} for n in range(total)])

    # When redis-server is stopped with SIGTERM and started again 3 times mid-stream
    received, held = consume_across_restarts(private_redis, total, restarts=3)

    # Then every message was delivered (some twice: a duplicate a job's fence absorbs), or
    # is still held in Redis for the sweeps (recorded unacked, the reply lost)
    client = private_redis.client()
    missing = set(range(total)) - set(received) - set(held)
    assert not missing, f"lost {sorted(missing)[:20]} ({len(missing)})"
    assert client.llen("inbox-test") == 0
    assert Counter(received).most_common(1)[0][1] <= 2
    # and the inbox is empty again
    assert client.llen(inbox_key("bot", INSTANCE, "inbox-test")) == 0
    assert client.smembers(registry_key("bot", INSTANCE)) >= {"inbox-test"}


def take_into_inbox(client: redis.Redis, instance: str, source: str, prefix: str = "") -> str:
    """What a consumer's take does (inbox_pop.lua) before it dies: the message is moved into
    its inbox and the list named in its registry."""
    inbox = f"{prefix}{inbox_key('bot', instance, source)}"
    client.sadd(f"{prefix}{registry_key('bot', instance)}", source)
    moved = client.lmove(f"{prefix}{source}", inbox, "RIGHT", "LEFT")
    assert moved is not None
    return moved


@pytest.mark.parametrize("keyprefix", ["", "pfx:"])
def test_a_dead_consumer_inbox_goes_back_through_the_reapers_requeue(
    private_redis: RedisServer, keyprefix: str
) -> None:
    # Given a consumer that took the first of two messages into its inbox and died
    options = {"global_keyprefix": keyprefix} if keyprefix else {}
    publish(private_redis.url(), [{"n": 1}, {"n": 2}], **options)
    client = private_redis.client()
    taken = take_into_inbox(client, "dead-inst", "inbox-test", keyprefix)
    assert client.llen(f"{keyprefix}inbox-test") == 1

    # When the reaper returns the dead instance's inboxes
    settings = Settings(redis_url=private_redis.url(), broker_transport_options=options)
    returned = BrokerRequeue(create_app(settings)).return_inboxes("dead-inst")

    # Then the message is back at the head of its queue, and the registry is gone
    assert returned == 1
    assert client.llen(f"{keyprefix}inbox-test") == 2
    assert client.lindex(f"{keyprefix}inbox-test", -1) == taken
    assert not client.exists(f"{keyprefix}{registry_key('bot', 'dead-inst')}")


def test_a_worker_returns_its_own_inbox_before_it_consumes(
    private_redis: RedisServer, fleet_worker: str
) -> None:
    # Given a message this worker took into its inbox before a reconnect (reply lost)
    publish(private_redis.url(), [{"n": 5}])
    client = private_redis.client()
    take_into_inbox(client, fleet_worker, "inbox-test")

    # When it consumes the queue again
    received: list[Any] = []
    with (
        Connection(private_redis.url(), transport=TRANSPORT) as conn,
        conn.Consumer(
            QUEUE, callbacks=[lambda body, m: (received.append(body), m.ack())], accept=["json"]
        ),
    ):
        conn.drain_events(timeout=5)

    # Then it gets that message, and the inbox is empty
    assert received == [{"n": 5}]
    assert client.llen(inbox_key("bot", fleet_worker, "inbox-test")) == 0
    assert client.hlen("unacked") == 0


def test_the_key_prefix_option_names_the_inboxes(
    private_redis: RedisServer, fleet_worker: str
) -> None:
    # Given bot's keys under another BOT_KEY_PREFIX
    publish(private_redis.url(), [{"n": 9}])
    options = {KEY_PREFIX_OPTION: "other"}
    held: list[Any] = []

    # When a message is taken and held (not acked)
    with (
        Connection(private_redis.url(), transport=TRANSPORT, transport_options=options) as conn,
        conn.Consumer(QUEUE, callbacks=[lambda body, m: held.append(m)], accept=["json"]),
    ):
        conn.drain_events(timeout=5)
        client = private_redis.client()
        # Then it is recorded unacked, its inbox under that prefix is empty, its registry there
        assert len(held) == 1
        assert client.hlen("unacked") == 1
        assert client.smembers(registry_key("other", fleet_worker)) >= {"inbox-test"}
        assert not client.exists(registry_key("bot", fleet_worker))


OTHER = Queue("inbox-other", Exchange("inbox-other"), "inbox-other")


@pytest.mark.parametrize("priority", [0, 9])
def test_an_idle_worker_of_two_queues_gets_a_message_of_the_second(
    private_redis: RedisServer, fleet_worker: str, priority: int
) -> None:
    # Given a worker consuming two queues, idle (its waits watch the first queue's list)
    received: list[Any] = []
    with (
        Connection(private_redis.url(), transport=TRANSPORT) as conn,
        conn.Consumer(
            [QUEUE, OTHER],
            callbacks=[lambda body, m: (received.append(body), m.ack())],
            accept=["json"],
        ),
    ):
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=1.5)  # a take found nothing, then waits timed out

        # When a message arrives on the second queue (at a priority: its own sub-list)
        with Connection(private_redis.url(), transport=TRANSPORT) as producer_conn:
            producer_conn.Producer(serializer="json").publish(
                {"n": 42},
                exchange=OTHER.exchange,
                routing_key="inbox-other",
                declare=[OTHER],
                priority=priority,
            )

        # Then it is delivered within a few waits
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1)
    assert received == [{"n": 42}]
