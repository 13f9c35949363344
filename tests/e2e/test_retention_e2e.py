"""Bounded Redis memory end to end, with real `celery -A bot worker` processes and no relay (no
BOT_REPORT_URL): the workers' retention service trims the outbox to its bounds, never past a
consumer group that does not read, which is reported behind (`bot outbox --json`, the metric,
the log) until it is destroyed; and a Redis near its maxmemory turns every worker DEGRADED with
the reason (`bot fleet --json`, /metrics) while jobs still run, READY again once memory is
freed, with no job lost."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.application import create_app
from bot.client import Client
from config.settings import Settings
from tests.e2e.test_worker_services import metric_samples
from tests.support.processes import FAST_FLEET, WorkerProcess, bot_env, run_bot, wait_for
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.e2e

RETENTION = {
    "BOT_OUTBOX_MAX_LEN": "5",
    "BOT_OUTBOX_MAX_AGE": "3600",
    "BOT_OUTBOX_TRIM_INTERVAL": "0.5",
}


def outbox_job_ids(client: redis.Redis) -> Counter[str]:
    return Counter(fields["job_id"] for _, fields in client.xrange("bot:outbox"))


def run_jobs(client: Client, n: int, start: int = 0) -> set[str]:
    """Submit n sums and wait for each result; their job ids."""
    jobs = [client.submit("sum", {"a": i, "b": 1}) for i in range(start, start + n)]
    for i, job in enumerate(jobs):
        assert client.wait(job.job_id, timeout=30).result == start + i + 1
    return {job.job_id for job in jobs}


def outbox_stats(env: dict[str, str]) -> dict[str, Any]:
    done = run_bot(env, "outbox", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_without_a_relay_the_outbox_is_trimmed_and_a_group_that_never_reads_is_reported(
    env: dict[str, str],
    client: redis.Redis,
    make_settings: Callable[..., Any],
    workers: Callable[..., WorkerProcess],
) -> None:
    # Given two workers with no BOT_REPORT_URL and an outbox bound of 5 reports
    port = free_port()
    w1 = workers("w1", extra_env={**FAST_FLEET, **RETENTION, "BOT_METRICS_PORT": str(port)})
    w2 = workers("w2", extra_env={**FAST_FLEET, **RETENTION})
    jobs = Client(create_app(make_settings()))

    # When 20 jobs end, their retention service trims the outbox to the last 5 reports
    first = run_jobs(jobs, 20)
    wait_for(lambda: client.xlen("bot:outbox") == 5, 20, "the outbox trimmed to 5")
    assert set(outbox_job_ids(client)) <= first

    # Given a consumer group "billing" that never reads, created now, and 10 more jobs
    client.xgroup_create("bot:outbox", "billing", id="$")
    second = run_jobs(jobs, 10, start=100)

    # Then what billing owes is never trimmed (the 5 older reports go), one report per job
    wait_for(lambda: client.xlen("bot:outbox") == 10, 20, "the reports billing does not owe gone")
    assert outbox_job_ids(client) == dict.fromkeys(second, 1)
    # and billing is reported behind: bot outbox --json, the metric, a warning in the log
    stats = outbox_stats(env)
    assert stats["behind"] == ["billing"]
    (billing,) = stats["groups"]
    assert (billing["behind"], billing["behind_bound"], billing["owed"]) == (True, "length", 10)
    behind_metric = 'bot_outbox_group_behind{sink="billing"}'
    wait_for(lambda: metric_samples(port).get(behind_metric) == 1, 10, "the behind metric")
    warning = "outbox group billing is behind: owes 10 report(s)"
    wait_for(lambda: warning in w1.log() + w2.log(), 10, "the warning in a worker's log")

    # When the operator destroys the group, the outbox goes back to its bound and the flag off
    client.xgroup_destroy("bot:outbox", "billing")
    wait_for(lambda: client.xlen("bot:outbox") == 5, 20, "the outbox trimmed to 5 again")
    wait_for(lambda: not client.exists("bot:outbox:behind"), 20, "the behind verdict cleared")
    wait_for(lambda: metric_samples(port).get(behind_metric) is None, 10, "no metric of billing")


def fill_to(client: redis.Redis, share: float, chunk: int = 64 * 1024) -> list[str]:
    """Junk keys until Redis's used_memory is at least `share` of its maxmemory."""
    keys: list[str] = []
    memory = client.info("memory")
    while memory["used_memory"] < share * memory["maxmemory"]:
        keys.append(f"junk:{len(keys)}")
        client.set(keys[-1], "x" * chunk)
        memory = client.info("memory")
    return keys


def fleet_states(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    done = run_bot(env, "fleet", "--json")
    assert done.returncode == 0, done.stderr
    return {w["node"]: (w["state"], w.get("state_reason", "")) for w in json.loads(done.stdout)}


def test_workers_go_degraded_before_redis_is_full_and_ready_once_memory_is_freed(
    private_redis: RedisServer,
    state_dir: Path,
    workers: Callable[..., WorkerProcess],
) -> None:
    # Given two workers on a private Redis (noeviction) whose maxmemory is 8 MB above its use
    port = free_port()
    env = bot_env(private_redis.url(), state_dir, FAST_FLEET)
    workers("w1", extra_env={**env, "BOT_METRICS_PORT": str(port)})
    workers("w2", extra_env=env)
    client = private_redis.client()
    jobs = Client(create_app(Settings(redis_url=private_redis.url(), state_dir=state_dir)))
    done = run_jobs(jobs, 10)
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 8_000_000)

    # When junk fills it to 95% of maxmemory (the limit is 90%)
    junk = fill_to(client, 0.95)

    # Then both workers go DEGRADED, saying why, while writes still succeed
    def degraded() -> bool:
        states = fleet_states(env)
        return len(states) == 2 and all(s == "DEGRADED" for s, _ in states.values())

    wait_for(degraded, 20, "both workers DEGRADED")
    for _state, reason in fleet_states(env).values():
        assert reason.startswith("redis memory 9") and reason.endswith("(limit 90%)"), reason
    samples = metric_samples(port)
    assert samples["bot_redis_memory_guard"] == 1
    assert samples['bot_worker_state{state="DEGRADED"}'] == 1
    assert client.set("probe", "written") is True
    # and they keep taking jobs
    done |= run_jobs(jobs, 10, start=100)

    # When the junk is deleted, both are READY again
    client.delete(*junk)

    def ready() -> bool:
        return {s for s, _ in fleet_states(env).values()} <= {"READY", "PROCESSING"}

    wait_for(ready, 20, "both workers READY again")
    wait_for(lambda: metric_samples(port)["bot_redis_memory_guard"] == 0, 10, "the guard off")
    done |= run_jobs(jobs, 5, start=200)

    # And no job was lost: each of the 25 ended with exactly one report
    assert outbox_job_ids(client) == dict.fromkeys(done, 1)
