"""What a submitting process costs Redis in result subscriptions (bot.application.BotApp).

Pinned first: Celery 5.7's Redis result backend subscribes the sender's pubsub connection to a
task's result channel on every `send_task`, a connection nothing reads unless `get()` waits.
Then: a bot app sends without subscribing, and `get()` still finds a result stored before it
was called and one published while it waits.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from bot.application import BotApp, create_app
from config.settings import Settings


def subscribers(client: redis.Redis, task_id: str) -> int:
    channel = f"celery-task-meta-{task_id}"
    return int(dict(client.pubsub_numsub(channel))[channel])


def succeeded(task_id: str, value: int) -> str:
    return json.dumps(
        {
            "status": "SUCCESS",
            "result": value,
            "traceback": None,
            "children": [],
            "task_id": task_id,
        }
    )


@pytest.fixture
def app(redis_url: str) -> Iterator[BotApp]:
    bot_app = create_app(Settings(redis_url=redis_url))
    yield bot_app
    bot_app.close()


def test_stock_celery_subscribes_to_every_task_it_sends(
    redis_url: str, client: redis.Redis
) -> None:
    stock = Celery("stock", broker=redis_url, backend=redis_url)
    try:
        result = stock.send_task("ops.sum", kwargs={"a": 1, "b": 2})
        assert subscribers(client, result.id) == 1
    finally:
        stock.close()


def test_a_bot_app_sends_without_subscribing(app: BotApp, client: redis.Redis) -> None:
    result = app.send_task("ops.sum", kwargs={"a": 1, "b": 2})

    assert subscribers(client, result.id) == 0
    assert client.pubsub_numpat() == 0


def test_get_finds_a_result_stored_before_it_waits(app: BotApp, client: redis.Redis) -> None:
    result = app.send_task("ops.sum", kwargs={"a": 1, "b": 2})
    client.set(f"celery-task-meta-{result.id}", succeeded(result.id, 3))

    assert result.get(timeout=5) == 3


def test_get_wakes_on_a_result_published_while_it_waits(app: BotApp, client: redis.Redis) -> None:
    result = app.send_task("ops.sum", kwargs={"a": 2, "b": 2})
    key, meta = f"celery-task-meta-{result.id}", succeeded(result.id, 4)

    def finish_later() -> None:
        deadline = time.monotonic() + 5
        while subscribers(client, result.id) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # get() has subscribed: what complete.lua does now wakes it
        client.set(key, meta)
        client.publish(key, meta)

    finisher = threading.Thread(target=finish_later)
    finisher.start()
    assert result.get(timeout=5) == 4
    finisher.join()
