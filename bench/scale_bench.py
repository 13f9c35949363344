"""Scale-out: what many fleet members cost one Redis (issue 12, "Many workers").

On a private redis-server (no AOF) this script starts `--workers` real `celery -A bot worker
-c 1` processes and `--members` simulated members (`python -m bot.fleet.simulation`: bot's own
register and heartbeat scripts, no pool), all on the same heartbeat settings, then measures:

1. upkeep: `--idle` seconds with no job: Redis CPU per second and per heartbeat (all of the idle
   load, heartbeats, reaper passes, Celery's own polling and events included, divided by the
   heartbeats sent), and the heartbeat script's own time (commandstats);
2. the reaper's pass time: `Reaper.run_once()` from this process on the live fleet (only the
   passes that held the lock and judged all members), and one pass that reaps a silenced member;
3. `bot fleet` latency: the read (`WorkerRecords.fleet()`) and the whole `bot fleet --json`
   command (a Python start included);
4. jobs: `--jobs` one-INCR jobs (bench/bench_ops.py) submitted through `Client.submit` while
   the fleet runs: Redis CPU per job (upkeep subtracted), and from it the jobs/s one Redis core
   could carry next to this fleet's upkeep.

`--write` puts the table in docs/scaling.md between its markers.

    python bench/scale_bench.py [--workers 20] [--members 200] [--jobs 4000] [--write]
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from bench.bench_ops import COUNTER_KEY
from bench.fleet_bench import private_redis, write_doc
from tests.support.processes import BOT, REPO_ROOT, WorkerProcess, bot_env
from tests.support.redis_server import RedisServer
from tests.support.simulation_process import SimulationProcess

DOC = REPO_ROOT / "docs" / "scaling.md"
BEGIN, END = "<!-- scale-bench:begin -->", "<!-- scale-bench:end -->"
#: Heartbeat settings of every member, real and simulated (seconds).
FLEET_SETTINGS = {
    "BOT_HEARTBEAT_INTERVAL": "1",
    "BOT_LEASE_TTL": "3",
    "BOT_REAPER_INTERVAL": "1",
}
REAPER_SAMPLES = 20
FLEET_SAMPLES = 20


# --- measuring -------------------------------------------------------------------------------


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per command: (calls, usec) since the server started."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}


def commands_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    return {
        name: (calls - before.get(name, (0, 0))[0], usec - before.get(name, (0, 0))[1])
        for name, (calls, usec) in after.items()
        if calls > before.get(name, (0, 0))[0]
    }


def timed(fn: Callable[[], object]) -> float:
    """Milliseconds `fn()` took."""
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def p50_p95(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


# --- the fleet -------------------------------------------------------------------------------


class Rig:
    """The private Redis, the fleet's environment, and an in-process app for the producer."""

    def __init__(self, server: RedisServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.client = server.client()
        self.env = bot_env(server.url(), tmp / "state", FLEET_SETTINGS)
        self.env.update(BOT_OPS_MODULES="bench.bench_ops", BENCH_COUNTER_URL=server.url())
        from bot.application import create_app
        from config.settings import Settings

        settings = {k.removeprefix("BOT_").lower(): v for k, v in FLEET_SETTINGS.items()}
        self.app = create_app(
            Settings(
                redis_url=server.url(),
                state_dir=tmp / "state",
                ops_modules=["bench.bench_ops"],
                **settings,  # type: ignore[arg-type]
            ),
            fleet=False,
        )

    def heartbeat_s(self) -> float:
        return float(FLEET_SETTINGS["BOT_HEARTBEAT_INTERVAL"])

    def workers(self, count: int) -> list[WorkerProcess]:
        started = [
            WorkerProcess(f"scale-{i}", self.env, self.tmp, concurrency=1).start()
            for i in range(count)
        ]
        return [worker.wait_ready(timeout_s=180) for worker in started]

    def members(self) -> int:
        return int(self.client.zcard(self.app.keys.workers))


@contextmanager
def fleet(rig: Rig, workers: int, members: int) -> Iterator[SimulationProcess]:
    with ExitStack() as stack:
        for worker in rig.workers(workers):
            stack.callback(worker.stop, 20)
        sim = SimulationProcess(members, rig.env, rig.tmp).start()
        stack.callback(sim.stop, 20)
        deadline = time.monotonic() + 30
        while rig.members() < workers + members and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2 * rig.heartbeat_s())  # every member has beaten since start-up
        yield sim


