"""Redis memory per finished job: what the fleet's one Redis holds for every job that ended.

A private redis-server (no AOF) this script starts, one real `celery -A bot worker` (prefork
`-c 2`, default settings), and `--jobs` `sum` jobs submitted through `Client.submit` (generated
ids, as most callers do). Once every job has its report and the queue and kombu's unacked hash
are empty, it measures, per finished job:

- the job record `bot:job:{id}` and Celery's result meta `celery-task-meta-{id}`: `MEMORY
  USAGE ... SAMPLES 0` (every field) over `--sample` jobs, median; with the record's encoding
  and fields, and each key's TTL (how long it is held);
- the outbox entry: the growth of `MEMORY USAGE bot:outbox SAMPLES 0` over the run, / N (XLEN
  says how many entries);
- everything: the growth of `INFO memory` used_memory over the run, / N (this includes what
  MEMORY USAGE leaves out: each key's entry in the expires table).

The figures and the capacity formula they feed are in README.md ("Redis memory"). The worker's
settings are the defaults unless given as `BOT_*` environment variables to this script
(e.g. `BOT_RESULT_TTL=600 python bench/memory_per_job.py`).

    python bench/memory_per_job.py [--jobs 5000] [--sample 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from bench.fleet_bench import private_redis
from tests.support.processes import WorkerProcess, bot_env
from tests.support.redis_server import RedisServer

#: Jobs run before the baseline is read, so one-off keys (worker record, metrics hash, kombu
#: bindings, the outbox stream's own header) are not counted per job.
WARM_JOBS = 50
#: Seconds the whole run may take.
TIMEOUT_S = 900


@dataclass(frozen=True)
class Snapshot:
    """What Redis holds at one moment."""

    used_memory: int
    outbox_bytes: int
    outbox_len: int


@dataclass(frozen=True)
class KeyFigures:
    """One kind of per-job key over the sample: median bytes, TTL, and a look at one of them."""

    name: str
    bytes_median: float
    ttl_s: int
    encoding: str
    fields: tuple[str, ...] = ()


def snapshot(client: redis.Redis) -> Snapshot:
    outbox = "bot:outbox"
    return Snapshot(
        used_memory=int(client.info("memory")["used_memory"]),
        outbox_bytes=int(client.memory_usage(outbox, samples=0) or 0),
        outbox_len=int(client.xlen(outbox)) if client.exists(outbox) else 0,
    )


def worker_env(server: RedisServer, tmp: Path) -> dict[str, str]:
    """The worker's environment: defaults, only the built-in ops, plus this script's BOT_*."""
    own = {k: v for k, v in os.environ.items() if k.startswith("BOT_")}
    return bot_env(server.url(), tmp / "state", {"BOT_OPS_MODULES": "", **own})


def submit(server: RedisServer, tmp: Path, jobs: int) -> list[str]:
    """Submit `jobs` `sum` jobs through the Python client; their ids."""
    from bot.application import create_app
    from bot.client import Client
    from config.settings import Settings

    app = create_app(
        Settings(redis_url=server.url(), state_dir=tmp / "state", ops_modules=[]), fleet=False
    )
    client = Client(app)
    try:
        return [client.submit("sum", {"a": i, "b": 1}).job_id for i in range(jobs)]
    finally:
        app.close()


def wait_settled(client: redis.Redis, reports: int, worker: WorkerProcess) -> None:
    """Until `reports` reports are in the outbox and nothing is queued or held unacked."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        queued = client.llen("celery") + client.hlen("unacked")
        have = client.xlen("bot:outbox") if client.exists("bot:outbox") else 0
        if have >= reports and queued == 0:
            return
        if not worker.alive():
            raise RuntimeError(f"the worker died:\n{worker.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{have} of {reports} reports, {queued} messages still queued")
        time.sleep(0.2)


def key_figures(client: redis.Redis, name: str, keys: list[str]) -> KeyFigures:
    sizes = [int(client.memory_usage(key, samples=0) or 0) for key in keys]
    first = keys[0]
    kind = client.type(first)
    return KeyFigures(
        name=name,
        bytes_median=statistics.median(sizes),
        ttl_s=int(client.ttl(first)),
        encoding=str(client.object("encoding", first)),
        fields=tuple(sorted(client.hkeys(first))) if kind == "hash" else (),
    )


def measure(jobs: int, sample: int) -> tuple[list[KeyFigures], Snapshot, Snapshot, int]:
    """Run the jobs; the per-key figures, the snapshots before and after, and N."""
    with private_redis() as (server, tmp):
        client = server.client()
        worker = WorkerProcess("mem", worker_env(server, tmp), tmp, concurrency=2).start()
        try:
            worker.wait_ready(60)
            submit(server, tmp, WARM_JOBS)
            wait_settled(client, WARM_JOBS, worker)
            before = snapshot(client)
            ids = submit(server, tmp, jobs)
            wait_settled(client, WARM_JOBS + jobs, worker)
            time.sleep(1.0)  # the worker's last acks and events
            after = snapshot(client)
            picked = ids[:: max(1, len(ids) // sample)][:sample]
            figures = [
                key_figures(client, "job record", [f"bot:job:{i}" for i in picked]),
                key_figures(client, "result meta", [f"celery-task-meta-{i}" for i in picked]),
            ]
        finally:
            worker.stop(30)
    return figures, before, after, jobs


def table(figures: list[KeyFigures], before: Snapshot, after: Snapshot, jobs: int) -> list[str]:
    entries = after.outbox_len - before.outbox_len
    outbox = (after.outbox_bytes - before.outbox_bytes) / max(1, entries)
    used = (after.used_memory - before.used_memory) / jobs
    lines = [
        f"{jobs:,} `sum` jobs, one worker (-c 2), defaults; bytes per finished job:",
        "",
        "| what | bytes / job | held for (TTL at the end) | encoding |",
        "| --- | ---: | ---: | --- |",
    ]
    for f in figures:
        lines.append(f"| {f.name} | {f.bytes_median:,.0f} | {f.ttl_s:,} s | {f.encoding} |")
    lines.append(
        f"| outbox entry ({entries:,} entries) | {outbox:,.0f} | outbox retention | stream |"
    )
    total = sum(f.bytes_median for f in figures) + outbox
    lines.append(f"| sum of the above | {total:,.0f} | | |")
    lines.append(f"| used_memory growth / N | {used:,.0f} | | |")
    record = next(f for f in figures if f.name == "job record")
    lines += ["", f"a finished job record's fields: {', '.join(record.fields)}"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--sample", type=int, default=200, help="keys measured of each kind")
    args = parser.parse_args()
    print("\n".join(table(*measure(args.jobs, args.sample))))


if __name__ == "__main__":
    main()
