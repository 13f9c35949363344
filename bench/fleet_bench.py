"""Fleet throughput, latency, memory and CPU: bot against stock Celery, same Redis, same run.

Each set-up (a row) runs a prefork `-c 2` worker on a private redis-server (no AOF) this script
starts, and a producer in this process, through five phases:

1. enqueue: N jobs published with no worker running (jobs/s; for the bot op also through
   `Client.submit`, with and without a caller's job id);
2. drain: a worker starts on the backlog; from the first job done to the last (jobs/s), with the
   worker processes' and Redis's CPU per job and Redis's per-command cost over the same span;
3. end-to-end: N jobs submitted to the running worker, first submit to last job done (jobs/s);
4. latency: jobs one at a time, submit to `AsyncResult.get()` (p50/p99 ms);
5. memory: PSS of the worker's main process and pool children, warm.

Set-ups alternate within each run; each figure is the median over `--runs`. The job is one INCR
(bench/bench_ops.py, bench/stock_bench_app.py). `--write` puts the table in docs/benchmarks.md
between its markers; `--profile` instead samples one bot-op run with py-spy (worker main process,
a pool child, the producer) and writes call trees to docs/profiles/.

    python bench/fleet_bench.py [--jobs 2000] [--runs 3] [--write] [--profile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import redis
from celery import Celery

from bench import profiling
from bench.bench_ops import COUNTER_KEY
from tests.support.processes import REPO_ROOT, WorkerProcess, bot_env
from tests.support.redis_server import RedisServer

DOC = REPO_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- fleet-bench:begin -->", "<!-- fleet-bench:end -->"
#: Celery settings of the "stock like Flower users run it" row: results (the app has a backend),
#: acks_late, prefetch 1, and task events through `-E`.
STOCK_RELIABLE = {
    "task_acks_late": True,
    "worker_prefetch_multiplier": 1,
    "task_reject_on_worker_lost": True,
}
STOCK_DB, BOT_DB = 1, 0
KOMBU_REDIS = "kombu.transport.redis:Transport"
LATENCY_SAMPLES = 400


@dataclass
class Setup:
    """One row: how its worker starts and how its producer publishes."""

    name: str
    key: str
    task: str
    stock_conf: dict[str, Any] | None = None  # None: a bot worker
    worker_args: tuple[str, ...] = ()
    bot_settings: dict[str, str] = field(default_factory=dict)
    op: str | None = None  # a bot op: also enqueued through Client.submit

    @property
    def db(self) -> int:
        return BOT_DB if self.stock_conf is None else STOCK_DB


SETUPS = [
    Setup("stock Celery 5.7, defaults", "stock", "stock.incr", stock_conf={}),
    Setup(
        "stock + results, acks_late, prefetch 1",
        "stock_reliable",
        "stock.incr",
        stock_conf=STOCK_RELIABLE,
    ),
    Setup(
        "stock + results, acks_late, prefetch 1, events (-E)",
        "stock_events",
        "stock.incr",
        stock_conf=STOCK_RELIABLE,
        worker_args=("-E",),
    ),
    Setup("bot app, plain Celery task (bench.incr)", "bot_plain", "bench.incr"),
    Setup("bot op (ops.bench_incr)", "bot_op", "ops.bench_incr", op="bench_incr"),
    Setup(
        "bot op, BOT_TASK_EVENTS=false",
        "bot_op_quiet",
        "ops.bench_incr",
        bot_settings={"BOT_TASK_EVENTS": "false"},
        op="bench_incr",
    ),
]

SETUP_BY_KEY = {setup.key: setup for setup in SETUPS}


class Rig:
    """The private Redis, the state directory and the producers of one benchmark run."""

    def __init__(self, server: RedisServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self._producers: dict[str, Celery] = {}

    def redis(self, setup: Setup) -> redis.Redis:
        return self.server.client(setup.db)

    def env(self, setup: Setup) -> dict[str, str]:
        env = bot_env(self.server.url(BOT_DB), self.tmp / "state", setup.bot_settings)
        env.update(
            BOT_OPS_MODULES="bench.bench_ops",
            BENCH_COUNTER_URL=self.server.url(BOT_DB),
            STOCK_BENCH_URL=self.server.url(STOCK_DB),
            STOCK_BENCH_CONF=json.dumps(setup.stock_conf or {}),
        )
        return env

    def producer(self, setup: Setup) -> Celery:
        if setup.key not in self._producers:
            self._producers[setup.key] = self._make_producer(setup)
        return self._producers[setup.key]

    def _make_producer(self, setup: Setup) -> Celery:
        if setup.stock_conf is not None:
            from bench.stock_bench_app import make_app

            app = make_app(setup.stock_conf)
            app.conf.update(broker_url=self.server.url(STOCK_DB))
            app.conf.update(result_backend=self.server.url(STOCK_DB))
            # kombu's own Redis transport, as a stock producer has: once a bot app exists in
            # this process, `redis://` resolves to bot's (bot/broker/transport.py).
            app.conf.update(broker_transport=KOMBU_REDIS)
            return app
        from bot.application import create_app
        from config.settings import Settings

        extra = {k.removeprefix("BOT_").lower(): v for k, v in setup.bot_settings.items()}
        settings = Settings(
            redis_url=self.server.url(BOT_DB),
            state_dir=self.tmp / "state",
            ops_modules=["bench.bench_ops"],
            **extra,
        )
        return create_app(settings, fleet=False)

    def worker(self, setup: Setup, extra_args: tuple[str, ...] = ()) -> WorkerProcess:
        app = "bench.stock_bench_app" if setup.stock_conf is not None else "bot"
        queues = "stock" if setup.stock_conf is not None else None
        return WorkerProcess(
            f"bench-{setup.key}",
            self.env(setup),
            self.tmp,
            concurrency=2,
            extra_args=(*setup.worker_args, *extra_args),
            app=app,
            queues=queues,
        )


# --- measuring -------------------------------------------------------------------------------


def processes_of(worker: WorkerProcess) -> list[psutil.Process]:
    main = psutil.Process(worker.pid)
    return [main, *main.children(recursive=True)]


def cpu_seconds(worker: WorkerProcess) -> tuple[float, float]:
    """CPU seconds of the worker's main process, and of its pool children together."""
    main, children = 0.0, 0.0
    for process in processes_of(worker):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        if process.pid == worker.pid:
            main += times.user + times.system
        else:
            children += times.user + times.system
    return main, children


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def command_usec(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per Redis command: (calls, usec) since the server started."""
    stats = client.info("commandstats")
    out = {}
    for name, values in stats.items():
        out[name.removeprefix("cmdstat_")] = (int(values["calls"]), int(values["usec"]))
    return out


def pss_mib(worker: WorkerProcess) -> float:
    total = 0
    for process in processes_of(worker):
        try:
            total += process.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def done(client: redis.Redis) -> int:
    return int(client.get(COUNTER_KEY) or 0)


def wait_done(client: redis.Redis, target: int, timeout_s: float = 600) -> float:
    """perf_counter() when the counter reaches `target`."""
    deadline = time.monotonic() + timeout_s
    while done(client) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done(client)} of {target} jobs done")
        time.sleep(0.005)
    return time.perf_counter()


def enqueue(rig: Rig, setup: Setup, jobs: int, run: int) -> dict[str, float]:
    """Publish `jobs` jobs with no worker running, each way of publishing in turn (jobs/s
    each); `jobs` of them stay queued for the drain."""
    app = rig.producer(setup)
    ways: dict[str, Callable[[int], Any]] = {
        "send_task": lambda i: app.send_task(setup.task, kwargs={"n": i}),
    }
    if setup.op is not None:
        from bot.client import Client

        client = Client(app)  # type: ignore[arg-type]
        ways["submit"] = lambda i: client.submit(setup.op, {"n": i})
        ways["submit_id"] = lambda i: client.submit(setup.op, {"n": i}, job_id=f"b{run}-{i}")
    rates = {}
    for way, publish in ways.items():
        started = time.perf_counter()
        for i in range(jobs):
            publish(i)
        rates[way] = jobs / (time.perf_counter() - started)
    if len(ways) > 1:  # keep `jobs` queued: start again from an empty database
        rig.redis(setup).flushdb()
        for i in range(jobs):
            ways["send_task"](i)
    return {**rates, "queued": jobs}


def drain(rig: Rig, setup: Setup, worker: WorkerProcess, queued: int) -> dict[str, Any]:
    """From the first job done to the last of the backlog: rate and CPU per job."""
    client = rig.redis(setup)
    while done(client) == 0:
        if not worker.alive():
            raise RuntimeError(f"worker died:\n{worker.log()[-3000:]}")
        time.sleep(0.001)
    started, first = time.perf_counter(), done(client)
    cpu0, redis0, cmds0 = cpu_seconds(worker), redis_cpu_seconds(client), command_usec(client)
    finished = wait_done(client, queued)
    jobs = queued - first
    cpu1, redis1, cmds1 = cpu_seconds(worker), redis_cpu_seconds(client), command_usec(client)
    per_command = {
        name: (
            (calls - cmds0.get(name, (0, 0))[0]) / jobs,
            (usec - cmds0.get(name, (0, 0))[1]) / jobs,
        )
        for name, (calls, usec) in cmds1.items()
    }
    return {
        "drain": jobs / (finished - started),
        "worker_cpu_us": (sum(cpu1) - sum(cpu0)) / jobs * 1e6,
        "main_cpu_us": (cpu1[0] - cpu0[0]) / jobs * 1e6,
        "children_cpu_us": (cpu1[1] - cpu0[1]) / jobs * 1e6,
        "redis_cpu_us": (redis1 - redis0) / jobs * 1e6,
        "commands": {k: v for k, v in per_command.items() if v[0] > 0.001},
    }


def end_to_end(rig: Rig, setup: Setup, jobs: int) -> float:
    app, client = rig.producer(setup), rig.redis(setup)
    base = done(client)
    started = time.perf_counter()
    for i in range(jobs):
        app.send_task(setup.task, kwargs={"n": i})
    return jobs / (wait_done(client, base + jobs) - started)


def latencies(rig: Rig, setup: Setup, samples: int) -> tuple[float, float]:
    app = rig.producer(setup)
    out = []
    for i in range(samples):
        started = time.perf_counter()
        app.send_task(setup.task, kwargs={"n": i}).get(timeout=60)
        out.append((time.perf_counter() - started) * 1000)
    out.sort()
    return statistics.median(out), out[min(len(out) - 1, int(len(out) * 0.99))]


def measure(rig: Rig, setup: Setup, jobs: int, run: int) -> dict[str, Any]:
    rig.redis(setup).flushall()
    row: dict[str, Any] = enqueue(rig, setup, jobs, run)
    worker = rig.worker(setup).start()
    try:
        row.update(drain(rig, setup, worker, row["queued"]))
        row["e2e"] = end_to_end(rig, setup, jobs)
        row["p50"], row["p99"] = latencies(rig, setup, LATENCY_SAMPLES)
        row["pss"] = pss_mib(worker)
    finally:
        worker.stop(30)
    return row


# --- reporting -------------------------------------------------------------------------------

COLUMNS = [
    ("drain jobs/s", "drain", "{:,.0f}"),
    ("end-to-end jobs/s", "e2e", "{:,.0f}"),
    ("enqueue jobs/s (send_task)", "send_task", "{:,.0f}"),
    ("latency p50 / p99 ms", None, None),
    ("workers PSS MiB", "pss", "{:.0f}"),
    ("worker CPU µs/job", "worker_cpu_us", "{:,.0f}"),
    ("Redis CPU µs/job", "redis_cpu_us", "{:,.0f}"),
]


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    numeric = [k for k, v in rows[0].items() if isinstance(v, int | float)]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in rows) for k in numeric}
    out["commands"] = rows[len(rows) // 2]["commands"]
    return out


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| worker | " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for setup in SETUPS:
        row = results[setup.key]
        cells = []
        for _, key, fmt in COLUMNS:
            if key is None:
                cells.append(f"{row['p50']:.1f} / {row['p99']:.1f}")
            else:
                cells.append(fmt.format(row[key]))
        lines.append(f"| {setup.name} | " + " | ".join(cells) + " |")
    return lines


def ratios(results: dict[str, dict[str, Any]]) -> list[str]:
    bot, stock, events = results["bot_op"], results["stock"], results["stock_events"]
    quiet = results["bot_op_quiet"]
    checks = [
        ("end-to-end, bot op / stock + results + events", bot["e2e"] / events["e2e"], "≥ 1.0"),
        ("end-to-end, bot op / stock defaults", bot["e2e"] / stock["e2e"], "≥ 0.8"),
        ("end-to-end, bot op without events / stock defaults", quiet["e2e"] / stock["e2e"], ""),
        (
            "end-to-end, bot op without events / stock + results, acks_late, prefetch 1",
            quiet["e2e"] / results["stock_reliable"]["e2e"],
            "",
        ),
        ("enqueue, Client.submit / stock", bot["submit"] / stock["send_task"], "≥ 0.9"),
        ("enqueue, send_task on bot's app / stock", bot["send_task"] / stock["send_task"], "≥ 0.9"),
        ("enqueue, Client.submit with a job id / stock", bot["submit_id"] / stock["send_task"], ""),
        ("latency p99, bot op / stock + results + events", bot["p99"] / events["p99"], "≤ 1.2"),
        ("workers PSS, bot op / stock + results + events", bot["pss"] / events["pss"], "≤ 1.1"),
        (
            "Redis CPU per job, bot op / stock + results + events",
            bot["redis_cpu_us"] / events["redis_cpu_us"],
            "≤ 1.5",
        ),
    ]
    lines = ["| ratio | measured | target |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {value:.2f} | {target} |" for name, value, target in checks]
    per_core = 1e6 / bot["redis_cpu_us"]
    lines.append("")
    lines.append(
        f"One Redis core carries about {per_core:,.0f} bot jobs/s "
        f"(1 s / {bot['redis_cpu_us']:.0f} µs of Redis CPU per job), against "
        f"{1e6 / events['redis_cpu_us']:,.0f} for stock Celery with results and events and "
        f"{1e6 / stock['redis_cpu_us']:,.0f} with its defaults."
    )
    return lines


def cpu_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Where each job's CPU goes while draining: the worker's main process (messages, acks,
    events), its pool children (the job), and Redis."""
    lines = [
        "| worker | main process µs/job | pool children µs/job | Redis µs/job | total µs/job |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for setup in SETUPS:
        row = results[setup.key]
        parts = (row["main_cpu_us"], row["children_cpu_us"], row["redis_cpu_us"])
        cells = " | ".join(f"{value:,.0f}" for value in (*parts, sum(parts)))
        lines.append(f"| {setup.name} | {cells} |")
    return lines


def commands_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Redis commands per job and their cost, bot op against stock with events."""
    lines = [
        "| command | bot op calls/job | bot op µs/job | stock + events calls/job | "
        "stock + events µs/job |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    bot, stock = results["bot_op"]["commands"], results["stock_events"]["commands"]
    names = sorted(set(bot) | set(stock), key=lambda n: -(bot.get(n, (0, 0))[1]))
    for name in names:
        b, s = bot.get(name, (0, 0)), stock.get(name, (0, 0))
        if max(b[1], s[1]) < 0.5:
            continue
        lines.append(f"| {name} | {b[0]:.2f} | {b[1]:.1f} | {s[0]:.2f} | {s[1]:.1f} |")
    return lines


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    cpu = psutil.cpu_count()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/fleet_bench.py --jobs {args.jobs} "
        f"--runs {args.runs}` ({seconds / 60:.1f} min): {cpu} cores, a private redis-server "
        "without AOF, prefork `-c 2`, `-l info`; the job is one INCR; medians of "
        f"{args.runs} alternating runs, {args.jobs} jobs per phase.",
        "",
        *table(results),
        "",
        f"Enqueue through the Python client: `Client.submit` {results['bot_op']['submit']:,.0f} "
        f"jobs/s, with a caller's job id {results['bot_op']['submit_id']:,.0f} jobs/s.",
        "",
        *ratios(results),
        "",
        "CPU per job while draining, by process:",
        "",
        *cpu_table(results),
        "",
        "Redis commands per job while draining (bot op against stock + results + events):",
        "",
        *commands_table(results),
    ]
    return "\n".join(lines)


def write_doc(text: str, path: Path = DOC, begin: str = BEGIN, end_mark: str = END) -> None:
    """Put `text` between the markers `begin` and `end_mark` of the doc at `path`."""
    doc = path.read_text()
    start, end = doc.index(begin) + len(begin), doc.index(end_mark)
    path.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


@contextmanager
def private_redis() -> Iterator[tuple[RedisServer, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", appendonly=False)
        server.start()
        try:
            yield server, Path(tmp)
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="run only set-ups whose key contains this")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--profile", action="store_true", help="py-spy one bot-op run instead")
    args = parser.parse_args()
    started = time.monotonic()
    with private_redis() as (server, tmp):
        rig = Rig(server, tmp)
        if args.profile:
            profiling.profile_bot_op(rig, SETUP_BY_KEY["bot_op"], args.jobs)
            return
        setups = [s for s in SETUPS if args.only in s.key]
        runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in setups}
        for run in range(args.runs):
            for setup in setups if run % 2 == 0 else reversed(setups):
                runs[setup.key].append(measure(rig, setup, args.jobs, run))
                print(f"run {run + 1}: {setup.name}: {_brief(runs[setup.key][-1])}", flush=True)
    results = {key: median_row(rows) for key, rows in runs.items()}
    if len(results) < len(SETUPS):
        print("\n".join(table_subset(results)))
        return
    text = report(results, args, time.monotonic() - started)
    print("\n" + text)
    if args.write:
        write_doc(text)


def table_subset(results: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{key}: {_brief(row)}" for key, row in results.items()]


def _brief(row: dict[str, Any]) -> str:
    keys = ("drain", "e2e", "send_task", "submit", "p50", "p99", "pss", "main_cpu_us")
    keys = (*keys, "children_cpu_us")
    return ", ".join(f"{k} {row[k]:.1f}" for k in (*keys, "redis_cpu_us") if k in row)


if __name__ == "__main__":
    main()
