"""The price of BOT_REDIS_MIN_REPLICAS: job ends (the fenced complete.lua, as a worker runs it)
per second and per job, without WAIT and with `WAIT 1` against a real replica, on a private
primary + replica (loopback) this script starts and stops itself.

    .venv/bin/python bench/replica_wait_bench.py [--jobs 5000]

One client, sequential: the figure is the latency a job end gains (one more round trip plus
the replication of the script's writes), which is what each pool process pays per job.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.jobs.store import JobStore, Outcome, ReplicaWait  # noqa: E402
from bot.store.keys import Keys  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.sentinel import ReplicaServer  # noqa: E402

KEYS = Keys("bot")
WAIT_TIMEOUT_MS = 500


def running_jobs(client: redis.Redis, prefix: str, n: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.hset(KEYS.job(f"{prefix}-{i}"), mapping={"state": "running", "owner": "b", "fence": 1})
    pipe.execute()


def end_jobs(client: redis.Redis, prefix: str, n: int, wait: ReplicaWait) -> float:
    """Seconds to end n running jobs one after the other."""
    store = JobStore(client, KEYS, wait)
    report = json.dumps({"job_id": "x", "status": "succeeded", "result": 1})
    started = time.perf_counter()
    for i in range(n):
        outcome = Outcome("succeeded", {"result": i}, report, "sum", 0.001)
        store.complete(f"{prefix}-{i}", "b", 1, outcome, 3600)
    return time.perf_counter() - started


def wait_linked(replica: RedisServer) -> None:
    for _ in range(400):
        if replica.client().info("replication").get("master_link_status") == "up":
            return
        time.sleep(0.05)
    raise RuntimeError("the replica never linked to the primary")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    n = parser.parse_args().jobs
    with tempfile.TemporaryDirectory() as tmp:
        primary = RedisServer(Path(tmp) / "primary")
        primary.extra_args = ["--appendfsync", "everysec"]  # as in the compose files
        replica = ReplicaServer(Path(tmp) / "replica", primary.port)
        primary.start()
        replica.start()
        try:
            wait_linked(replica)
            client = primary.client()
            rows = []
            for name, wait in (
                ("no WAIT (MIN_REPLICAS=0)", ReplicaWait()),
                ("WAIT 1 (MIN_REPLICAS=1)", ReplicaWait(1, WAIT_TIMEOUT_MS)),
            ):
                prefix = name.split()[0]
                running_jobs(client, prefix, n)
                rows.append((name, end_jobs(client, prefix, n, wait)))
            short = client.hget(KEYS.stats, "replica_wait_short") or 0
        finally:
            replica.stop(kill=True)
            primary.stop(kill=True)
    print(f"job ends (complete.lua), {n:,} sequential, primary AOF everysec + replica, loopback")
    print("| mode | job ends/s | µs per job end |")
    print("| --- | ---: | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {n / seconds:,.0f} | {seconds / n * 1e6:,.0f} |")
    print(f"ends the replica did not acknowledge in {WAIT_TIMEOUT_MS} ms: {short}")


if __name__ == "__main__":
    main()
