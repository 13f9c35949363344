"""Pools: prefork against threads, for I/O-bound and for CPU-bound ops.

Each row is one worker set-up (`-P prefork -c 2`, `-c 8`, `-P threads -c 8`, `-c 32`) on a
private redis-server (no AOF) this script starts. The worker runs four batches in turn (ops in
bench/bench_ops.py); each batch is published while the worker is idle, and timed from the end
of publishing to its last job done (so the producer's CPU is left out), counting the jobs done
in that span:

- I/O op: `ops.bench_io` sleeps `--sleep-ms` (20 ms, the stand-in for an HTTP call), then one
  INCR; `--jobs` (1,000) jobs: jobs/s and the worker's CPU per job;
- slow I/O op: the same with `--slow-ms` (200 ms), `--slow-jobs` (120) jobs: jobs/s, where
  concurrency rather than CPU is the limit;
- CPU op: `ops.bench_cpu` computes in Python for `--cpu-ms` (5 ms) of CPU time, then one INCR;
  `--cpu-jobs` (300) jobs: jobs/s;
- overhead op: `ops.bench_incr`, one INCR, so the job is all bot and Celery; `--jobs` jobs:
  jobs/s and the worker's CPU per job.

Then the PSS of all the worker's processes (main process and pool children), warm; and the
longest gap between two heartbeats seen during the batches (the heartbeat is a thread of the
worker's main process, every 0.5 s here). CPU and PSS are summed over every process of the
worker (psutil). One run takes about 1.5 minutes on two cores with the defaults; with
`--runs N` the rows alternate in order and each figure is the median of N runs.

    python bench/pool_bench.py [--runs 1] [--jobs 1000] [--sleep-ms 20] [--only threads] ...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import redis

from bench.fleet_bench import cpu_seconds, done, private_redis, pss_mib
from tests.support.processes import WorkerProcess, bot_env
from tests.support.redis_server import RedisServer

HEARTBEAT_S = 0.5


@dataclass(frozen=True)
class Pool:
    name: str
    pool: str
    concurrency: int

    @property
    def key(self) -> str:
        return f"{self.pool}-{self.concurrency}"


POOLS = [
    Pool("prefork -c 2", "prefork", 2),
    Pool("prefork -c 8", "prefork", 8),
    Pool("threads -c 8", "threads", 8),
    Pool("threads -c 32", "threads", 32),
]


@dataclass(frozen=True)
class Batch:
    name: str
    op: str
    jobs: int
    kwargs: dict[str, float]


def batches(args: argparse.Namespace) -> list[Batch]:
    return [
        Batch("io", "bench_io", args.jobs, {"sleep_ms": args.sleep_ms}),
        Batch("slow_io", "bench_io", args.slow_jobs, {"sleep_ms": args.slow_ms}),
        Batch("cpu", "bench_cpu", args.cpu_jobs, {"cpu_ms": args.cpu_ms}),
        Batch("incr", "bench_incr", args.jobs, {}),
    ]


class Rig:
    def __init__(self, server: RedisServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.client = server.client(0)
        from bot.application import create_app
        from config.settings import Settings

        settings = Settings(
            redis_url=server.url(0), state_dir=tmp / "state", ops_modules=["bench.bench_ops"]
        )
        self.producer = create_app(settings, fleet=False)

    def worker(self, pool: Pool) -> WorkerProcess:
        env = bot_env(
            self.server.url(0),
            self.tmp / "state",
            {
                "BOT_OPS_MODULES": "bench.bench_ops",
                "BENCH_COUNTER_URL": self.server.url(0),
                "BOT_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
            },
        )
        return WorkerProcess(
            f"pool-{pool.key}",
            env,
            self.tmp,
            concurrency=pool.concurrency,
            extra_args=("-P", pool.pool),
        )


class HeartbeatWatch:
    """The longest gap between two heartbeats of the (one) worker, sampled every 50 ms."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.last: int | None = None
        self.longest_ms = 0
        self._next = 0.0

    def sample(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 0.05
        beats = self.client.zrange("bot:workers", 0, -1, withscores=True)
        if not beats:
            return
        beat = int(beats[0][1])
        if self.last is not None and beat != self.last:
            self.longest_ms = max(self.longest_ms, beat - self.last)
        self.last = beat


def run_batch(
    rig: Rig, worker: WorkerProcess, watch: HeartbeatWatch, batch: Batch
) -> dict[str, float]:
    """Publish the batch to the idle worker; time it from the end of publishing to the last
    job done."""
    client = rig.client
    client.delete("bench:done")
    for i in range(batch.jobs):
        rig.producer.send_task(f"ops.{batch.op}", kwargs={"n": i, **batch.kwargs})
    started, first, cpu0 = time.perf_counter(), done(client), sum(cpu_seconds(worker))
    watch.last = None  # only beats seen one after the other count: not across publishing
    while done(client) < batch.jobs:
        if not worker.alive():
            raise RuntimeError(f"worker died:\n{worker.log()[-3000:]}")
        watch.sample()
        time.sleep(0.005)
    finished, cpu1 = time.perf_counter(), sum(cpu_seconds(worker))
    counted = batch.jobs - first
    return {"rate": counted / (finished - started), "cpu_us": (cpu1 - cpu0) / counted * 1e6}


def measure(rig: Rig, pool: Pool, args: argparse.Namespace) -> dict[str, Any]:
    rig.client.flushall()
    worker = rig.worker(pool).start().wait_ready()
    watch = HeartbeatWatch(rig.client)
    row: dict[str, Any] = {}
    try:
        for batch in batches(args):
            row[batch.name] = run_batch(rig, worker, watch, batch)
            # let the last acks and reports land before the next batch is published
            time.sleep(0.5)
        row["pss"] = pss_mib(worker)
        row["gap_s"] = watch.longest_ms / 1000
    finally:
        worker.stop(30)
    return row


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs."""
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        if isinstance(value, dict):
            out[key] = median_row([row[key] for row in rows])
        else:
            out[key] = statistics.median(row[key] for row in rows)
    return out


def table(results: dict[str, dict[str, Any]], pools: list[Pool], args: argparse.Namespace) -> str:
    lines = [
        f"| worker | I/O op {args.sleep_ms:g} ms: jobs/s | CPU µs/job | "
        f"slow I/O op {args.slow_ms:g} ms: jobs/s | CPU op {args.cpu_ms:g} ms: jobs/s | "
        "overhead op (INCR): jobs/s | CPU µs/job | workers PSS MiB | longest heartbeat gap s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for pool in pools:
        row = results[pool.key]
        lines.append(
            f"| `{pool.name}` | {row['io']['rate']:,.0f} | {row['io']['cpu_us']:,.0f} | "
            f"{row['slow_io']['rate']:,.0f} | {row['cpu']['rate']:,.0f} | "
            f"{row['incr']['rate']:,.0f} | {row['incr']['cpu_us']:,.0f} | {row['pss']:.0f} | "
            f"{row['gap_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="median of this many runs")
    parser.add_argument("--jobs", type=int, default=1000, help="I/O op and overhead op jobs")
    parser.add_argument("--sleep-ms", type=float, default=20.0)
    parser.add_argument("--slow-jobs", type=int, default=120)
    parser.add_argument("--slow-ms", type=float, default=200.0)
    parser.add_argument("--cpu-jobs", type=int, default=300)
    parser.add_argument("--cpu-ms", type=float, default=5.0)
    parser.add_argument("--only", default="", help="run only pools whose key contains this")
    args = parser.parse_args()
    pools = [p for p in POOLS if args.only in p.key]
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {pool.key: [] for pool in pools}
    with private_redis() as (server, tmp):
        rig = Rig(server, tmp)
        for run in range(args.runs):
            for pool in pools if run % 2 == 0 else reversed(pools):
                runs[pool.key].append(measure(rig, pool, args))
                print(f"run {run + 1}: {pool.name}: {runs[pool.key][-1]}", flush=True)
    results = {key: median_row(rows) for key, rows in runs.items()}
    minutes = (time.monotonic() - started) / 60
    print(
        f"\n{psutil.cpu_count()} cores, a private redis-server without AOF, `-l info`, "
        f"heartbeat every {HEARTBEAT_S} s; {args.jobs} jobs of the I/O and overhead ops, "
        f"{args.slow_jobs} of the slow I/O op, {args.cpu_jobs} of the CPU op; "
        f"median of {args.runs} run(s), {minutes:.1f} min.\n"
    )
    print(table(results, pools, args))


if __name__ == "__main__":
    main()
