"""Throughput and latency of `sum` jobs: bot versus stock Celery, same Redis, same run.

Starts a private redis-server and, in turn, one `celery -A bot worker` and two stock
`celery -A tests.support.stock_app worker`s (prefork, concurrency 2, prefetch 1, acks_late,
JSON; the second with bot's task-event settings), then measures (a) a burst of N jobs submitted
at once, first submit to last result, and (b) the round-trip latency of one job at a time.
Prints a table with bot/stock ratios.

    python bench/throughput_bench.py [--jobs 2000] [--latency-samples 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from celery import Celery

from tests.support.processes import WorkerProcess, bot_env
from tests.support.redis_server import RedisServer


def burst(app: Celery, task: str, jobs: int) -> float:
    """Jobs per second for `jobs` submitted at once, until the last result is in."""
    started = time.perf_counter()
    results = [app.send_task(task, kwargs={"a": i, "b": 1}) for i in range(jobs)]
    for result in results:
        result.get(timeout=300)
    return jobs / (time.perf_counter() - started)


def latencies(app: Celery, task: str, samples: int) -> list[float]:
    """Milliseconds from submit to result, one job at a time."""
    out = []
    for i in range(samples):
        started = time.perf_counter()
        app.send_task(task, kwargs={"a": i, "b": 1}).get(timeout=60)
        out.append((time.perf_counter() - started) * 1000)
    return out


def measure(
    name: str,
    start_worker: Callable[[], WorkerProcess],
    app: Celery,
    task: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    worker = start_worker()
    try:
        worker.wait_ready(60)
        latencies(app, task, 20)  # warm up: pool children import, connections open
        rate = burst(app, task, args.jobs)
        lat = sorted(latencies(app, task, args.latency_samples))
    finally:
        worker.stop(30)
    return {
        "name": name,
        "rate": rate,
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            rows = run_all(server, Path(tmp), args)
        finally:
            server.stop()
    print_table(rows, args)


def run_all(server: RedisServer, tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from bot.application import create_app
    from config.settings import Settings

    env = bot_env(server.url(0), tmp / "state")
    bot_app = create_app(Settings(redis_url=server.url(0), state_dir=tmp / "state"))
    rows = [
        measure(
            "bot",
            lambda: WorkerProcess("bench-bot", env, tmp, concurrency=2).start(),
            bot_app,
            "ops.sum",
            args,
        )
    ]
    for name, db, events in (("stock celery", 1, "0"), ("stock + events", 2, "1")):
        stock_env = {
            **env,
            "STOCK_REDIS_URL": server.url(db),
            "STOCK_LIKE_BOT": "1",
            "STOCK_EVENTS": events,
        }
        stock_app = _stock_app(stock_env)
        rows.append(
            measure(
                name,
                lambda stock_env=stock_env, name=name: WorkerProcess(  # type: ignore[misc]
                    f"bench-{name.replace(' ', '-').replace('+', 'plus')}",
                    stock_env,
                    tmp,
                    concurrency=2,
                    app="tests.support.stock_app",
                    queues="stock",
                ).start(),
                stock_app,
                "stock.sum",
                args,
            )
        )
    return rows


def _stock_app(env: dict[str, str]) -> Celery:
    """The client side of tests.support.stock_app, pointed at this run's Redis database."""
    app = Celery("stock-client", broker=env["STOCK_REDIS_URL"], backend=env["STOCK_REDIS_URL"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue="stock",
    )
    return app


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    bot_row = rows[0]
    print(
        f"\nsum jobs, prefork concurrency 2, one redis-server; burst of {args.jobs}, "
        f"{args.latency_samples} sequential round trips\n"
    )
    print(f"{'':20}{'burst jobs/s':>14}{'latency p50 ms':>16}{'latency p99 ms':>16}")
    for row in rows:
        print(f"{row['name']:20}{row['rate']:>14.0f}{row['p50']:>16.1f}{row['p99']:>16.1f}")
    for other in rows[1:]:
        print(
            f"{'bot / ' + other['name']:20}{bot_row['rate'] / other['rate']:>14.2f}"
            f"{bot_row['p50'] / other['p50']:>16.2f}{bot_row['p99'] / other['p99']:>16.2f}"
        )


if __name__ == "__main__":
    main()
