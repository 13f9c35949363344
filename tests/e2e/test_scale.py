"""Many fleet members on one Redis (issue 12, "Many workers"): real `celery -A bot worker -c 1`
processes next to 200 simulated members (`python -m bot.fleet.simulation`, bot's own register
and heartbeat scripts), all on short lease settings. The benchmark (`make bench-scale`) runs
the same set-up with 20 workers.

Lease settings: heartbeat 1 s, lease TTL 3 s, reaper every 0.5 s (200 members beat 200 times a
second; kept frugal for a 2-core machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from bot.application import BotApp
from bot.client import Client
from bot.store.keys import Keys
from tests.support.processes import WorkerProcess, run_bot, wait_for
from tests.support.simulation_process import SimulationProcess

pytestmark = pytest.mark.e2e

KEYS = Keys("bot")
HEARTBEAT_S, LEASE_TTL_S, REAPER_S = 1.0, 3.0, 0.5
SCALE_ENV = {
    "BOT_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
    "BOT_LEASE_TTL": str(LEASE_TTL_S),
    "BOT_REAPER_INTERVAL": str(REAPER_S),
}
REAL_WORKERS = 4
SIMULATED = 200
JOBS = 6
#: Beyond lease TTL + one reaper interval: a loaded 2-core machine's scheduling.
SLACK_S = 2.0


@pytest.fixture
def scale_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, **SCALE_ENV}


@pytest.fixture
def simulation(scale_env: dict[str, str], tmp_path: Path) -> Iterator[SimulationProcess]:
    sim = SimulationProcess(SIMULATED, scale_env, tmp_path).start()
    yield sim
    sim.stop(timeout_s=15)


def fleet_json(env: dict[str, str]) -> list[dict[str, Any]]:
    done = run_bot(env, "fleet", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def fleet_of(env: dict[str, str], size: int) -> list[dict[str, Any]] | None:
    """`bot fleet --json` once it lists `size` members."""
    listed = fleet_json(env)
    return listed if len(listed) == size else None


def start_workers(workers: Any) -> list[WorkerProcess]:
    started = [
        workers(f"w{i}", extra_env=SCALE_ENV, wait=False, concurrency=1)
        for i in range(REAL_WORKERS)
    ]
    return [worker.wait_ready() for worker in started]


def running_on(client: redis.Redis, workers: list[WorkerProcess]) -> tuple[WorkerProcess, str]:
    """A worker whose pool child runs one of the jobs (a job record's pid is that child), and
    its instance id (the record's owner)."""

    def find() -> tuple[WorkerProcess, str] | None:
        for i in range(JOBS):
            rec = client.hgetall(KEYS.job(f"scale-{i}"))
            pid = int(rec.get("pid") or 0) if rec.get("state") == "running" else 0
            worker = next((w for w in workers if pid and pid in w.children()), None)
            if worker is not None:
                return worker, rec["owner"]
        return None

    return wait_for(find, 30, "a job to run")  # type: ignore[return-value]


def ended(client: redis.Redis) -> bool:
    states = [client.hget(KEYS.job(f"scale-{i}"), "state") for i in range(JOBS)]
    return all(state == "succeeded" for state in states)


def test_silenced_member_is_reaped_in_bounds_and_killed_workers_jobs_recover_among_200(
    workers, simulation, scale_env, bot_app: BotApp, client
):
    # Given 4 real workers and 200 simulated members on one Redis
    real = start_workers(workers)
    members = cast(
        list[dict[str, Any]],
        wait_for(
            lambda: fleet_of(scale_env, SIMULATED + REAL_WORKERS),
            20,
            "bot fleet to list every member",
        ),
    )
    assert all(member["alive"] for member in members)
    assert sum(member.get("pool_kind") == "simulated" for member in members) == SIMULATED

    # When one simulated member stops heartbeating
    silenced = simulation.silence_one()
    since = time.monotonic()
    wait_for(
        lambda: client.zscore(KEYS.workers, silenced) is None,
        LEASE_TTL_S + REAPER_S + SLACK_S,
        "the silenced member to be reaped",
    )
    # Then the reaper forgot it within its lease TTL + one reaper interval (+ slack)
    reaped_after = time.monotonic() - since
    assert not client.exists(KEYS.worker(silenced))

    # When a worker is kill -9'd (with its pool child) while jobs run
    for i in range(JOBS):
        Client(bot_app).submit("touch", {"seconds": 1.5}, job_id=f"scale-{i}")
    victim, victim_instance = running_on(client, real)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(victim.pid, signal.SIGKILL)

    # Then every job ends, each with exactly one report
    wait_for(lambda: ended(client), 60, "every job to succeed")
    reports = Counter(
        json.loads(fields["report"])["job_id"] for _, fields in client.xrange(KEYS.outbox)
    )
    assert reports == Counter({f"scale-{i}": 1 for i in range(JOBS)})
    assert int(client.hget(KEYS.stats, "reaper_recovered") or 0) >= 1
    # And every other member kept beating: bot fleet lists the others, all alive
    survivors = SIMULATED - 1 + REAL_WORKERS - 1
    listed = cast(
        list[dict[str, Any]],
        wait_for(
            lambda: fleet_of(scale_env, survivors),
            LEASE_TTL_S + REAPER_S + SLACK_S,
            "the killed worker to leave the fleet",
        ),
    )
    assert all(member["alive"] for member in listed)
    assert victim_instance not in {member["instance_id"] for member in listed}
    assert silenced not in {member["instance_id"] for member in listed}
    print(f"silenced member reaped after {reaped_after:.2f}s")
