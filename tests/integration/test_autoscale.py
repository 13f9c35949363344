"""The queue-depth autoscaler counts what waits in Redis for this worker's queues."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from bot.application import BotApp, create_app
from bot.broker.autoscale import QueueBacklog, QueueDepthAutoscaler
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


def test_backlog_counts_every_priority_of_every_consumed_queue(bot_app: BotApp) -> None:
    bot_app.amqp.queues.select(["celery", "high"])
    for priority in (0, 4, 9):  # kombu keeps priorities in separate Redis lists
        bot_app.send_task("ops.sum", kwargs={"a": 1, "b": 2}, priority=priority)
    bot_app.send_task("ops.sum", kwargs={"a": 1, "b": 2}, queue="high")
    bot_app.send_task("ops.sum", kwargs={"a": 1, "b": 2}, queue="elsewhere")

    backlog = QueueBacklog(bot_app, ttl_s=0)

    assert backlog.queues() == ["celery", "high"]
    assert backlog.read() == 4


def test_autoscaler_demand_is_reserved_plus_backlog(bot_app: BotApp) -> None:
    for _ in range(5):
        bot_app.send_task("ops.sum", kwargs={"a": 1, "b": 2})
    pool: Any = SimpleNamespace(num_processes=1)
    scaler = QueueDepthAutoscaler(pool, 4, 1, worker=SimpleNamespace(app=bot_app))

    assert scaler.qty == 5  # nothing reserved here; five waiting in Redis
    assert scaler.processes == 1


def test_a_dead_broker_keeps_the_last_reading(
    make_settings: Callable[..., Any], private_redis: RedisServer
) -> None:
    # A private server: stopping the session's would disturb every test after this one.
    server = private_redis
    app = create_app(make_settings(redis_url=server.url()), fleet=False)
    try:
        app.send_task("ops.sum", kwargs={"a": 1, "b": 2})
        backlog = QueueBacklog(app, ttl_s=0)
        assert backlog.read() == 1

        server.stop()
        assert backlog.read() == 1
    finally:
        app.close()
