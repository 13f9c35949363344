"""The soak (`make soak`): a 2-worker fleet under steady load at ~70 % of its measured capacity
for `--minutes` (default 20; `SOAK_MINUTES`), with faults, sampled every `--sample` seconds
(default 30; `SOAK_SAMPLE_S`), to show that months of uptime would not grow memory or latency.

The fleet (bench/soak_fleet.py): a private redis-server (AOF, noeviction), two real prefork
`celery -A bot worker -c 2`, one standalone relay (`python -m bot.cli.relay`) delivering every
report to a loopback HTTP sink in this process, which counts each job id. Short retention: job
records and Celery results live 120 s after their end, the outbox keeps 120 s or 50,000
reports (trimmed by the workers' retention pass): soak_fleet.SOAK_SETTINGS.

1. Capacity: a flood of `flaky` jobs (5 ms of work each, never failing; bench/soak_load.py)
   for 30 s, keeping a backlog of 1,000; reports reaching the sink per second over the last
   20 s is the capacity. The flood is drained before going on.
2. Steady load: one thread submits at 70 % of that capacity (`--rate` to set it), each job
   with its own id, through bot's Client; a submission that fails (Redis restarting) is tried
   again with the same id.
3. Faults: every `--kill-every` seconds (default 240; once, at a third of the run, if the run
   is shorter) worker soak-w2 gets SIGKILL to its process group (main process and pool
   children: a crashed container) and is started again at once under the same node name;
   soak-w1 is never killed, so it shows one long-lived process. Once, half way (moved by 30 s
   if a kill is that close), Redis is restarted: SIGTERM, then started again on the same port
   and AOF directory.
4. Samples: RSS of each worker's main process and of its children, Redis used_memory, XLEN
   bot:outbox, DBSIZE, jobs submitted and delivered, and p50/p99 latency (submit to the
   report's arrival at the sink) of the jobs submitted since the previous sample.
5. The end: the producer stops, the fleet drains (until every job is delivered, or nothing
   arrives for 90 s), and every job is accounted for: each submitted id must have reached the
   sink (duplicate deliveries, which at-least-once delivery allows, are counted apart).

The targets and how each is measured: bench/soak_report.py. The report is printed; `--write`
puts it into docs/soak.md (between its markers) with the plot docs/soak.png, else the plot
goes to a temporary file. Exit 1 if a job was lost (submitted, never reported), else 0 (a
target that fails shows as FAIL in the table).

    python bench/soak.py [--minutes 20] [--sample 30] [--kill-every 240] [--rate R] [--write]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet_bench import write_doc
from bench.soak_fleet import WORKERS, SoakFleet
from bench.soak_load import OP, PAYLOAD, Producer, make_app
from bench.soak_report import Accounting, Event, Sample, SoakRun, fill_latencies, plot, report
from tests.support.processes import REPO_ROOT

DOC = REPO_ROOT / "docs" / "soak.md"
PLOT = REPO_ROOT / "docs" / "soak.png"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
LOAD_SHARE = 0.7
CAPACITY_S, CAPACITY_SETTLE_S = 30.0, 10.0
DRAIN_STALL_S, DRAIN_MAX_S = 90.0, 900.0
VICTIM = 1  # soak-w2
TICK_S = 0.1


# --- phases ----------------------------------------------------------------------------------


def measure_capacity(fleet: SoakFleet, app: object) -> tuple[float, Producer]:
    """Reports/s reaching the sink under a flood, after CAPACITY_SETTLE_S of it."""
    flood = Producer(app, "cap", backlog=1000, delivered=fleet.sink.delivered).start()
    time.sleep(CAPACITY_SETTLE_S)
    d0, t0 = fleet.sink.delivered(), time.monotonic()
    time.sleep(CAPACITY_S - CAPACITY_SETTLE_S)
    d1, t1 = fleet.sink.delivered(), time.monotonic()
    flood.stop()
    capacity = (d1 - d0) / (t1 - t0)
    print(f"capacity: {capacity:,.0f} jobs/s ({len(flood.submitted):,} flood jobs)", flush=True)
    drain(fleet, [flood])
    return capacity, flood


def fault_plan(duration_s: float, kill_every_s: float) -> list[tuple[float, str]]:
    """(t, "kill" | "redis"), in time order: kills every `kill_every_s` (at least one) and one
    Redis restart half way, kept 30 s away from any kill."""
    kills = range_by(kill_every_s, duration_s - 30) or [duration_s / 3]
    redis_at = duration_s / 2
    while any(abs(redis_at - k) < 30 for k in kills) and redis_at < duration_s - 30:
        redis_at += 30
    return sorted([(t, "kill") for t in kills] + [(redis_at, "redis")])


def range_by(step: float, stop: float) -> list[float]:
    return [step * n for n in range(1, int(stop // step) + 1)]


def steady(fleet: SoakFleet, producer: Producer, run: SoakRun, kill_every_s: float) -> None:
    """Run the steady phase: sample, and inject the planned faults, until the run's end."""
    started = time.monotonic()
    plan = fault_plan(run.duration_s, kill_every_s)
    next_sample = 0.0
    while True:
        t = time.monotonic() - started
        if t >= next_sample or t >= run.duration_s:
            run.samples.append(sample(fleet, producer, t))
            print(progress_line(run.samples[-1]), flush=True)
            next_sample += run.sample_s
        while plan and plan[0][0] <= t:
            inject(fleet, plan.pop(0)[1], t, run)
        if t >= run.duration_s:
            return
        for name in fleet.restart_dead_workers():
            run.events.append(Event(t, "exit", f"{name} exited by itself, restarted"))
            run.starts[name.split()[0]].append(t)
        time.sleep(TICK_S)


