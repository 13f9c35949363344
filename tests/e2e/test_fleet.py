"""The fleet bootstep end to end (issue 3): real redis-server, real `celery -A bot worker`
processes, the real `bot` CLI.

Short settings: heartbeat 0.5 s, lease TTL 1.5 s. Each test also pins the Celery 5.7
behaviour the step relies on (see bot/fleet/step.py), by the order of lines in the worker's log.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.application import BotApp, create_app
from bot.client import Client
from bot.store.inbox import registry_key
from bot.store.keys import KOMBU_UNACKED_INDEX, Keys
from tests.support.processes import WorkerProcess, bot_env, run_bot, wait_for
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.e2e

HEARTBEAT_S = 0.5
LEASE_TTL_S = 1.5
KEYS = Keys("bot")
FAST = {
    "BOT_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
    "BOT_LEASE_TTL": str(LEASE_TTL_S),
    "BOT_BREAKER_TIMEOUT": "1",
}


def fleet_json(env: dict[str, str]) -> list[dict[str, Any]]:
    done = run_bot(env, "fleet", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def instance_of(client: redis.Redis, worker: WorkerProcess) -> str | None:
    """The instance id whose record names this worker's pid."""
    for instance_id in client.zrange(KEYS.workers, 0, -1):
        if client.hget(KEYS.worker(instance_id), "pid") == str(worker.pid):
            return str(instance_id)
    return None


def registered(client: redis.Redis, worker: WorkerProcess) -> str:
    found = wait_for(lambda: instance_of(client, worker), 10, f"{worker.name} to register")
    return str(found)


def state_of(client: redis.Redis, instance_id: str) -> str | None:
    return client.hget(KEYS.worker(instance_id), "state")  # type: ignore[return-value]


def wait_state(client: redis.Redis, instance_id: str, state: str, timeout_s: float = 10) -> None:
    wait_for(lambda: state_of(client, instance_id) == state, timeout_s, f"{instance_id} {state}")


def gone(client: redis.Redis, instance_id: str) -> bool:
    """Record, lease and set of inboxes (bot/broker/inbox.py) all gone."""
    inboxes = registry_key(KEYS.prefix, instance_id)
    return client.exists(KEYS.worker(instance_id), KEYS.lease(instance_id), inboxes) == 0


def line_index(log: str, pattern: str) -> int:
    """Index of the first log line matching `pattern` (fails the test when there is none)."""
    for number, line in enumerate(log.splitlines()):
        if re.search(pattern, line):
            return number
    raise AssertionError(f"no log line matches {pattern!r}")


#: w1 also consumes this queue, so a job sent there runs on w1 even with w2 up.
W1_QUEUE = "only-w1"


def submit_sleep(app: BotApp, seconds: float, job_id: str, queue: str | None = None) -> None:
    Client(app).submit("sleep", {"seconds": seconds, "steps": 5}, job_id=job_id, queue=queue)


def two_workers(workers: Callable[..., WorkerProcess]) -> tuple[WorkerProcess, WorkerProcess]:
    one = workers("w1", extra_env=FAST, extra_args=("-Q", f"celery,{W1_QUEUE}"))
    two = workers("w2", extra_env=FAST)
    return one, two


def heartbeats_while(client: redis.Redis, instance_id: str, state: str, count: int) -> list[int]:
    """`count` distinct last_heartbeat values seen while the record says `state`."""
    seen: list[int] = []

    def more() -> bool:
        rec = client.hgetall(KEYS.worker(instance_id))
        if rec.get("state") == state and int(rec["last_heartbeat"]) not in seen:
            seen.append(int(rec["last_heartbeat"]))
        return len(seen) >= count

    wait_for(more, count * HEARTBEAT_S * 4, f"{count} heartbeats in {state}", interval_s=0.05)
    return seen


# -- registration, heartbeats, `bot fleet` ------------------------------------------------------


