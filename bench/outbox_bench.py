"""Outbox append and drain rates (reports/s) for 10,000 reports, against a private redis-server
(AOF on, appendfsync everysec as in the compose file) this script starts and stops itself.

    .venv/bin/python bench/outbox_bench.py [--reports 10000]

Rows:
- append (XADD): one XADD of a report per round trip, sequential.
- append (complete.lua): the real path: the fenced complete script ending a running job,
  which writes the final state and XADDs the report atomically.
- drain (stream): XREADGROUP batches of 100 + XACK, no sink: what the stream side costs.
- drain (relay, null sink): `Relay.run_once` with an in-memory sink (per-entry XACK, breaker).
- drain (relay, HTTP): the relay POSTing each report to a loopback http.server receiver.

The predecessor's figures: 1,000 appends in < 500 ms and a drain in < 100 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis

from bot.jobs.reports import Report, ReportWorker
from bot.jobs.store import JobStore, Outcome
from bot.outbox.relay import Relay
from bot.outbox.relay_config import RelayConfig
from bot.outbox.sinks import HttpSink
from bot.outbox.stream import Outbox
from bot.store.keys import Keys

KEYS = Keys("bench")
PREDECESSOR_APPEND_MS_PER_1000 = 500.0
PREDECESSOR_DRAIN_MS_PER_1000 = 100.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [
        shutil.which("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def report_json(i: int) -> str:
    now = datetime.now(UTC)
    return Report(
        job_id=f"job-{i:06d}",
        op="sum",
        status="succeeded",
        result=i,
        attempts=1,
        recoveries=0,
        worker=ReportWorker(bot_id="bench", instance_id="bench-1", hostname="bench"),
        enqueued_at=now,
        started_at=now,
        finished_at=now,
        duration_ms=1,
    ).model_dump_json()


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_xadd(client: redis.Redis, reports: list[str]) -> float:
    def run() -> None:
        for i, body in enumerate(reports):
            client.xadd(KEYS.outbox, {"job_id": f"job-{i:06d}", "report": body})

    return timed(run)


def bench_complete(client: redis.Redis, reports: list[str]) -> float:
    store = JobStore(client, KEYS)
    pipe = client.pipeline(transaction=False)
    for i in range(len(reports)):  # running jobs owned by "bench" at fence 1 (not timed)
        pipe.hset(KEYS.job(f"c-{i}"), mapping={"state": "running", "owner": "bench", "fence": 1})
    pipe.execute()

    def run() -> None:
        for i, body in enumerate(reports):
            outcome = Outcome("succeeded", {"result": i}, body, "sum", 0.001)
            store.complete(f"c-{i}", "bench", 1, outcome, 3600)

    return timed(run)


def bench_drain_stream(client: redis.Redis, n: int) -> float:
    box = Outbox(client, KEYS)
    box.ensure_group("bench-stream")

    def run() -> None:
        done = 0
        while done < n:
            entries = box.read_new(KEYS.outbox, "bench-stream", "c1", 100)
            box.ack(KEYS.outbox, "bench-stream", *[e.id for e in entries])
            done += len(entries)

    return timed(run)


class NullSink:
    name = "bench-null"
    timeout_s = 1.0

    def deliver(self, job_id: str, report_json: str) -> None:
        pass

    def close(self) -> None:
        pass


def bench_relay(client: redis.Redis, sink: Any, n: int) -> float:
    config = RelayConfig(claim_interval_s=3600, touch_interval_s=3600, trim_interval_s=3600)
    relay = Relay(client, KEYS, sink, "bench", config)

    def run() -> None:
        while relay.counters["delivered"] < n:
            relay.run_once()

    return timed(run)


def start_receiver() -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/reports"


def row(name: str, n: int, seconds: float, predecessor_ms: float | None) -> str:
    per_1000 = seconds * 1000 / n * 1000
    versus = f"{predecessor_ms / per_1000:6.1f}x" if predecessor_ms else "      -"
    rate = f"{n / seconds:>10,.0f}"
    return f"| {name:<28} | {n:>7} | {seconds:8.3f} | {rate} | {per_1000:9.1f} | {versus} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=10_000)
    n = parser.parse_args().reports
    reports = [report_json(i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(Path(tmp))
        receiver, url = start_receiver()
        try:
            client = redis.Redis(port=port, decode_responses=True)
            results = [
                ("append (XADD)", bench_xadd(client, reports), PREDECESSOR_APPEND_MS_PER_1000),
                (
                    "append (complete.lua)",
                    bench_complete(client, reports),
                    PREDECESSOR_APPEND_MS_PER_1000,
                ),
            ]
            # the stream now holds 2n reports; each drain reads the first n through its own group
            results.append(
                (
                    "drain (stream, batch 100)",
                    bench_drain_stream(client, n),
                    PREDECESSOR_DRAIN_MS_PER_1000,
                )
            )
            results.append(
                (
                    "drain (relay, null sink)",
                    bench_relay(client, NullSink(), n),
                    PREDECESSOR_DRAIN_MS_PER_1000,
                )
            )
            http = HttpSink(url, "bench-token", name="bench-http")
            results.append(
                (
                    "drain (relay, HTTP loopback)",
                    bench_relay(client, http, n),
                    PREDECESSOR_DRAIN_MS_PER_1000,
                )
            )
            http.close()
        finally:
            receiver.shutdown()
            proc.terminate()
            proc.wait(10)
    print(
        f"outbox benchmark: {n:,} reports of ~{len(reports[0])} bytes, "
        "redis-server AOF everysec, loopback\n"
    )
    print(
        "| what                         | reports | total s  | reports/s  | ms/1,000  | vs pred. |"
    )
    print(
        "|------------------------------|---------|----------|------------|-----------|----------|"
    )
    for name, seconds, predecessor in results:
        print(row(name, n, seconds, predecessor))
    print("\npredecessor: 1,000 appends < 500 ms; a drain < 100 ms ('vs pred.' = times faster)")
    print(json.dumps({name: round(n / s) for name, s, _ in results}))


if __name__ == "__main__":
    main()