def inject(fleet: SoakFleet, kind: str, t: float, run: SoakRun) -> None:
    if kind == "kill":
        fleet.kill_worker(VICTIM)
        run.starts[WORKERS[VICTIM]].append(t)
        run.events.append(Event(t, "kill", f"kill -9 {WORKERS[VICTIM]}"))
    else:
        fleet.restart_redis()
        run.events.append(Event(t, "redis", "Redis restart"))
    print(f"{t:7.0f} s  {run.events[-1].label}", flush=True)


def sample(fleet: SoakFleet, producer: Producer, t: float) -> Sample:
    memory, outbox, keys = fleet.redis_reading()
    return Sample(
        t=t,
        rss=fleet.worker_rss(),
        redis_mib=memory,
        outbox=outbox,
        keys=keys,
        submitted=len(producer.submitted),
        delivered=fleet.sink.delivered() - producer.delivered_before,
    )


def progress_line(s: Sample) -> str:
    rss = "  ".join(f"{main:.0f}+{children:.0f}" for main, children in s.rss)
    memory = "-" if s.redis_mib is None else f"{s.redis_mib:.1f}"
    return (
        f"{s.t:7.0f} s  submitted {s.submitted:,}  delivered {s.delivered:,}  "
        f"RSS MiB {rss}  Redis {memory} MiB  outbox {s.outbox}  keys {s.keys}"
    )


def drain(fleet: SoakFleet, producers: list[Producer]) -> None:
    """Wait until every submitted id reached the sink, or nothing new arrived for a while."""
    wanted = {job_id for p in producers for job_id in p.submitted}
    started = last_change = time.monotonic()
    last = -1
    while True:
        missing = len(wanted - fleet.sink.first_arrival.keys())
        now = time.monotonic()
        if missing == 0:
            return
        if missing != last:
            last, last_change = missing, now
        if now - last_change > DRAIN_STALL_S or now - started > DRAIN_MAX_S:
            print(f"drain: gave up with {missing} job(s) not delivered", flush=True)
            return
        time.sleep(0.5)


