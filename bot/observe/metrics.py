"""Prometheus metrics of one worker, served on BOT_METRICS_PORT by the worker's main process:
the collector, the /metrics server, and the families of jobs, the worker, the fleet counters
and pipeline runs (Redis memory, queue backlog and outbox owed: bot/observe/capacity.py).

Job outcomes and durations happen in prefork pool children, which share no memory with the main
process; so the complete script counts them in Redis (`bot:metrics:{instance_id}`, one HINCRBY
per outcome in the same atomic step that ends the job) and this collector reads that hash, the
worker record, the outbox, the fleet counters, Redis's INFO memory and the queues this worker
consumes at scrape time. A scrape costs a few round trips (`WorkerCollector._read`), whatever
the number of jobs; nothing is kept in process memory that a restart or an autoscaled child
could lose. `bot_redis_up` is 0, and nothing else is served, when any of them fails.

Op labels are bounded: only ops registered in this process (`bot.ops.REGISTRY`) become an `op`
label or a hash field; any other name a sender chose counts as `op="unknown"`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bot.jobs.ports import AppPort
from bot.observe.backlog import QueueBacklog, read_backlog
from bot.observe.capacity import (
    outbox_behind_metric,
    outbox_owed_metrics,
    queue_metrics,
    redis_memory_metrics,
)
from bot.store.metrics_hash import DURATION_BUCKETS_S, SEP, duration_sum_field
from config.celery_config import broker_transport_options

logger = logging.getLogger(__name__)

#: Breaker states as numbers, for alerting on `bot_breaker_state > 0`.
BREAKER_LEVELS = {"closed": 0, "half_open": 1, "open": 2}
#: Fleet-wide counters of `bot:stats` exposed as `bot_<name>_total`.
FLEET_COUNTERS = ("recoveries", "lease_lost", "duplicates_skipped")
#: What each outbox consumer group owes (`Outbox.owed_by_group`): group, owed, oldest owed age.
OutboxOwed = Callable[[], list[dict[str, Any]]]


@dataclass(frozen=True)
class Scrape:
    """What a scrape read from Redis, before it becomes metric families."""

    counts: dict[str, str]
    record: dict[str, str]
    in_flight: int
    stats: dict[str, str]
    outbox_len: int
    dead_len: int
    runs_running: int
    memory: dict[str, Any]
    owed: list[dict[str, Any]]
    behind: set[str]
    backlog: list[QueueBacklog]


class WorkerCollector(Collector):
    """Reads one worker's numbers from Redis at scrape time. `outbox_owed` gives what each
    outbox consumer group still owes (`bot.outbox.stream.Outbox.owed_by_group`; passed in, as
    bot.outbox is a sibling layer of this one)."""

    def __init__(
        self, app: AppPort, instance_id: Callable[[], str | None], outbox_owed: OutboxOwed
    ) -> None:
        self.app = app
        self.instance_id = instance_id
        self.outbox_owed = outbox_owed

    def collect(self) -> Iterator[Any]:
        instance = self.instance_id()
        if instance is None:
            return
        try:
            scrape = self._read(instance)
        except Exception as exc:  # Redis down: expose that, not a scrape error
            logger.debug("metrics scrape: %s", exc)
            yield GaugeMetricFamily("bot_redis_up", "Whether Redis answered the scrape.", value=0)
            return
        yield GaugeMetricFamily("bot_redis_up", "Whether Redis answered the scrape.", value=1)
        yield from job_metrics(scrape.counts)
        yield from worker_metrics(scrape.record, scrape.in_flight)
        yield from fleet_metrics(scrape.stats, scrape.outbox_len, scrape.dead_len)
        yield from pipeline_metrics(scrape.stats, scrape.runs_running)
        yield from outbox_owed_metrics(scrape.owed)
        yield outbox_behind_metric(scrape.owed, scrape.behind)
        yield from redis_memory_metrics(scrape.memory)
        yield from queue_metrics(scrape.backlog)

    def _read(self, instance: str) -> Scrape:
        """A few round trips: one pipeline of this worker's and the fleet's numbers, INFO
        memory, the outbox groups (XINFO GROUPS, then one call per group that owes anything),
        and one pipeline over the priority lists of the queues this worker consumes."""
        keys, client = self.app.keys, self.app.redis()
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(keys.metrics(instance))
        pipe.hgetall(keys.worker(instance))
        pipe.scard(keys.inflight(instance))
        pipe.hgetall(keys.stats)
        pipe.xlen(keys.outbox)
        pipe.xlen(keys.outbox_dead)
        pipe.zcard(keys.pipelines_running)
        pipe.hkeys(keys.outbox_behind)
        counts, record, in_flight, stats, outbox_len, dead_len, runs, behind = pipe.execute()
        settings = self.app.settings
        backlog = read_backlog(
            client,
            consumed_queues(record, settings.queues),
            broker_transport_options(settings),
        )
        return Scrape(
            counts=counts,
            record=record,
            in_flight=in_flight,
            stats=stats,
            outbox_len=outbox_len,
            dead_len=dead_len,
            runs_running=runs,
            memory=redis_memory(client),
            owed=self.outbox_owed(),
            behind={str(group) for group in behind},
            backlog=backlog,
        )


def redis_memory(client: redis.Redis) -> dict[str, Any]:
    """INFO memory; {} when Redis refuses the command (an ACL user without it): the memory
    metrics are then left out, the rest of the scrape stands."""
    try:
        return dict(client.info("memory"))
    except redis.ResponseError as exc:
        logger.debug("metrics scrape: no INFO memory: %s", exc)
        return {}


def consumed_queues(record: dict[str, str], configured: list[str]) -> list[str]:
    """The queues this worker consumes, as its record lists them (`-Q` included); the
    configured BOT_QUEUES while the record has none."""
    try:
        queues = json.loads(record.get("queues") or "[]")
    except json.JSONDecodeError:
        queues = []
    names = [name for name in queues if isinstance(name, str)] if isinstance(queues, list) else []
    return names or list(configured)


def job_metrics(counts: dict[str, str]) -> Iterator[Any]:
    jobs = CounterMetricFamily(
        "bot_jobs", "Job attempts ended, by op and outcome.", labels=["op", "outcome"]
    )
    buckets: dict[str, dict[str, int]] = {}
    for field, value in counts.items():
        kind, op, label = field.split(SEP, 2)
        if kind == "jobs":
            jobs.add_metric([op, label], int(value))
        elif kind == "duration":
            buckets.setdefault(op, {})[label] = int(value)
    yield jobs
    histogram = HistogramMetricFamily(
        "bot_job_duration_seconds", "Time an op body ran, by op.", labels=["op"]
    )
    for op, per_bucket in sorted(buckets.items()):
        cumulative, running = [], 0
        for bound in [*(repr(float(b)) for b in DURATION_BUCKETS_S), "+Inf"]:
            running += per_bucket.get(bound, 0)
            cumulative.append((bound, running))
        total_s = float(counts.get(duration_sum_field(op), 0)) / 1000
        histogram.add_metric([op], cumulative, total_s)
    yield histogram


def worker_metrics(record: dict[str, str], in_flight: int) -> Iterator[Any]:
    yield GaugeMetricFamily("bot_jobs_in_flight", "Jobs this worker owns now.", value=in_flight)
    held = int(record.get("outcomes_held") or 0)
    yield GaugeMetricFamily(
        "bot_outcomes_held", "Outcomes waiting in memory for Redis to record them.", value=held
    )
    state = GaugeMetricFamily(
        "bot_worker_state", "1 for the worker's lifecycle state.", labels=["state"]
    )
    if record.get("state"):
        state.add_metric([record["state"]], 1)
    yield state
    if record.get("last_heartbeat"):
        age_s = max(0.0, time.time() - int(record["last_heartbeat"]) / 1000)
        yield GaugeMetricFamily(
            "bot_heartbeat_age_seconds", "Seconds since the last heartbeat.", value=age_s
        )
    yield GaugeMetricFamily(
        "bot_redis_memory_guard",
        "1 while Redis used memory is over BOT_REDIS_MEMORY_LIMIT_SHARE of maxmemory.",
        value=1 if record.get("memory_guard") == "1" else 0,
    )
    breakers = GaugeMetricFamily(
        "bot_breaker_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        labels=["breaker"],
    )
    for name, level in breaker_levels(record).items():
        breakers.add_metric([name], level)
    yield breakers


def breaker_levels(record: dict[str, str]) -> dict[str, int]:
    """Breaker states from the worker record's `breakers` field ({name: {state, failures}})."""
    try:
        breakers = json.loads(record.get("breakers") or "{}")
    except json.JSONDecodeError:
        return {}
    return {name: BREAKER_LEVELS.get(info.get("state"), 2) for name, info in breakers.items()}


