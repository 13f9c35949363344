"""Prometheus metrics of one worker, served on BOT_METRICS_PORT by the worker's main process.

Job outcomes and durations happen in prefork pool children, which share no memory with the main
process; so the complete script counts them in Redis (`bot:metrics:{instance_id}`, one HINCRBY
per outcome in the same atomic step that ends the job) and this collector reads that hash, the
worker record, the outbox and the fleet counters at scrape time. A scrape costs one pipelined
round trip; nothing is kept in process memory that a restart or an autoscaled child could lose.

Op labels are bounded: only ops registered in this process (`bot.ops.REGISTRY`) become an `op`
label or a hash field; any other name a sender chose counts as `op="unknown"`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bot.jobs.ports import AppPort
from bot.store.metrics_hash import DURATION_BUCKETS_S, SEP, duration_sum_field

logger = logging.getLogger(__name__)

#: Breaker states as numbers, for alerting on `bot_breaker_state > 0`.
BREAKER_LEVELS = {"closed": 0, "half_open": 1, "open": 2}
#: Fleet-wide counters of `bot:stats` exposed as `bot_<name>_total`.
FLEET_COUNTERS = ("recoveries", "lease_lost", "duplicates_skipped")


class WorkerCollector(Collector):
    """Reads one worker's numbers from Redis at scrape time."""

    def __init__(self, app: AppPort, instance_id: Callable[[], str | None]) -> None:
        self.app = app
        self.instance_id = instance_id

    def collect(self) -> Iterator[Any]:
        instance = self.instance_id()
        if instance is None:
            return
        try:
            counts, record, in_flight, stats, outbox_len, dead_len, runs = self._read(instance)
        except Exception as exc:  # Redis down: expose that, not a scrape error
            logger.debug("metrics scrape: %s", exc)
            yield GaugeMetricFamily("bot_redis_up", "Whether Redis answered the scrape.", value=0)
            return
        yield GaugeMetricFamily("bot_redis_up", "Whether Redis answered the scrape.", value=1)
        yield from job_metrics(counts)
        yield from worker_metrics(record, in_flight)
        yield from fleet_metrics(stats, outbox_len, dead_len)
        yield from pipeline_metrics(stats, runs)
        groups = self._groups()
        yield outbox_pending(groups)
        yield outbox_behind(groups, self._behind())

    def _groups(self) -> list[dict[str, Any]]:
        try:
            return list(self.app.redis().xinfo_groups(self.app.keys.outbox))
        except redis.ResponseError:  # no outbox stream yet
            return []

    def _behind(self) -> set[str]:
        """Groups the last outbox retention pass found behind (bot/outbox/retention.py)."""
        return set(self.app.redis().hkeys(self.app.keys.outbox_behind))  # type: ignore[arg-type]

    def _read(self, instance: str) -> tuple[Any, ...]:
        keys = self.app.keys
        pipe = self.app.redis().pipeline(transaction=False)
        pipe.hgetall(keys.metrics(instance))
        pipe.hgetall(keys.worker(instance))
        pipe.scard(keys.inflight(instance))
        pipe.hgetall(keys.stats)
        pipe.xlen(keys.outbox)
        pipe.xlen(keys.outbox_dead)
        pipe.zcard(keys.pipelines_running)
        return tuple(pipe.execute())


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


def outbox_pending(groups: list[dict[str, Any]]) -> Any:
    """Per consumer group (sink): entries delivered but not acked, plus entries not yet read."""
    owed = GaugeMetricFamily(
        "bot_outbox_pending", "Reports a sink still owes (pending + unread).", labels=["sink"]
    )
    for group in groups:
        owed.add_metric(
            [str(group["name"])], int(group.get("pending") or 0) + int(group.get("lag") or 0)
        )
    return owed


def outbox_behind(groups: list[dict[str, Any]], behind: set[str]) -> Any:
    """Per consumer group (sink): 1 when it owes a report older than BOT_OUTBOX_MAX_AGE or
    beyond BOT_OUTBOX_MAX_LEN (what it owes is kept: it holds the outbox past its bounds)."""
    late = GaugeMetricFamily(
        "bot_outbox_group_behind",
        "1 when a sink owes reports past the outbox retention bounds.",
        labels=["sink"],
    )
    for group in groups:
        late.add_metric([str(group["name"])], 1 if str(group["name"]) in behind else 0)
    return late


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
    app: AppPort, port: int, instance_id: Callable[[], str | None], addr: str = "127.0.0.1"
) -> Any:
    """Start the /metrics HTTP server (a daemon thread) on `addr`:`port` (BOT_METRICS_ADDR,
    loopback unless told otherwise); return the server."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(app, instance_id))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    logger.info("metrics on %s:%d/metrics", addr, port)
    return server
