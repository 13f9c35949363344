"""Every PromQL query of the alerting and recording rules (deploy/prometheus/) and of the Grafana
dashboard (deploy/grafana/bot-fleet.json) names only metrics the exporter really serves: the
names are those of a real scrape of the collector over fakeredis holding one of everything
(tests/support/metrics_data.py), plus the recording rules' names and Prometheus's own `up`. A
metric renamed in the exporter, or a typo in a query, fails here instead of leaving a panel
empty or an alert that never fires."""

from __future__ import annotations

from functools import cache

import pytest

from tests.support.metrics_data import served_names
from tests.support.promql import (
    dashboard,
    dashboard_expressions,
    metric_names,
    recorded_names,
    rule_expressions,
)

#: Prometheus's own series about each scrape target.
PROMETHEUS_OWN = {"up"}


@cache
def served() -> frozenset[str]:
    return frozenset(served_names())


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (job, op) (rate(bot_jobs_total{outcome=~"failed|dead", op!="on"}[5m]))'
            " / on (job) group_left sum without (instance)"
            " (rate(bot_jobs_total[$__rate_interval]))",
            {"bot_jobs_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(bot_job_duration_seconds_bucket[5m])))"
            " > bool 1e3 and max(bot_x offset 15m) unless absent(up{job='bot'}) or vector(1)",
            {"bot_job_duration_seconds_bucket", "bot_x", "up"},
        ),
        (
            "max by (job) (job:bot_redis_memory:used_ratio) > 0.8 or on() nan"
            " or max_over_time(bot_queue_length[1h:5m]) * -Inf",
            {"job:bot_redis_memory:used_ratio", "bot_queue_length"},
        ),
        (
            'label_replace(bot_y, "dst", "$1", "src", "(.*)") + count(bot_z) by (job)',
            {"bot_y", "bot_z"},
        ),
    ],
)
def test_metric_names_are_what_a_query_reads(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_scrape_serves_every_family_under_its_exposed_names() -> None:
    names = served()
    assert {"bot_jobs_total", "bot_recoveries_total", "bot_pipeline_runs_total"} <= names
    assert {f"bot_job_duration_seconds_{suffix}" for suffix in ("bucket", "sum", "count")} <= names
    assert "bot_jobs" not in names  # a counter is exposed with _total only
    assert {
        "bot_outbox_owed_age_seconds",
        "bot_redis_memory_used_bytes",
        "bot_redis_memory_max_bytes",
        "bot_queue_length",
        "bot_queue_oldest_age_seconds",
        "bot_heartbeat_age_seconds",
        "bot_breaker_state",
    } <= names


def test_rules_name_only_served_metrics() -> None:
    known = served() | PROMETHEUS_OWN | recorded_names()
    unknown = {
        where: sorted(metric_names(expr) - known)
        for where, expr in rule_expressions()
        if metric_names(expr) - known
    }
    assert unknown == {}


def test_dashboard_names_only_served_metrics_and_recording_rules() -> None:
    known = served() | PROMETHEUS_OWN | recorded_names()
    expressions = list(dashboard_expressions())
    assert len(expressions) > 20  # the walk found the panels and variables
    unknown = {
        where: sorted(metric_names(expr) - known)
        for where, expr in expressions
        if metric_names(expr) - known
    }
    assert unknown == {}


def test_dashboard_covers_what_an_operator_watches() -> None:
    named = set().union(*(metric_names(expr) for _, expr in dashboard_expressions()))
    assert {
        "bot_jobs_total",
        "job_op:bot_jobs_failed:ratio_rate5m",
        "job_op:bot_job_duration_seconds:p95_rate5m",
        "bot_jobs_in_flight",
        "bot_worker_state",
        "bot_heartbeat_age_seconds",
        "bot_outbox_length",
        "bot_outbox_pending",
        "bot_outbox_owed_age_seconds",
        "bot_outbox_dead",
        "bot_recoveries_total",
        "bot_lease_lost_total",
        "job:bot_redis_memory:used_ratio",
        "bot_queue_length",
        "bot_queue_oldest_age_seconds",
        "bot_pipeline_runs_total",
    } <= named


def test_dashboard_queries_its_datasource_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    sources = [
        source
        for panel in board["panels"]
        for source in [
            panel.get("datasource"),
            *(t.get("datasource") for t in panel.get("targets", [])),
        ]
        if source is not None
    ]
    assert sources and all(s == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for s in sources)
