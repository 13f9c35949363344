"""The services every worker runs besides its heartbeat, end to end: the built-in outbox relay
(BOT_REPORT_URL) and the Prometheus endpoint (BOT_METRICS_PORT)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from bot.application import create_app
from tests.support.processes import WorkerProcess, run_bot, wait_for
from tests.support.receiver import Receiver
from tests.support.redis_server import free_port

pytestmark = pytest.mark.e2e

FAST = {
    "BOT_HEARTBEAT_INTERVAL": "0.5",
    "BOT_RETRY_BASE_DELAY": "0.05",
    "BOT_RETRY_MAX_DELAY": "0.2",
    "BOT_BREAKER_THRESHOLD": "2",
    "BOT_BREAKER_TIMEOUT": "1",
}


def metric_samples(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def worker_state(env: dict[str, str]) -> str:
    (worker,) = json.loads(run_bot(env, "fleet", "--json").stdout)
    return str(worker["state"])


def test_worker_relays_reports_and_serves_metrics(
    env: dict[str, str],
    receiver: Receiver,
    make_settings: Callable[..., Any],
    workers: Callable[..., WorkerProcess],
) -> None:
    metrics_port = free_port()
    workers("w1", extra_env={**FAST, "BOT_REPORT_URL": receiver.url,
                             "BOT_METRICS_PORT": str(metrics_port)})  # fmt: skip
    app = create_app(make_settings())

    jobs = [app.send_task("ops.sum", kwargs={"a": n, "b": 1}) for n in range(5)]
    bad = app.send_task("ops.sum", kwargs={"a": "x", "b": 1})
    assert [job.get(timeout=30) for job in jobs] == [1, 2, 3, 4, 5]
    with pytest.raises(Exception, match="invalid payload"):
        bad.get(timeout=30)

    expected = {job.id for job in jobs} | {bad.id}
    wait_for(lambda: set(receiver.accepted_counts()) == expected, 20, "the worker's relay")
    assert set(receiver.accepted_counts().values()) == {1}
    sink_breaker = 'bot_breaker_state{breaker="sink:http"}'
    samples = wait_for(
        lambda: (
            (s := metric_samples(metrics_port)).get('bot_worker_state{state="READY"}')
            and sink_breaker in s
            and s
        ),
        10,
        "the metrics endpoint to show READY and the sink's breaker",
    )
    assert samples['bot_jobs_total{op="sum",outcome="succeeded"}'] == 5  # type: ignore[index]
    assert samples['bot_jobs_total{op="sum",outcome="rejected"}'] == 1  # type: ignore[index]
    assert samples['bot_job_duration_seconds_count{op="sum"}'] == 6  # type: ignore[index]
    assert samples[sink_breaker] == 0  # type: ignore[index]
    assert samples["bot_redis_up"] == 1  # type: ignore[index]
    assert samples["bot_outcomes_held"] == 0  # type: ignore[index]
    owed = wait_for(
        lambda: metric_samples(metrics_port).get('bot_outbox_pending{sink="http"}') == 0,
        10,
        "the http sink to owe nothing",
    )
    assert owed


def test_an_unreachable_sink_degrades_the_worker_until_it_answers_again(
    env: dict[str, str],
    receiver: Receiver,
    make_settings: Callable[..., Any],
    workers: Callable[..., WorkerProcess],
) -> None:
    workers("w1", extra_env={**FAST, "BOT_REPORT_URL": receiver.url})
    app = create_app(make_settings())
    receiver.down()

    jobs = [app.send_task("ops.sum", kwargs={"a": n, "b": 1}) for n in range(3)]
    assert [job.get(timeout=30) for job in jobs] == [1, 2, 3]
    wait_for(lambda: worker_state(env) == "DEGRADED", 20, "the worker to go DEGRADED")

    receiver.up()
    wait_for(lambda: worker_state(env) == "READY", 20, "the worker to be READY again")
    wait_for(
        lambda: set(receiver.accepted_counts()) == {job.id for job in jobs}, 20, "late delivery"
    )
    assert set(receiver.accepted_counts().values()) == {1}
