"""Recovery time after `kill -9`: bot versus stock Celery on the same private Redis.

A trial: worker A runs a 60 s job (its body counts each execution in Redis); worker B is
started and ready; A's whole process group is killed with SIGKILL (a crashed host or
container); the recovery time is from the kill until the job's body starts again on B.
For bot, B first runs for lease TTL + one reaper interval so its reaper is settled, as a
survivor's normally is. Each set-up runs `--trials` trials (fresh workers each) and
reports the median and max.

Set-ups (all on one redis-server, bot on db 0, stock Celery on db 1, queue `stock`):
- bot, default lease settings (heartbeat 5 s, lease TTL 15 s, reaper every 5 s);
- bot, short settings (heartbeat 0.5 s, lease TTL 1.5 s, reaper every 0.5 s);
- stock Celery with acks_late and its defaults (visibility timeout 3600 s): capped at `--cap`
  seconds, shown as "> cap (not recovered)";
- stock Celery with acks_late and a shortened visibility timeout (10 s, sweep every 1 s), to
  show its mechanism. (Stock Celery with its default early ack never runs the job again.)

Run: .venv/bin/python bench/recovery_bench.py [--trials 5] [--cap 120]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import stock_app  # noqa: E402
from tests.support.processes import FAULT_OPS, WorkerProcess, bot_env, wait_for  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

JOB_SECONDS = 60.0


@dataclass
class Setup:
    name: str
    kind: str  # "bot" | "stock"
    env: dict[str, str] = field(default_factory=dict)
    #: Seconds worker B runs before A is killed: a reaper that has just connected waits one
    #: lease TTL before judging others, so B is given lease TTL + one reaper interval to be a
    #: settled member of the fleet (as a survivor normally is) rather than measuring its wait.
    settle_s: float = 0.0
    results: list[float | None] = field(default_factory=list)


def setups() -> list[Setup]:
    short = {"BOT_HEARTBEAT_INTERVAL": "0.5", "BOT_LEASE_TTL": "1.5", "BOT_REAPER_INTERVAL": "0.5"}
    fast_sweep = {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
    return [
        Setup("bot (defaults: heartbeat 5 s, lease 15 s, reaper 5 s)", "bot", settle_s=21),
        Setup("bot (heartbeat 0.5 s, lease 1.5 s, reaper 0.5 s)", "bot", short, settle_s=2.5),
        Setup("stock Celery, acks_late, defaults (visibility 3600 s)", "stock"),
        Setup(
            "stock Celery, acks_late, visibility 10 s, sweep 1 s",
            "stock",
            {"STOCK_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": 10, **fast_sweep})},
        ),
    ]


class Bench:
    def __init__(self, server: RedisServer, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir

    def worker(self, setup: Setup, name: str) -> WorkerProcess:
        if setup.kind == "bot":
            state = self.workdir / f"state-{name}"
            state.mkdir(exist_ok=True)
            env = bot_env(self.server.url(0), state, setup.env)
            return WorkerProcess(name, env, self.workdir).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
        env.update(STOCK_REDIS_URL=self.server.url(1), PYTHONUNBUFFERED="1", **setup.env)
        worker = WorkerProcess(name, env, self.workdir)
        worker.args = stock_app.worker_args(name)
        return worker.start()

    def submit(self, setup: Setup, job_id: str) -> Callable[[], int]:
        """Send the job; return a reader of its execution count."""
        if setup.kind == "bot":
            from bot.application import create_app
            from bot.client import Client
            from config.settings import Settings

            # `touch` is a test-only op: loaded here as bot_env loads it in the workers
            settings = Settings(redis_url=self.server.url(0), ops_modules=[FAULT_OPS])
            app = create_app(settings, fleet=False)
            Client(app).submit("touch", {"seconds": JOB_SECONDS}, job_id=job_id)
            db, key = self.server.client(0), app.keys.fault_touches(job_id)
        else:
            stock_app.app.conf.broker_url = self.server.url(1)
            stock_app.app.conf.result_backend = self.server.url(1)
            stock_app.touch.apply_async(kwargs={"seconds": JOB_SECONDS}, task_id=job_id)
            db, key = self.server.client(1), stock_app.touches_key(job_id)
        return lambda: int(db.get(key) or 0)

    def trial(self, setup: Setup, n: int, cap_s: float) -> float | None:
        tag = f"{n}-{uuid.uuid4().hex[:6]}"
        first = self.worker(setup, f"a{tag}").wait_ready(60)
        second: WorkerProcess | None = None
        try:
            executions = self.submit(setup, f"bench-{tag}")
            wait_for(lambda: executions() >= 1, 60, "the job to start on worker A")
            second = self.worker(setup, f"b{tag}").wait_ready(60)
            # + a random phase, so the kill does not always land at the same point of B's
            # reaper cycle (which would make every trial measure the same number).
            time.sleep(setup.settle_s + random.uniform(0, setup.settle_s / 4))
            os.killpg(first.pid, signal.SIGKILL)
            killed = time.monotonic()
            while time.monotonic() - killed < cap_s:
                if executions() >= 2:
                    return time.monotonic() - killed
                time.sleep(0.05)
            return None
        finally:
            first.kill()
            if second is not None:
                second.kill()


def fmt(values: list[float | None], cap_s: float) -> tuple[str, str]:
    if any(v is None for v in values):
        done = [v for v in values if v is not None]
        note = f"> {cap_s:.0f} s (not recovered in {len(values) - len(done)}/{len(values)})"
        return (note, note) if not done else (f"{statistics.median(done):.1f} s*", note)
    return f"{statistics.median(values):.1f} s", f"{max(values):.1f} s"  # type: ignore[type-var]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--cap", type=float, default=120.0, help="seconds to wait per trial")
    parser.add_argument("--only", default="", help="run only set-ups whose name contains this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recovery-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            bench = Bench(server, Path(tmp))
            chosen = [s for s in setups() if args.only in s.name]
            for setup in chosen:
                for n in range(args.trials):
                    server.client(0).flushall()
                    result = bench.trial(setup, n, args.cap)
                    setup.results.append(result)
                    shown = f"{result:.1f} s" if result is not None else f"> {args.cap:.0f} s"
                    print(f"  {setup.name}: trial {n + 1}: {shown}", flush=True)
        finally:
            server.stop()
    print(f"\nRecovery time after kill -9 ({args.trials} trials each, job of {JOB_SECONDS:.0f} s)")
    print(f"| {'set-up':58} | {'median':>30} | {'max':>30} |")
    print(f"| {'-' * 58} | {'-' * 30}:| {'-' * 30}:|")
    for setup in chosen:
        median, worst = fmt(setup.results, args.cap)
        print(f"| {setup.name:58} | {median:>30} | {worst:>30} |")


if __name__ == "__main__":
    main()
