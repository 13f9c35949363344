"""Worker memory: PSS of a warm bot worker against a stock Celery worker, and what `import bot`
adds to a worker process.

1. Workers. A private redis-server (no AOF) this script starts; in turn, prefork `-c 2` workers:
   bot with its default settings, bot with the outbox relay and /metrics configured
   (BOT_REPORT_URL to a loopback receiver, BOT_METRICS_PORT), and stock Celery as Flower users
   run it (bench/stock_bench_app.py: results, acks_late, prefetch 1, `-E`). Each is warmed with
   `--jobs` jobs (`sum` for bot, `stock.incr`), then the PSS (proportional set size: a page
   shared by n processes counts 1/n in each, so the sum is what the worker really costs) of its
   main process and each pool child is read. Figures are medians over `--runs`.
2. Imports. The top-level packages a worker-like process (Celery's CLI, worker, prefork pool,
   Redis transport and result backend already imported, as in a stock worker) has in
   `sys.modules` after `import bot` that it did not have before, each with its module count and
   what importing it alone costs on top of that stock baseline: RSS and import time, measured in
   a fresh interpreter each.

    python bench/memory_bench.py [--jobs 200] [--runs 3] [--skip-imports] [--skip-workers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from celery import Celery

from bench.fleet_bench import processes_of
from tests.support.processes import REPO_ROOT, WorkerProcess, bot_env
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer, free_port

#: bot's own top-level packages.
OWN_PACKAGES = ("bot", "config", "tasks")
STOCK_CONF: dict[str, object] = {"task_acks_late": True, "worker_prefetch_multiplier": 1}
BOT_DB, STOCK_DB = 0, 1
#: What a stock `celery worker` (prefork, Redis broker and backend) has imported before it
#: imports its app: the baseline of the imports table.
STOCK_WORKER_IMPORTS = (
    "celery.bin.celery",
    "celery.worker",
    "celery.apps.worker",
    "celery.concurrency.prefork",
    "kombu.transport.redis",
    "celery.backends.redis",
    "redis",
)
#: Run in a fresh interpreter: the stock baseline, then `import bot`; prints the modules it
#: added, by top-level package.
NEW_MODULES = """
import importlib, json, sys
for name in {baseline!r}:
    importlib.import_module(name)
before = set(sys.modules)
import bot
added = {{}}
for name in sorted(set(sys.modules) - before):
    added.setdefault(name.split(".")[0], []).append(name)
print(json.dumps(added))
"""
#: Run in a fresh interpreter: the stock baseline, then the given modules (those `import bot`
#: brought of one package); prints the RSS (bytes) and time (ms) that took.
IMPORT_COST = """
import importlib, json, time
import psutil
for name in {baseline!r}:
    importlib.import_module(name)
process = psutil.Process()
rss0 = process.memory_info().rss
started = time.perf_counter()
for name in {modules!r}:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # e.g. __mp_main__: not importable by name
print(json.dumps({{"rss": process.memory_info().rss - rss0,
                  "ms": (time.perf_counter() - started) * 1000}}))
