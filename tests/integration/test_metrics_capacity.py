"""The series the alerts need, scraped from the real /metrics endpoint over a real redis-server:
messages published through bot's app (one at a priority) show in the queue's length and a
plausible backlog age; a consumer group with unread reports shows an owed age; Redis's memory
and its maxmemory are read from INFO."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.application import BotApp, create_app
from bot.observe.backlog import priority_lists
from bot.observe.metrics import serve
from bot.outbox.stream import Outbox
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

INSTANCE = "instance-metrics"
MAX_MEMORY = 256 * 1024 * 1024
#: Seconds between publishing and the scrape.
WAIT_S = 1.5


@pytest.fixture
def app(private_redis: RedisServer, make_settings: Callable[..., Any]) -> Iterator[BotApp]:
    """An app (no worker consumes its queues) on a Redis of the test's own, with maxmemory."""
    private_redis.client().config_set("maxmemory", MAX_MEMORY)
    bot_app = create_app(make_settings(redis_url=private_redis.url()), fleet=False)
    yield bot_app
    bot_app.close()


def scrape(app: BotApp) -> dict[str, float]:
    server = serve(
        app,
        0,
        lambda: INSTANCE,
        outbox_owed=lambda: Outbox(app.redis(), app.keys).owed_by_group(),
    )
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_scrape_shows_backlog_age_owed_age_and_redis_memory(app: BotApp) -> None:
    client = app.redis()
    client.hset(app.keys.worker(INSTANCE), "queues", json.dumps(["celery", "quiet"]))
    app.send_task("ops.sum", kwargs={"a": 1, "b": 2}, priority=5)  # the oldest, at a priority
    client.xadd(app.keys.outbox, {"job_id": "j1", "report": "{}"})
    Outbox(client, app.keys).ensure_group("billing")  # reads from the start: owes j1
    time.sleep(WAIT_S)
    app.send_task("ops.sum", kwargs={"a": 3, "b": 4})
    assert client.llen(priority_lists("celery", {})[1]) == 1  # kombu's list for priority 5

    samples = scrape(app)

    assert samples["bot_redis_up"] == 1
    assert samples['bot_queue_length{queue="celery"}'] == 2
    assert WAIT_S <= samples['bot_queue_oldest_age_seconds{queue="celery"}'] < WAIT_S + 10
    assert samples['bot_queue_length{queue="quiet"}'] == 0
    assert samples['bot_queue_oldest_age_seconds{queue="quiet"}'] == 0
    assert samples['bot_outbox_pending{sink="billing"}'] == 1
    assert WAIT_S <= samples['bot_outbox_owed_age_seconds{sink="billing"}'] < WAIT_S + 10
    assert samples["bot_redis_memory_max_bytes"] == MAX_MEMORY
    assert 100_000 < samples["bot_redis_memory_used_bytes"] < MAX_MEMORY
