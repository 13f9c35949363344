"""Report delivery rate of one relay (reports/s): 10,000 reports from the outbox to a loopback
HTTP sink, one POST at a time (as before) against POSTs in flight (BOT_REPORT_CONCURRENCY) and
batches (BOT_REPORT_BATCH), with a sink answering at once or after 5 ms.

    python bench/relay_bench.py [--reports 10000] [--write] [--sink-only]

Each scenario has its own outbox stream on a private redis-server (AOF everysec, as in the
compose file) holding its reports, written before the clock starts; the real `Relay` and
`HttpSink` (httpx) drain it in this process, `run_once` in a loop from the first read until
every report is delivered and acked. The sink is bench/bench_sink.py in a process of its own (a
bare asyncio HTTP/1.1 server with keep-alive; `--sink-only` measures what it answers alone); it
counts every key it accepted, so each run checks that every report arrived exactly once. CPU
columns: seconds of CPU per wall second (1.0 = one core busy) of this process (the relay: its
thread and the delivery threads), the sink process and redis-server, over the drain. `--write`
puts the table in docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import logging

import psutil
import redis

from bench.fleet_bench import write_doc
from bench.outbox_bench import free_port, report_json, start_redis
from bot.outbox.relay import Relay
from bot.outbox.relay_config import RelayConfig
from bot.outbox.sinks import HttpSink
from bot.outbox.stream import Outbox
from bot.store.keys import Keys
from tests.support.processes import REPO_ROOT

DOC = REPO_ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- relay-bench:begin -->", "<!-- relay-bench:end -->"


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    batch: int
    latency_ms: float
    target: int | None = None  # reports/s the issue asks for
    share: float = 1.0  # of --reports (one POST at a time to a 5 ms sink takes a while)


SCENARIOS = (
    Scenario("one POST at a time (before)", 1, 0, 0.0),
    Scenario("32 POSTs in flight (default)", 32, 0, 0.0, 10_000),
    Scenario("one POST at a time, 5 ms sink (before)", 1, 0, 5.0, None, 0.1),
    Scenario("16 POSTs in flight, 5 ms sink", 16, 0, 5.0),
    Scenario("32 POSTs in flight (default), 5 ms sink", 32, 0, 5.0, 2_500),
    Scenario("batches of 100, 32 in flight", 32, 100, 0.0, 20_000),
    Scenario("batches of 100, 32 in flight, 5 ms sink", 32, 100, 5.0),
)


@dataclass
class Result:
    scenario: Scenario
    reports: int
    seconds: float
    relay_cpu: float
    sink_cpu: float
    redis_cpu: float
    sink_stats: dict[str, int]

    @property
    def rate(self) -> float:
        return self.reports / self.seconds

    @property
    def once(self) -> bool:
        stats = self.sink_stats
        return stats["unique"] == stats["reports"] == self.reports and stats["max"] == 1


class SinkProcess:
    """bench/bench_sink.py in its own process."""

    def __init__(self, latency_ms: float) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "bench.bench_sink", "--port", str(self.port)]
        args += ["--latency-ms", str(latency_ms)]
        self.process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the bench sink did not start")
        self.ps = psutil.Process(self.process.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/reports"

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as answer:
            return dict(json.load(answer))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def redis_cpu(client: redis.Redis) -> float:
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def fill(client: redis.Redis, keys: Keys, reports: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, body in enumerate(reports):
        pipe.xadd(keys.outbox, {"job_id": f"job-{i:06d}", "report": body})
    pipe.execute()


def drain(client: redis.Redis, keys: Keys, scenario: Scenario, sink: SinkProcess, n: int) -> Result:
    config = RelayConfig(
        concurrency=scenario.concurrency,
        report_batch=scenario.batch,
        claim_interval_s=3600,
        touch_interval_s=3600,
        trim_interval_s=3600,
    )
    http = HttpSink(sink.url, "bench-token", connections=scenario.concurrency)
    relay = Relay(client, keys, http, "bench", config)
    cpu0, sink0, redis0 = time.process_time(), sink.cpu(), redis_cpu(client)
    started = time.perf_counter()
    while relay.counters["delivered"] < n:
        relay.run_once()
    relay.deliveries.stop(10.0)  # settle (nothing left in flight) and flush the last acks
    seconds = time.perf_counter() - started
    cpu, sink_cpu, red = time.process_time() - cpu0, sink.cpu() - sink0, redis_cpu(client) - redis0
    http.close()
    owed = Outbox(client, keys).stats()["groups"][0]["owed"]
    if owed:
        raise RuntimeError(f"{scenario.name}: {owed} reports still owed")
    return Result(
        scenario, n, seconds, cpu / seconds, sink_cpu / seconds, red / seconds, sink.stats()
    )


def run_scenario(client: redis.Redis, index: int, scenario: Scenario, reports: list[str]) -> Result:
    n = max(1, int(len(reports) * scenario.share))
    keys = Keys(f"relaybench{index}")
    fill(client, keys, reports[:n])
    sink = SinkProcess(scenario.latency_ms)
    try:
        return drain(client, keys, scenario, sink, n)
    finally:
        sink.stop()


def sink_only(requests: int = 20_000, connections: int = 16) -> float:
    """Requests/s the bench sink answers from `connections` keep-alive sockets driven by one
    selector loop here, one request in flight per socket (what bounds the figures above)."""
    sink = SinkProcess(0.0)
    request = (
        b"POST /reports HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k\r\nContent-Length: 2\r\n\r\n{}"
    )
    socks = [socket.create_connection(("127.0.0.1", sink.port)) for _ in range(connections)]
    try:
        started = time.perf_counter()
        sent = done = 0
        for sock in socks:
            sock.sendall(request)
            sent += 1
        while done < requests:
            for sock in socks:
                sock.recv(4096)  # one short answer per request (keep-alive, no pipelining)
                done += 1
                if sent < requests:
                    sock.sendall(request)
                    sent += 1
        return requests / (time.perf_counter() - started)
    finally:
        for sock in socks:
            sock.close()
        sink.stop()


def table(results: list[Result], n: int) -> str:
    head = (
        "| scenario | reports | in flight | batch | sink latency | s | reports/s | target | "
        "relay CPU | sink CPU | redis CPU | each once |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    rows = []
    for r in results:
        s = r.scenario
        target = f"≥ {s.target:,}" if s.target else "-"
        rows.append(
            f"| {s.name} | {r.reports:,} | {s.concurrency} | {s.batch or '-'} | "
            f"{s.latency_ms:g} ms | {r.seconds:.2f} | {r.rate:,.0f} | {target} | "
            f"{r.relay_cpu:.2f} | {r.sink_cpu:.2f} | {r.redis_cpu:.2f} | "
            f"{'yes' if r.once else 'NO'} |"
        )
    return head + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--sink-only", action="store_true", help="measure the bench sink alone")
    parser.add_argument("--only", default="", help="run only scenarios whose name has this")
    args = parser.parse_args()
    logging.getLogger("bot.outbox.sinks").setLevel(logging.ERROR)  # a token over http://: yes
    if args.sink_only:
        print(f"bench sink alone: {sink_only():,.0f} requests/s (16 keep-alive connections)")
        return
    reports = [report_json(i) for i in range(args.reports)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(Path(tmp))
        try:
            client = redis.Redis(port=port, decode_responses=True)
            for index, scenario in enumerate(SCENARIOS):
                if args.only in scenario.name:
                    results.append(run_scenario(client, index, scenario, reports))
                    print(f"{scenario.name}: {results[-1].rate:,.0f} reports/s", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    text = (
        f"One relay, {args.reports:,} reports of ~{len(reports[0])} bytes, loopback sink "
        f"(bench/bench_sink.py), redis-server AOF everysec:\n\n{table(results, args.reports)}"
    )
    print(f"\n{text}\n")
    print(json.dumps({r.scenario.name: round(r.rate) for r in results}))
    if not all(r.once for r in results):
        raise SystemExit("a report was not delivered exactly once")
    if args.write:
        write_doc(text, DOC, BEGIN, END)


if __name__ == "__main__":
    main()
