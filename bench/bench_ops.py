"""The benchmark's job in each form the fleet benchmark compares: one INCR of a counter.

- `ops.bench_incr`: a real bot op (lease, validation, outbox report, results, events).
- `bench.incr`: the same body as a plain Celery task on bot's app (bot's config, no lifecycle).
- `ops.bench_io`: an I/O-bound op (sleeps, then counts), for the pool comparison.
- `ops.bench_cpu`: a CPU-bound op (spins in Python for `cpu_ms` of its thread's CPU time,
  holding the GIL as pure-Python work does, then counts), for the pool comparison.

Loaded into a worker through `BOT_OPS_MODULES=bench.bench_ops`; the counter lives on the Redis
named by `BENCH_COUNTER_URL`.
"""

from __future__ import annotations

import os
import time

import redis
from celery import shared_task

from bot.ops import op

COUNTER_KEY = "bench:done"

_clients: dict[int, redis.Redis] = {}


def counter() -> redis.Redis:
    """This process's client for the counter (a forked pool child opens its own)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
    return _clients[pid]


@op("bench_incr")
def bench_incr(n: int = 0) -> int:
    """Count one job done."""
    return int(counter().incr(COUNTER_KEY))


@op("bench_io")
def bench_io(n: int = 0, sleep_ms: float = 20.0) -> int:
    """Wait on 'I/O' for `sleep_ms`, then count one job done."""
    time.sleep(sleep_ms / 1000)
    return int(counter().incr(COUNTER_KEY))


@op("bench_cpu")
def bench_cpu(n: int = 0, cpu_ms: float = 5.0) -> int:
    """Compute for `cpu_ms` of this thread's CPU time, then count one job done."""
    until = time.thread_time() + cpu_ms / 1000
    x = 0
    while time.thread_time() < until:
        for i in range(1000):
            x ^= i
    return int(counter().incr(COUNTER_KEY))


@shared_task(name="bench.incr")
def plain_incr(n: int = 0) -> int:
    """`bench_incr` as a plain Celery task: bot's app and config, none of its lifecycle."""
    return int(counter().incr(COUNTER_KEY))
