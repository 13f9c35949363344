"""Metric families built from the Redis counters the complete script keeps."""

from __future__ import annotations

from bot.metrics import (
    breaker_levels,
    duration_bucket,
    duration_sum_field,
    job_metrics,
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