def upkeep(rig: Rig, members: int, seconds: float) -> dict[str, Any]:
    """Redis's load with no job: per second, and per heartbeat sent meanwhile."""
    cpu0, cmds0, started = redis_cpu_s(rig.client), commandstats(rig.client), time.monotonic()
    time.sleep(seconds)
    cpu1, cmds1, elapsed = redis_cpu_s(rig.client), commandstats(rig.client), time.monotonic()
    elapsed -= started
    commands = commands_delta(cmds0, cmds1)
    beats = members * elapsed / rig.heartbeat_s()
    calls, usec = commands.get("evalsha", (0, 0))
    return {
        "cpu_per_s": (cpu1 - cpu0) / elapsed,
        "cpu_per_beat_us": (cpu1 - cpu0) / beats * 1e6,
        "beats_per_s": beats / elapsed,
        "script_us": usec / calls if calls else 0.0,
        "commands_per_s": {name: calls / elapsed for name, (calls, _) in commands.items()},
    }


def reaper_passes(rig: Rig, sim: SimulationProcess) -> dict[str, float]:
    """Pass times of a reaper in this process (passes that judged the whole fleet only), then
    one pass that reaps a silenced member."""
    from bot.recovery.reaper import Reaper

    reaper = Reaper.for_app(rig.app)
    reaper.lease_ttl_s = 0.0  # judge at once: this process has just connected
    samples: list[float] = []
    deadline = time.monotonic() + 60
    while len(samples) < REAPER_SAMPLES and time.monotonic() < deadline:
        started = time.perf_counter()
        if reaper.run_once():
            samples.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
    dead_pass = float("nan")
    for _ in range(3):  # a worker's reaper may forget the member first: silence another
        dead_pass = reap_one(rig, reaper, sim.silence_one())
        if not math.isnan(dead_pass):
            break
    p50, p95 = p50_p95(samples or [0.0])
    return {"pass_p50_ms": p50, "pass_p95_ms": p95, "dead_pass_ms": dead_pass}


def reap_one(rig: Rig, reaper: Any, instance: str) -> float:
    """The time of the pass that forgot `instance` (once its lease expired)."""
    keys = rig.app.keys
    while rig.client.exists(keys.lease(instance)):
        time.sleep(0.05)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and rig.client.zscore(keys.workers, instance) is not None:
        started = time.perf_counter()
        judged = reaper.run_once()
        elapsed = (time.perf_counter() - started) * 1000
        if judged and rig.client.zscore(keys.workers, instance) is None:
            return elapsed
        time.sleep(0.01)
    return float("nan")  # a worker's reaper forgot it first


def fleet_latency(rig: Rig) -> dict[str, float]:
    from bot.fleet.records import WorkerRecords

    records = WorkerRecords(rig.app.redis(), rig.app.keys)
    reads = [timed(records.fleet) for _ in range(FLEET_SAMPLES)]
    command = [
        timed(lambda: subprocess.run([BOT, "fleet", "--json"], env=rig.env, check=True,
                                     capture_output=True))
        for _ in range(3)
    ]  # fmt: skip
    return {"read_ms": statistics.median(reads), "command_ms": statistics.median(command)}


