"""BrokerRequeue (the reaper's broker side) and a whole reaper pass against real kombu + Redis,
with Celery messages published by a BotApp."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Queue

from bot.application import BotApp, create_app
from bot.jobs.store import Acquired, Delivery
from bot.recovery.reaper import Reaper
from bot.recovery.requeue import BrokerRequeue
from bot.store.keys import KOMBU_UNACKED, KOMBU_UNACKED_INDEX

pytestmark = pytest.mark.integration

QUEUE = "celery"


@pytest.fixture
def app(make_settings: Callable[..., Any]) -> Iterator[BotApp]:
    app = create_app(make_settings(heartbeat_interval=0.5, reaper_interval=0.5), fleet=False)
    yield app
    app.close()


@pytest.fixture
def consumer(app: BotApp) -> Iterator[Any]:
    """A raw kombu channel on the app's broker, standing in for a worker's consumer."""
    with app.connection_for_read() as conn:
        yield conn.channel()


def send(app: BotApp, job_id: str) -> None:
    app.send_task("ops.touch", kwargs={"seconds": 0}, task_id=job_id, queue=QUEUE)


def hold(consumer: Any) -> Any:
    message = Queue(QUEUE)(consumer).get(no_ack=False)
    assert message is not None
    return message


def test_celery_message_tag_is_the_unacked_key(app: BotApp, consumer: Any, client: redis.Redis):
    # Given a Celery task message held by a consumer
    send(app, "j1")
    message = hold(consumer)
    # Then the tag Celery's request sees (properties.delivery_tag) keys kombu's unacked hash
    assert message.properties["delivery_tag"] == message.delivery_tag
    assert client.hexists(KOMBU_UNACKED, message.delivery_tag)
    assert message.headers["id"] == "j1"


def test_restore_puts_the_held_message_at_the_head(app: BotApp, consumer: Any, client):
    # Given a held job j1 and a waiting job j2
    send(app, "j1")
    held = hold(consumer)
    send(app, "j2")
    requeue = BrokerRequeue(app)
    # When the reaper restores j1 by its tag
    assert requeue.restore(held.delivery_tag) is True
    # Then j1 is delivered next, with the same tag; a second restore finds nothing
    again = hold(consumer)
    assert (again.headers["id"], again.delivery_tag) == ("j1", held.delivery_tag)
    again.ack()
    assert requeue.restore(held.delivery_tag) is False
    requeue.reset()


def test_republish_sends_the_stored_message_under_the_same_id(app: BotApp, consumer: Any):
    requeue = BrokerRequeue(app)
    message = {"task": "ops.touch", "args": [], "kwargs": {"seconds": 1.5}, "queue": QUEUE}
    requeue.republish("j-again", message)
    got = hold(consumer)
    assert got.headers["id"] == "j-again" and got.headers["task"] == "ops.touch"
    assert got.decode()[1] == {"seconds": 1.5}


def test_stale_tags_reads_unacked_index_scores(app: BotApp, consumer: Any, client):
    send(app, "old")
    send(app, "new")
    old, new = hold(consumer), hold(consumer)
    client.zadd(KOMBU_UNACKED_INDEX, {old.delivery_tag: time.time() - 60})
    assert BrokerRequeue(app).stale_tags(30) == [old.delivery_tag]
    assert new.delivery_tag not in BrokerRequeue(app).stale_tags(30)


def test_a_reaper_pass_recovers_a_dead_workers_job_end_to_end(
    app: BotApp, consumer: Any, client: redis.Redis
):
    # Given dead worker W held job j1 (acquired, its message unacked) and its lease is gone
    send(app, "j1")
    held = hold(consumer)
    tag = held.delivery_tag
    delivery = Delivery(
        "j1", "touch", QUEUE, tag, {"task": "ops.touch", "args": [], "kwargs": {}, "queue": QUEUE}
    )
    assert isinstance(app.job_store().acquire(delivery, "W", 1), Acquired)
    client.zadd(app.keys.workers, {"W": 1})
    now = [0.0]
    reaper = Reaper(
        app.redis(),
        app.keys,
        BrokerRequeue(app),
        lease_ttl_s=1.5,
        interval_s=0.5,
        lock_ttl_s=1,
        clock=lambda: now[0],
    )
    reaper.run_once()
    now[0] += 1.5
    # When a settled reaper passes
    assert reaper.run_once() is True
    # Then j1 is queued with one recovery and its very message is next in the queue
    assert client.hget(app.keys.job("j1"), "state") == "queued"
    assert client.hget(app.keys.job("j1"), "recoveries") == "1"
    again = hold(consumer)
    assert (again.headers["id"], again.delivery_tag) == ("j1", tag)
    assert reaper.snapshot()["restored"] == 1
    assert not client.exists(app.keys.worker("W"))
    reaper.requeue.reset()