"""


@dataclass
class Setup:
    """One row of the worker table."""

    name: str
    key: str
    stock: bool = False
    bot_settings: dict[str, str] = field(default_factory=dict)
    receiver: bool = False  # BOT_REPORT_URL to a loopback receiver


SETUPS = [
    Setup("bot, defaults", "bot"),
    Setup(
        "bot, relay + /metrics on",
        "bot_services",
        bot_settings={"BOT_METRICS_PORT": "0"},  # replaced by a free port at run time
        receiver=True,
    ),
    Setup("stock Celery 5.7 (results, acks_late, prefetch 1, -E)", "stock", stock=True),
]


# --- workers ---------------------------------------------------------------------------------


def pss_by_process(worker: WorkerProcess) -> list[float]:
    """MiB of PSS: the main process first, then each pool child (by pid)."""
    main, *children = processes_of(worker)
    processes = [main, *sorted(children, key=lambda p: p.pid)]
    return [p.memory_full_info().pss / 2**20 for p in processes]


class Rig:
    def __init__(self, server: RedisServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.receiver = Receiver().up()
        self._producers: dict[str, Celery] = {}

    def env(self, setup: Setup) -> dict[str, str]:
        settings = {"BOT_OPS_MODULES": "", **setup.bot_settings}
        if "BOT_METRICS_PORT" in settings:
            settings["BOT_METRICS_PORT"] = str(free_port())
        if setup.receiver:
            settings["BOT_REPORT_URL"] = self.receiver.url
        env = bot_env(self.server.url(BOT_DB), self.tmp / "state", settings)
        env.update(
            STOCK_BENCH_URL=self.server.url(STOCK_DB), STOCK_BENCH_CONF=json.dumps(STOCK_CONF)
        )
        return env

    def worker(self, setup: Setup) -> WorkerProcess:
        if setup.stock:
            return WorkerProcess(
                f"mem-{setup.key}",
                self.env(setup),
                self.tmp,
                concurrency=2,
                extra_args=("-E",),
                app="bench.stock_bench_app",
                queues="stock",
            )
        return WorkerProcess(f"mem-{setup.key}", self.env(setup), self.tmp, concurrency=2)

    def job(self, setup: Setup) -> Callable[[int], object]:
        """Sends one job and waits for its result."""
        if setup.stock:
            if "stock" not in self._producers:
                from bench.stock_bench_app import make_app

                app = make_app(STOCK_CONF)
                app.conf.update(
                    broker_url=self.server.url(STOCK_DB), result_backend=self.server.url(STOCK_DB)
                )
                self._producers["stock"] = app
            stock = self._producers["stock"]
            return lambda i: stock.send_task("stock.incr", kwargs={"n": i}).get(timeout=60)
        if "bot" not in self._producers:
            from bot.application import create_app
            from config.settings import Settings

            settings = Settings(redis_url=self.server.url(BOT_DB), state_dir=self.tmp / "state")
            self._producers["bot"] = create_app(settings, fleet=False)
        bot = self._producers["bot"]
        return lambda i: bot.send_task("ops.sum", kwargs={"a": i, "b": 1}).get(timeout=60)

    def measure(self, setup: Setup, jobs: int) -> list[float]:
        self.server.client(STOCK_DB if setup.stock else BOT_DB).flushdb()
        worker = self.worker(setup).start()
        try:
            worker.wait_ready(60)
            send = self.job(setup)
            for i in range(jobs):
                send(i)
            return pss_by_process(worker)
        finally:
            worker.stop(30)


def workers_table(rig: Rig, jobs: int, runs: int) -> list[str]:
    samples: dict[str, list[list[float]]] = {s.key: [] for s in SETUPS}
    for run in range(runs):
        for setup in SETUPS if run % 2 == 0 else reversed(SETUPS):
            pss = rig.measure(setup, jobs)
            samples[setup.key].append(pss)
            cells = " + ".join(f"{v:.1f}" for v in pss)
            print(f"run {run + 1}: {setup.name}: {cells} = {sum(pss):.1f} MiB", flush=True)
    lines = [
        "| worker (-c 2) | main MiB | child 1 MiB | child 2 MiB | total MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    totals = {}
    for setup in SETUPS:
        rows = samples[setup.key]
        width = min(len(r) for r in rows)
        columns = [statistics.median(r[i] for r in rows) for i in range(width)]
        totals[setup.key] = statistics.median(sum(r) for r in rows)
        cells = " | ".join(f"{v:.1f}" for v in columns[:3])
        lines.append(f"| {setup.name} | {cells} | {totals[setup.key]:.1f} |")
    lines.append("")
    for key in ("bot", "bot_services"):
        lines.append(f"{key} / stock: {totals[key] / totals['stock']:.2f} (target ≤ 1.10)")
    return lines


# --- imports ---------------------------------------------------------------------------------


def run_json(code: str) -> dict[str, Any]:
    env = bot_env("redis://127.0.0.1:1/0", Path(tempfile.gettempdir()) / "bot-mem-state")
    env["BOT_OPS_MODULES"] = ""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def imports_table(runs: int) -> list[str]:
    added: dict[str, list[str]] = run_json(NEW_MODULES.format(baseline=STOCK_WORKER_IMPORTS))
    costs = {}
    for package, modules in added.items():
        if package in OWN_PACKAGES:
            continue  # importing any of them runs bot/__init__.py: the whole row below
        code = IMPORT_COST.format(baseline=STOCK_WORKER_IMPORTS, modules=modules)
        samples = [run_json(code) for _ in range(runs)]
        costs[package] = (
            statistics.median(s["rss"] for s in samples) / 1024,
            statistics.median(s["ms"] for s in samples),
        )
    whole = run_json(IMPORT_COST.format(baseline=STOCK_WORKER_IMPORTS, modules=["bot"]))
    lines = [
        "`import bot` in a process that has a stock worker's imports (Celery's CLI with its",
        "plugins, worker, prefork, Redis transport and backend): the top-level packages it adds,",
        "each costed alone on that baseline (what they share is counted in each); bot's own",
        "packages (bot, config, tasks) only in the last row: importing any of them imports bot.",
        "",
        "| package | modules | RSS KiB | import ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for package, (rss, ms) in sorted(costs.items(), key=lambda kv: -kv[1][0]):
        if rss < 64 and ms < 1:
            continue
        lines.append(f"| {package} | {len(added[package])} | {rss:,.0f} | {ms:.1f} |")
    lines.append(
        f"| **all of `import bot`** | {sum(len(m) for m in added.values())} | "
        f"{whole['rss'] / 1024:,.0f} | {whole['ms']:.1f} |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="warm-up jobs per worker")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-imports", action="store_true")
    parser.add_argument("--skip-workers", action="store_true")
    args = parser.parse_args()
    out: list[str] = []
    if not args.skip_workers:
        with tempfile.TemporaryDirectory() as tmp:
            server = RedisServer(Path(tmp) / "redis", appendonly=False)
            server.start()
            rig = Rig(server, Path(tmp))
            try:
                out += workers_table(rig, args.jobs, args.runs)
            finally:
                rig.receiver.down()
                server.stop()
        out.append("")
    if not args.skip_imports:
        out += imports_table(args.runs)
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
