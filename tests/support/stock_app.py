"""A plain, stock Celery app for side-by-side comparisons with bot (tests and benchmarks).

Nothing of bot is used: Celery's defaults, plus acks_late where the comparison needs it, on
the Redis named by STOCK_REDIS_URL (a different db than bot's), queue `stock`. Its one task
counts every execution of its body in Redis, as bot's `touch` fault op does.
Env: STOCK_REDIS_URL, STOCK_ACKS_LATE ("1"/"0", default 1), STOCK_TRANSPORT_OPTIONS (JSON);
for the throughput benchmark, STOCK_LIKE_BOT=1 (prefetch 1 and reject_on_worker_lost, as bot
runs) and STOCK_EVENTS=1 (the task events and started-state tracking bot runs with for Flower).
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

REDIS_URL = os.environ.get("STOCK_REDIS_URL", "redis://127.0.0.1:6379/1")
QUEUE = "stock"


def touches_key(task_id: str) -> str:
    return f"stock:touches:{task_id}"


app = Celery("stock", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=os.environ.get("STOCK_ACKS_LATE", "1") == "1",
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
    broker_transport_options=json.loads(os.environ.get("STOCK_TRANSPORT_OPTIONS", "{}")),
    broker_connection_retry_on_startup=True,
)
if os.environ.get("STOCK_LIKE_BOT") == "1":
    app.conf.update(worker_prefetch_multiplier=1, task_reject_on_worker_lost=True)
if os.environ.get("STOCK_EVENTS") == "1":
    app.conf.update(
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        result_extended=True,
    )


@app.task(name="stock.touch", bind=True)
def touch(self, seconds: float = 0.0) -> int:  # type: ignore[no-untyped-def]
    """Count this execution, then sleep `seconds`."""
    count = redis.Redis.from_url(REDIS_URL).incr(touches_key(self.request.id))
    time.sleep(seconds)
    return int(count)


@app.task(name="stock.sum")
def stock_sum(a: float, b: float) -> float:
    """a + b: the benchmark's job."""
    return a + b


def worker_args(name: str, concurrency: int = 2) -> list[str]:
    """argv of a stock `celery worker` for this app (run from the repo root)."""
    import sys

    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.support.stock_app",
        "worker",
        "-n",
        f"{name}@%h",
        "-l",
        "info",
        "-Q",
        QUEUE,
        "-c",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
    ]