def account(fleet: SoakFleet, producers: list[Producer]) -> Accounting:
    submitted = {job_id for p in producers for job_id in p.submitted}
    abandoned = sorted(job_id for p in producers for job_id in p.abandoned)
    sink = fleet.sink
    arrived = set(sink.first_arrival)
    extra = [job_id for job_id, n in sink.arrivals.items() if n > 1]
    return Accounting(
        submitted=len(submitted),
        delivered=len(submitted & arrived),
        missing=sorted(submitted - arrived),
        unexpected=sorted(arrived - submitted - set(abandoned)),
        abandoned=abandoned,
        duplicate_ids=len(extra),
        duplicate_deliveries=sum(sink.arrivals[job_id] - 1 for job_id in extra),
        bad_keys=sink.bad_keys,
        statuses=dict(sink.report_statuses),
        retries=sum(p.retries for p in producers),
    )


def latencies(fleet: SoakFleet, producer: Producer, started: float) -> list[tuple[float, float]]:
    arrivals = fleet.sink.first_arrival
    return [
        (submitted - started, (arrivals[job_id] - submitted) * 1000)
        for job_id, submitted in producer.submitted.items()
        if job_id in arrivals
    ]


# --- the run ---------------------------------------------------------------------------------


def soak(fleet: SoakFleet, args: argparse.Namespace, workdir: Path) -> SoakRun:
    app = make_app(fleet.server.url(), workdir / "state-producer", fleet.settings)
    capacity, flood = measure_capacity(fleet, app)
    rate = args.rate or LOAD_SHARE * capacity
    run = SoakRun(
        minutes=args.minutes,
        sample_s=args.sample,
        workers=list(WORKERS),
        settings=dict(fleet.settings),
        capacity=capacity,
        rate=rate,
        op=f"{OP} {PAYLOAD}",
        starts={name: [float("-inf")] for name in WORKERS},
    )
    print(f"steady load: {rate:,.0f} jobs/s for {args.minutes:g} min", flush=True)
    producer = Producer(app, "soak", rate=rate, delivered=fleet.sink.delivered).start()
    started = time.monotonic()
    try:
        steady(fleet, producer, run, args.kill_every)
    finally:
        producer.stop()
    drain(fleet, [flood, producer])
    run.latencies = latencies(fleet, producer, started)
    fill_latencies(run)
    run.accounting = account(fleet, [flood, producer])
    return run


def output(run: SoakRun, write: bool) -> None:
    date = time.strftime("%Y-%m-%d")
    if write:
        plot(run, PLOT)
        write_doc(report(run, date, PLOT.name), DOC, BEGIN, END)
        print(f"wrote {DOC.relative_to(REPO_ROOT)} and {PLOT.relative_to(REPO_ROOT)}")
    else:
        path = Path(tempfile.gettempdir()) / "soak.png"
        plot(run, path)
        print(f"plot: {path}")
    print("\n" + report(run, date, None))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def env(name: str, default: str) -> float:
        return float(os.environ.get(name, default))

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=env("SOAK_MINUTES", "20"))
    parser.add_argument("--sample", type=float, default=env("SOAK_SAMPLE_S", "30"))
    parser.add_argument("--kill-every", type=float, default=240.0, help="seconds between kills")
    parser.add_argument("--rate", type=float, help="jobs/s (default: 70%% of capacity)")
    parser.add_argument("--workdir", type=Path, help="keep logs and Redis data here")
    parser.add_argument("--write", action="store_true", help="update docs/soak.md and soak.png")
    return parser.parse_args(argv)


def on_sigterm(*_: object) -> None:
    """SIGTERM ends the run like Ctrl-C: through the `finally`s that stop every process."""
    print("soak: SIGTERM; stopping the fleet", file=sys.stderr, flush=True)
    sys.exit(143)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with SoakFleet(workdir) as fleet:
            run = soak(fleet, args, workdir)
    run.wall_s = time.monotonic() - began
    output(run, args.write)
    assert run.accounting is not None
    sys.exit(1 if run.accounting.missing else 0)


if __name__ == "__main__":
    main()