def fleet_metrics(stats: dict[str, str], outbox_len: int, dead_len: int) -> Iterator[Any]:
    for name in FLEET_COUNTERS:
        yield CounterMetricFamily(
            f"bot_{name}", f"Fleet-wide {name.replace('_', ' ')}.", value=int(stats.get(name, 0))
        )
    yield GaugeMetricFamily("bot_outbox_length", "Entries in the outbox stream.", value=outbox_len)
    yield GaugeMetricFamily("bot_outbox_dead", "Reports in the dead-letter stream.", value=dead_len)


#: Final states of a pipeline run, counted in `bot:stats` as `pipeline_runs_<state>`.
RUN_END_STATES = ("succeeded", "failed")


def pipeline_metrics(stats: dict[str, str], running: int) -> Iterator[Any]:
    """Pipeline runs ended by state (fleet-wide, counted by run_end.lua), and those running."""
    ended = CounterMetricFamily(
        "bot_pipeline_runs", "Pipeline runs ended, fleet-wide, by state.", labels=["state"]
    )
    for state in RUN_END_STATES:
        ended.add_metric([state], int(stats.get(f"pipeline_runs_{state}", 0)))
    yield ended
    yield GaugeMetricFamily(
        "bot_pipeline_runs_running", "Pipeline runs started and not ended.", value=running
    )


def serve(
    app: AppPort,
    port: int,
    instance_id: Callable[[], str | None],
    addr: str = "127.0.0.1",
    *,
    outbox_owed: OutboxOwed,
) -> Any:
    """Start the /metrics HTTP server (a daemon thread) on `addr`:`port` (BOT_METRICS_ADDR,
    loopback unless told otherwise); return the server."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(app, instance_id, outbox_owed))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    logger.info("metrics on %s:%d/metrics", addr, port)
    return server