def test_two_workers_are_listed_ready_within_two_heartbeats(
    env: dict[str, str], workers: Callable[..., WorkerProcess], client: redis.Redis
) -> None:
    one = workers("w1", extra_env=FAST, concurrency=2)
    two = workers("w2", extra_env=FAST, concurrency=1)
    ready_at = time.monotonic()

    def both_ready() -> list[dict[str, Any]] | None:
        rows = fleet_json(env)
        return rows if [r["state"] for r in rows] == ["READY", "READY"] else None

    rows = wait_for(both_ready, 2 * HEARTBEAT_S + 5, "both workers READY in bot fleet")
    assert time.monotonic() - ready_at < 2 * HEARTBEAT_S + 5  # CLI start-up included
    by_pid = {row["pid"]: row for row in rows}  # type: ignore[union-attr]
    assert by_pid[str(one.pid)]["pool"] == "2"
    assert by_pid[str(two.pid)]["pool"] == "1"
    assert by_pid[str(one.pid)]["node"].startswith("w1@")
    assert len({row["instance_id"] for row in rows}) == 2  # type: ignore[union-attr]
    assert len({row["bot_id"] for row in rows}) == 2  # type: ignore[union-attr]
    assert set(client.hkeys(KEYS.ops)) >= {"sum", "sleep"}
    # The table shows the same, and instance ids came from the private identity file.
    table = run_bot(env, "fleet").stdout
    assert table.splitlines()[0].split()[:4] == ["bot", "instance", "host", "state"]
    assert table.count("READY") == 2
    identity = json.loads((Path(env["BOT_STATE_DIR"]) / "identity.json").read_text())
    assert {w["instance_id"] for w in identity["workers"].values()} == {
        r["instance_id"]
        for r in rows  # type: ignore[union-attr]
    }


def test_health_and_counters_follow_the_local_worker_and_the_fleet(
    env: dict[str, str],
    workers: Callable[..., WorkerProcess],
    client: redis.Redis,
    bot_app: BotApp,
) -> None:
    assert run_bot(env, "health").returncode == 1  # nothing started with this state dir yet
    worker = workers("w1", extra_env=FAST)
    instance_id = registered(client, worker)
    wait_state(client, instance_id, "READY")

    # Outcomes counted in the pool child show in the record the main process writes
    Client(bot_app).submit("sum", {"a": 1, "b": 2})
    bot_app.send_task("ops.sum", kwargs={"a": "x", "b": 2})  # rejected in the worker: failed
    wait_for(
        lambda: (
            client.hmget(KEYS.worker(instance_id), "done", "failed", "in_flight") == ["1", "1", "0"]
        ),
        10,
        "done=1 failed=1 in_flight=0 in the record",
    )

    healthy = run_bot(env, "health")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "READY" in healthy.stdout
    assert run_bot(env, "health", "--fleet").returncode == 0

    worker.stop()
    assert run_bot(env, "health").returncode == 1
    assert run_bot(env, "health", "--fleet").returncode == 1


def test_pool_size_follows_autoscale(
    env: dict[str, str],
    workers: Callable[..., WorkerProcess],
    client: redis.Redis,
    bot_app: BotApp,
) -> None:
    worker = workers("auto", extra_env=FAST, extra_args=("--autoscale=4,1",))
    instance_id = registered(client, worker)
    wait_for(lambda: client.hget(KEYS.worker(instance_id), "pool") == "1", 10, "pool of 1")
    assert client.hget(KEYS.worker(instance_id), "autoscale_max") == "4"

    for n in range(4):
        submit_sleep(bot_app, 3, f"auto-{n}")

    wait_for(lambda: client.hget(KEYS.worker(instance_id), "pool") == "4", 15, "pool of 4")
    row = next(r for r in fleet_json(env) if r["instance_id"] == instance_id)
    assert row["pool"] == "4"
    assert row["state"] == "PROCESSING"


# -- shutdown paths -----------------------------------------------------------------------------


