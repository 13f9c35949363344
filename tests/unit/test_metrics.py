"""Metric families built from the Redis counters the complete script keeps."""

from __future__ import annotations

import urllib.request

from bot.observe.capacity import outbox_behind_metric
from bot.observe.metrics import (
    breaker_levels,
    job_metrics,
    pipeline_metrics,
    serve,
    worker_metrics,
)
from bot.store.metrics_hash import (
    UNKNOWN_OP,
    duration_bucket,
    duration_sum_field,
    metric_op,
    outcome_fields,
)


def test_duration_buckets_are_upper_bounds() -> None:
    assert duration_bucket(0.001) == "0.005"
    assert duration_bucket(0.005) == "0.005"
    assert duration_bucket(0.7) == "1.0"
    assert duration_bucket(10_000) == "+Inf"


def test_histogram_is_cumulative_with_the_summed_durations() -> None:
    counts: dict[str, str] = {}
    for op, status, seconds in [
        ("sum", "succeeded", 0.003),
        ("sum", "succeeded", 0.7),
        ("sum", "failed", 20.0),
    ]:
        for field in outcome_fields(op, status, seconds):
            counts[field] = str(int(counts.get(field, 0)) + 1)
    counts[duration_sum_field("sum")] = "20703"

    jobs, histogram = list(job_metrics(counts))

    by_outcome = {s.labels["outcome"]: s.value for s in jobs.samples}
    assert by_outcome == {"succeeded": 2, "failed": 1}
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert buckets["0.005"] == 1 and buckets["1.0"] == 2 and buckets["30.0"] == 3
    assert buckets["+Inf"] == 3
    (total,) = [s.value for s in histogram.samples if s.name.endswith("_sum")]
    assert total == 20.703


def test_breaker_levels_read_from_record_fields() -> None:
    record = {
        "breakers": '{"heartbeat": {"state": "closed", "failures": 0},'
        ' "sink:http": {"state": "open", "failures": 5}}',
        "state": "READY",
    }
    assert breaker_levels(record) == {"heartbeat": 0, "sink:http": 2}
    assert breaker_levels({"breakers": "not json"}) == {}


def test_only_registered_ops_become_labels() -> None:
    long_name = "x" * 5000  # any `ops.*` name a sender chose
    assert metric_op("sum") == "sum"
    assert metric_op(long_name) == UNKNOWN_OP == "unknown"
    assert outcome_fields(long_name, "rejected", 0.001) == [
        "jobs|unknown|rejected",
        "duration|unknown|0.005",
    ]
    assert duration_sum_field(long_name) == "duration_ms_sum|unknown|total"
    assert duration_sum_field("sum") == "duration_ms_sum|sum|total"


def test_unknown_ops_share_one_label_in_the_scrape() -> None:
    counts: dict[str, str] = {}
    for op in ("sum", "a" * 5000, "b" * 5000):
        for field in outcome_fields(op, "rejected", 0.001):
            counts[field] = str(int(counts.get(field, 0)) + 1)

    jobs, _ = list(job_metrics(counts))

    assert {s.labels["op"]: s.value for s in jobs.samples} == {"sum": 1, "unknown": 2}


def test_metrics_listen_on_loopback_unless_told_otherwise() -> None:
    server = serve(None, 0, lambda: None, outbox_owed=list)  # type: ignore[arg-type]
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_pipeline_runs_by_state_and_running() -> None:
    stats = {"pipeline_runs_succeeded": "7", "pipeline_runs_failed": "2", "recoveries": "1"}

    ended, running = list(pipeline_metrics(stats, 3))

    assert {s.labels["state"]: s.value for s in ended.samples} == {"succeeded": 7, "failed": 2}
    assert ended.samples[0].name == "bot_pipeline_runs_total"
    assert (running.name, running.samples[0].value) == ("bot_pipeline_runs_running", 3)


def test_a_group_behind_the_retention_bounds_is_1_the_others_0() -> None:
    groups = [{"group": "http", "owed": 0}, {"group": "billing", "owed": 3}]

    family = outbox_behind_metric(groups, {"billing", "gone-group"})

    assert family.name == "bot_outbox_group_behind"
    assert {s.labels["sink"]: s.value for s in family.samples} == {"http": 0, "billing": 1}


def test_the_memory_guard_gauge_follows_the_worker_record() -> None:
    def guard(record: dict[str, str]) -> float:
        (family,) = [f for f in worker_metrics(record, 0) if f.name == "bot_redis_memory_guard"]
        return float(family.samples[0].value)

    assert guard({"state": "DEGRADED", "memory_guard": "1"}) == 1
    assert guard({"state": "READY", "memory_guard": "0"}) == 0
    assert guard({"state": "READY"}) == 0  # a worker of an older version
