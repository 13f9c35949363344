"""A stock Celery app for the fleet benchmark: Celery's defaults plus the settings the row names.

`STOCK_BENCH_URL` is its Redis (broker and results); `STOCK_BENCH_CONF` a JSON object of
Celery settings laid over the defaults (e.g. `{"task_acks_late": true}`). JSON only, queue
`stock`. Its one task counts a job done in Redis, as bench/bench_ops.py does for bot.
"""

from __future__ import annotations

import json
import os

import redis
from celery import Celery

URL = os.environ.get("STOCK_BENCH_URL", "redis://127.0.0.1:6379/1")
QUEUE = "stock"
COUNTER_KEY = "bench:done"


def make_app(conf: dict[str, object]) -> Celery:
    app = Celery("stock", broker=URL, backend=URL)
    app.conf.update(
        task_default_queue=QUEUE,
        accept_content=["json"],
        result_accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        **conf,
    )
    return app


app = make_app(json.loads(os.environ.get("STOCK_BENCH_CONF", "{}")))
_clients: dict[int, redis.Redis] = {}


@app.task(name="stock.incr")
def incr(n: int = 0) -> int:
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(URL)
    return int(_clients[pid].incr(COUNTER_KEY))