def test_sigterm_keeps_beating_until_the_job_ends_then_leaves(
    workers: Callable[..., WorkerProcess], client: redis.Redis, bot_app: BotApp
) -> None:
    # Given w1 running a 6 s job, and w2 idle
    one, two = two_workers(workers)
    one_id, two_id = registered(client, one), registered(client, two)
    submit_sleep(bot_app, 6, "long-job", W1_QUEUE)
    wait_state(client, one_id, "PROCESSING")
    wait_state(client, two_id, "READY")

    # (and its heartbeats renew kombu's unacked_index score of the job's delivery tag)
    tag = wait_for(lambda: client.hget(KEYS.job("long-job"), "delivery_tag"), 5, "the tag")
    first = client.zscore(KOMBU_UNACKED_INDEX, str(tag))
    assert first is not None
    wait_for(
        lambda: (client.zscore(KOMBU_UNACKED_INDEX, str(tag)) or 0) >= first + HEARTBEAT_S,
        5,
        "the unacked_index score to be renewed",
    )

    # When w1 gets SIGTERM
    one.signal(signal.SIGTERM)

    # Then it keeps heartbeating as SHUTTING_DOWN while the job runs ...
    beats = heartbeats_while(client, one_id, "SHUTTING_DOWN", 3)
    assert beats == sorted(beats)
    assert client.pttl(KEYS.lease(one_id)) > 0
    assert client.hget(KEYS.job("long-job"), "state") == "running"
    # ... then, once the job ended, its record, lease and registry entry are gone
    assert one.wait(timeout_s=20) == 0
    assert gone(client, one_id)
    assert client.zscore(KEYS.workers, one_id) is None
    assert client.hget(KEYS.job("long-job"), "state") == "succeeded"
    # ... and w2 is untouched
    assert state_of(client, two_id) == "READY"
    assert client.pttl(KEYS.lease(two_id)) > 0
    # Pinned Celery 5.7 order: step.stop() before the pool drained, deregistration (on
    # worker_shutdown) after the job finished.
    log = one.log()
    shutting = line_index(log, r"-> SHUTTING_DOWN")
    job_done = line_index(log, r"Task ops\.sleep\[long-job\] succeeded")
    left = line_index(log, r"deregistered \(warm shutdown\)")
    assert shutting < job_done < left


def test_soft_shutdown_sigterm_then_sigquit_leaves_clean(
    workers: Callable[..., WorkerProcess], client: redis.Redis, bot_app: BotApp
) -> None:
    one, two = two_workers(workers)
    one_id, two_id = registered(client, one), registered(client, two)
    submit_sleep(bot_app, 6, "soft-job", W1_QUEUE)
    wait_state(client, one_id, "PROCESSING")

    one.signal(signal.SIGTERM)
    wait_state(client, one_id, "SHUTTING_DOWN")
    one.signal(signal.SIGQUIT)

    one.wait(timeout_s=20)
    assert gone(client, one_id)
    # Pinned: SIGQUIT during a warm drain cancels the job, and the warm path still ends
    # through worker_shutdown (not the step's terminate()).
    assert "deregistered (warm shutdown)" in one.log()
    assert state_of(client, two_id) in ("READY", "PROCESSING")
    assert client.pttl(KEYS.lease(two_id)) > 0


def test_cold_shutdown_leaves_record_and_lease_gone(
    workers: Callable[..., WorkerProcess], client: redis.Redis, bot_app: BotApp
) -> None:
    one, two = two_workers(workers)
    one_id, two_id = registered(client, one), registered(client, two)
    submit_sleep(bot_app, 6, "cold-job", W1_QUEUE)
    wait_state(client, one_id, "PROCESSING")

    one.signal(signal.SIGQUIT)

    one.wait(timeout_s=20)
    assert gone(client, one_id)
    # Pinned: the cold path reaches the step through terminate(), not worker_shutdown.
    assert "deregistered (cold shutdown)" in one.log()
    assert state_of(client, two_id) in ("READY", "PROCESSING")
    assert client.pttl(KEYS.lease(two_id)) > 0


