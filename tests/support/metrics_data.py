"""A worker's /metrics collector over fakeredis holding one of everything it reports: job
counts and durations, a worker record (state, heartbeat, breakers, queues), fleet counters, an
outbox with a consumer group that owes reports, a dead letter, waiting messages in a priority
list, and (fakeredis has no INFO) Redis's memory figures. For the unit tests of the collector and
for the contract test that every PromQL query names a metric the exporter serves."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import fakeredis
from prometheus_client import CollectorRegistry, generate_latest

from bot.observe.backlog import SENT_AT_HEADER, priority_lists
from bot.observe.metrics import WorkerCollector
from bot.outbox.stream import Outbox
from bot.store.keys import Keys
from bot.store.metrics_hash import duration_sum_field, outcome_fields
from config.settings import Settings

INSTANCE = "instance-a"
KEYS = Keys("bot")
#: What the fake Redis answers to INFO memory.
USED_MEMORY = 52_428_800
MAX_MEMORY = 104_857_600


class InfoFakeRedis(fakeredis.FakeRedis):
    """fakeredis, answering INFO memory as a Redis with `maxmemory` set would."""

    def info(self, section: str | None = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"used_memory": USED_MEMORY, "maxmemory": MAX_MEMORY}


def fake_app(client: fakeredis.FakeRedis, **settings: Any) -> Any:
    """What the collector needs of an app: settings, keys, a Redis client."""
    return SimpleNamespace(settings=Settings(**settings), keys=KEYS, redis=lambda: client)


def kombu_message(task: str, sent_at: float | None) -> str:
    """A queue item as kombu's Redis transport stores it (body elided)."""
    headers: dict[str, Any] = {"task": task, "id": f"id-{task}"}
    if sent_at is not None:
        headers[SENT_AT_HEADER] = sent_at
    return json.dumps({"body": "", "headers": headers, "properties": {}})


def fill(client: fakeredis.FakeRedis, now_s: float | None = None) -> None:
    """One of everything the collector reads, for INSTANCE."""
    now = time.time() if now_s is None else now_s
    for op, status, seconds in [("sum", "succeeded", 0.02), ("sum", "failed", 2.0)]:
        for field in outcome_fields(op, status, seconds):
            client.hincrby(KEYS.metrics(INSTANCE), field, 1)
    client.hincrby(KEYS.metrics(INSTANCE), duration_sum_field("sum"), 2020)
    breakers = {"heartbeat": {"state": "closed"}, "sink:http": {"state": "open"}}
    client.hset(
        KEYS.worker(INSTANCE),
        mapping={
            "state": "DEGRADED",
            "last_heartbeat": str(int((now - 2) * 1000)),
            "breakers": json.dumps(breakers),
            "queues": json.dumps(["celery", "reports"]),
        },
    )
    client.sadd(KEYS.inflight(INSTANCE), "job-1")
    client.hset(KEYS.stats, mapping={"recoveries": 3, "lease_lost": 1, "pipeline_runs_failed": 1})
    minute_ago_ms = int(now * 1000) - 60_000
    for n in range(3):
        client.xadd(
            KEYS.outbox, {"job_id": f"job-{n}", "report": "{}"}, id=f"{minute_ago_ms + n}-0"
        )
    Outbox(client, KEYS).ensure_group("http")
    client.xadd(KEYS.outbox_dead, {"job_id": "job-0", "group": "http", "reason": "422"})
    celery, celery_low = priority_lists("celery", {})[:2]  # priorities 0 and 3
    client.lpush(celery, kombu_message("ops.sum", now - 5))
    client.lpush(celery_low, kombu_message("ops.sum", now - 30))
    client.lpush(celery_low, kombu_message("ops.sum", now - 1))


def collector(client: fakeredis.FakeRedis, **settings: Any) -> WorkerCollector:
    app = fake_app(client, **settings)
    return WorkerCollector(app, lambda: INSTANCE, lambda: Outbox(client, KEYS).owed_by_group())


def samples(client: fakeredis.FakeRedis) -> dict[str, float]:
    """Every sample of one scrape, `name{labels}` -> value, as Prometheus reads it."""
    registry = CollectorRegistry()
    registry.register(collector(client))
    out: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def served_names() -> set[str]:
    """The metric names a scrape of a worker with one of everything exposes."""
    client = InfoFakeRedis(decode_responses=True)
    fill(client)
    return {key.split("{", 1)[0] for key in samples(client)}