def jobs_phase(rig: Rig, jobs: int, idle_cpu_per_s: float) -> dict[str, float]:
    """Submit `jobs` jobs to the running fleet; Redis CPU per job with the upkeep removed."""
    from bot.client import Client

    client = Client(rig.app)  # type: ignore[arg-type]
    rig.client.delete(COUNTER_KEY)
    cpu0, started = redis_cpu_s(rig.client), time.perf_counter()
    for i in range(jobs):
        client.submit("bench_incr", {"n": i})
    while int(rig.client.get(COUNTER_KEY) or 0) < jobs:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    cpu = redis_cpu_s(rig.client) - cpu0
    per_job = max(cpu - idle_cpu_per_s * elapsed, 0.0) / jobs
    return {
        "rate": jobs / elapsed,
        "cpu_per_job_us": per_job * 1e6,
        "redis_busy": cpu / elapsed,
        "core_jobs_per_s": (1 - idle_cpu_per_s) / per_job if per_job else float("inf"),
    }


# --- report ----------------------------------------------------------------------------------


def report(args: argparse.Namespace, figures: dict[str, Any]) -> str:
    up, reap, fl, job = figures["upkeep"], figures["reaper"], figures["fleet"], figures["jobs"]
    members = args.workers + args.members
    rows = [
        ("fleet", f"{args.workers} workers (`-c 1`) + {args.members} simulated = {members}"),
        ("heartbeat interval / lease TTL / reaper interval", "1 s / 3 s / 1 s"),
        ("heartbeats/s (all members)", f"{up['beats_per_s']:.0f}"),
        ("Redis CPU, idle fleet (upkeep)", f"{up['cpu_per_s'] * 100:.1f} % of a core"),
        ("Redis CPU per heartbeat (all upkeep / heartbeats)", f"{up['cpu_per_beat_us']:.0f} µs"),
        ("heartbeat script (EVALSHA, commandstats)", f"{up['script_us']:.1f} µs"),
        ("reaper pass, all members live (p50 / p95)",
         f"{reap['pass_p50_ms']:.2f} / {reap['pass_p95_ms']:.2f} ms"),
        ("reaper pass that reaps one dead member", f"{reap['dead_pass_ms']:.2f} ms"),
        (f"`WorkerRecords.fleet()` read, {members} members", f"{fl['read_ms']:.1f} ms"),
        ("`bot fleet --json` command (Python start included)", f"{fl['command_ms']:.0f} ms"),
        (f"jobs: {args.jobs} submitted and run", f"{job['rate']:.0f} jobs/s on this machine"),
        ("Redis CPU per job (upkeep subtracted)", f"{job['cpu_per_job_us']:.0f} µs"),
        ("jobs/s one Redis core could carry next to this upkeep",
         f"≈ {job['core_jobs_per_s']:.0f}"),
    ]  # fmt: skip
    top = sorted(up["commands_per_s"].items(), key=lambda kv: -kv[1])[:8]
    lines = [
        f"Measured by `make bench-scale` ({time.strftime('%Y-%m-%d')}, {args.workers} workers, "
        f"{args.members} simulated members, {args.jobs} jobs; 2-core machine, everything on it).",
        "",
        "| figure | value |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "Idle fleet, Redis commands per second (top 8): "
        + ", ".join(f"{name} {rate:.0f}" for name, rate in top),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--members", type=int, default=200, help="simulated members")
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of upkeep measured")
    parser.add_argument("--write", action="store_true", help="update docs/scaling.md")
    args = parser.parse_args()
    with private_redis() as (server, tmp):
        rig = Rig(server, tmp)
        with fleet(rig, args.workers, args.members) as sim:
            print(f"fleet up: {rig.members()} members", flush=True)
            members = args.workers + args.members
            figures: dict[str, Any] = {"upkeep": upkeep(rig, members, args.idle)}
            figures["fleet"] = fleet_latency(rig)
            figures["jobs"] = jobs_phase(rig, args.jobs, figures["upkeep"]["cpu_per_s"])
            figures["reaper"] = reaper_passes(rig, sim)
        rig.app.close()
    text = report(args, figures)
    print("\n" + text)
    if args.write:
        write_doc(text, DOC, BEGIN, END)


if __name__ == "__main__":
    main()