def test_kill_9_lets_the_lease_expire_and_fleet_shows_it_dead(
    env: dict[str, str], workers: Callable[..., WorkerProcess], client: redis.Redis
) -> None:
    one = workers("w1", extra_env=FAST)
    one_id = registered(client, one)
    wait_state(client, one_id, "READY")

    one.kill()
    killed_at = time.monotonic()

    wait_for(lambda: client.exists(KEYS.lease(one_id)) == 0, LEASE_TTL_S + 2, "lease to expire")
    assert time.monotonic() - killed_at <= LEASE_TTL_S + 0.5
    row = next(r for r in fleet_json(env) if r["instance_id"] == one_id)
    assert row["state"] in ("DEAD", "GONE")
    assert row["alive"] is False


# -- Redis faults -------------------------------------------------------------------------------


def test_redis_restart_degrades_and_recovers_without_a_restart(
    private_redis: RedisServer,
    state_dir: Path,
    workers: Callable[..., WorkerProcess],
    make_settings: Callable[..., Any],
) -> None:
    env = bot_env(private_redis.url(), state_dir, FAST)
    client = private_redis.client()
    worker = workers("w1", extra_env=env)
    instance_id = registered(client, worker)
    wait_state(client, instance_id, "READY")

    # When Redis is down for longer than a heartbeat (and the lease TTL)
    private_redis.stop()
    wait_for(lambda: "-> DEGRADED" in worker.log(), 10, "DEGRADED in the worker log")
    time.sleep(LEASE_TTL_S)  # the outage itself, not an assertion
    private_redis.start()

    # Then the worker comes back to READY by itself, in the same process (the record read
    # back from the AOF still says READY until the worker rewrites it: wait for its counts)
    def recovered() -> dict[str, int] | None:
        rec = client.hgetall(KEYS.worker(instance_id))
        counts = json.loads(rec.get("transitions") or "{}")
        return counts if rec.get("state") == "READY" and "DEGRADED->READY" in counts else None

    transitions = wait_for(recovered, 30, "the record to show DEGRADED -> READY")
    assert worker.alive()
    assert transitions["READY->DEGRADED"] == 1  # type: ignore[index]
    # ... and jobs submitted after the recovery run
    app = create_app(make_settings(redis_url=private_redis.url()), fleet=False)
    try:
        submitted = Client(app).submit("sum", {"a": 2, "b": 3})
        assert app.AsyncResult(submitted.job_id).get(timeout=30) == 5
    finally:
        app.close()
    assert worker.alive()


def test_redis_absent_at_start_backs_off_then_exits_non_zero(
    state_dir: Path, workers: Callable[..., WorkerProcess]
) -> None:
    env = bot_env(
        f"redis://127.0.0.1:{free_port()}/0",
        state_dir,
        {
            "BOT_MAX_STARTUP_ATTEMPTS": "5",
            "BOT_RETRY_BASE_DELAY": "0.1",
            "BOT_RETRY_MAX_DELAY": "0.4",
            "BOT_BREAKER_THRESHOLD": "100",
        },
    )
    worker = workers("w1", extra_env=env, wait=False)

    code = worker.wait(timeout_s=30)

    log = worker.log()
    assert code == 3, log[-2000:]
    retries = re.findall(
        r"attempt (\d)/5 failed .*retrying in ([\d.]+)s \(backoff ceiling ([\d.]+)s\)", log
    )
    assert [int(n) for n, _, _ in retries] == [1, 2, 3, 4]
    ceilings = [float(c) for _, _, c in retries]
    assert ceilings == [0.1, 0.2, 0.4, 0.4]  # base * 2**n, capped at BOT_RETRY_MAX_DELAY
    assert all(0 <= float(d) <= float(c) for _, d, c in retries)  # full jitter
    giving_up = [line for line in log.splitlines() if "giving up" in line]
    assert len(giving_up) == 1
    assert "after 5 registration attempts" in giving_up[0]
    assert "Traceback" not in log


def test_threads_pool_with_autoscale_is_refused_at_start(
    env: dict[str, str], tmp_path: Path
) -> None:
    worker = WorkerProcess(
        "thr", env, tmp_path, extra_args=("--pool", "threads", "--autoscale=4,1")
    ).start()
    try:
        code = worker.wait(timeout_s=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise

    assert code == 2
    log = worker.log()
    assert "--autoscale works only with the prefork pool" in log
    assert "Traceback" not in log
    assert " ready." not in log
