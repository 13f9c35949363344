"""The processes of the soak (bench/soak.py): a private redis-server, two real `-c 2` prefork
`celery -A bot worker` processes, one standalone relay (`python -m bot.cli.relay`) and a
loopback HTTP sink in this process that counts each report; and the two faults, a worker's
`kill -9` (then restarted under the same node name, as a supervisor would) and a Redis restart
(SIGTERM, then started again on the same port and AOF directory).

Every process is in an ExitStack: leaving `SoakFleet` (normally, on an error or on Ctrl-C)
stops them all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from bot.store.keys import Keys
from tests.support.processes import FAST_FLEET, WorkerProcess, bot_env
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer
from tests.support.relay_process import RelayProcess

#: The fleet's settings (every process, the producer too): the e2e tests' FAST_FLEET timings
#: (heartbeat 0.5 s, so lease TTL 1.5 s; retry backoff 0.05-0.2 s; sink breaker 3 failures /
#: 1 s), a reaper pass every second, and short retention so Redis memory levels off within the
#: run: job records and Celery results kept 120 s after their end, the outbox trimmed to 120 s
#: or 50,000 reports (each BOT_OUTBOX_TRIM_INTERVAL, 60 s).
SOAK_SETTINGS = {
    **FAST_FLEET,
    "BOT_REAPER_INTERVAL": "1",
    "BOT_JOB_TTL": "120",
    "BOT_RESULT_TTL": "120",
    "BOT_OUTBOX_MAX_AGE": "120",
    "BOT_OUTBOX_MAX_LEN": "50000",
}
#: redis-server as production runs it (compose file): AOF fsync every second, no eviction;
#: maxmemory only as a ceiling far above what the soak should reach.
REDIS_ARGS = ["--appendfsync", "everysec", "--maxmemory", "1gb"]
WORKERS = ("soak-w1", "soak-w2")
CONCURRENCY = 2


class CountingSink(Receiver):
    """The test receiver (answers 200), keeping only what the soak needs for each report: the
    first arrival (monotonic), how many times it arrived, its status, and any Idempotency-Key
    that is not the job id. (Receiver.requests would keep every report's body.)"""

    def __init__(self) -> None:
        super().__init__()
        self.first_arrival: dict[str, float] = {}
        self.arrivals: Counter[str] = Counter()
        self.report_statuses: Counter[str] = Counter()
        self.bad_keys = 0
        self._count_lock = threading.Lock()

    def _record(self, headers: Any, body: bytes) -> int:
        arrived = time.monotonic()
        report = json.loads(body)
        job_id = str(report.get("job_id", ""))
        with self._count_lock:
            self.arrivals[job_id] += 1
            self.first_arrival.setdefault(job_id, arrived)
            if self.arrivals[job_id] == 1:
                self.report_statuses[str(report.get("status"))] += 1
            if headers.get("Idempotency-Key") != job_id:
                self.bad_keys += 1
        return 200

    def delivered(self) -> int:
        """Distinct job ids received."""
        return len(self.first_arrival)


def rss_mib(pid: int) -> tuple[float, float]:
    """RSS (MiB) of a process and of all its children together; (0, 0) if it is gone."""
    try:
        main = psutil.Process(pid)
        own = main.memory_info().rss
        children = 0
        for child in main.children(recursive=True):
            try:
                children += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    return own / 2**20, children / 2**20


class SoakFleet:
    """Redis, the workers, the relay and the sink of one soak, started on entry, stopped on
    exit (whatever the exit)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.settings = dict(SOAK_SETTINGS)
        self.outbox_key = Keys(self.settings.get("BOT_KEY_PREFIX", "bot")).outbox
        self.server = RedisServer(workdir / "redis", appendonly=True)
        self.server.extra_args = list(REDIS_ARGS)
        self.sink = CountingSink()
        self.workers: list[WorkerProcess] = []
        self.relay: RelayProcess | None = None
        self._stack = ExitStack()

    def __enter__(self) -> SoakFleet:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        self.server.start()
        self._stack.callback(self.server.stop)
        self.sink.up()
        self._stack.callback(self.sink.down)
        relay_env = self.env("relay", BOT_REPORT_URL=self.sink.url)
        self.relay = RelayProcess("soak", relay_env, self.workdir).start()
        self._stack.callback(self.relay.stop)
        self.workers = [self._worker(name) for name in WORKERS]
        self._stack.callback(self._stop_workers)
        for worker in self.workers:
            worker.wait_ready(120)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """A bot process's environment; its own state dir (identity file) per name."""
        state = self.workdir / f"state-{name}"
        state.mkdir(exist_ok=True)
        return bot_env(self.server.url(), state, {**self.settings, **extra})

    def _worker(self, name: str) -> WorkerProcess:
        env = self.env(name)
        return WorkerProcess(name, env, self.workdir, concurrency=CONCURRENCY).start()

    def _stop_workers(self) -> None:
        """SIGTERM to every worker at once (a warm shutdown each), SIGKILL to the group of any
        still running 30 s later."""
        running = [worker for worker in self.workers if worker.alive()]
        for worker in running:
            worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for worker in running:
            try:
                worker.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()

    # --- faults --------------------------------------------------------------------------

    def kill_worker(self, index: int) -> None:
        """SIGKILL to the worker's process group (its main process and pool children at once,
        a crashed container), then the same worker started again under the same node name."""
        self.workers[index].kill()
        self.workers[index] = self._worker(WORKERS[index])

    def restart_dead_workers(self) -> list[str]:
        """Start again any worker that exited by itself; the names (and exit codes)."""
        restarted = []
        for index, worker in enumerate(self.workers):
            if not worker.alive():
                restarted.append(f"{worker.name} (exit {worker.process and worker.process.poll()})")
                self.workers[index] = self._worker(WORKERS[index])
        return restarted

    def restart_redis(self, down_for_s: float = 1.0) -> None:
        """SIGTERM (Redis writes its AOF and exits), then the same port and directory again."""
        self.server.restart(down_for_s)

    # --- readings ------------------------------------------------------------------------

    def worker_rss(self) -> list[tuple[float, float]]:
        return [rss_mib(worker.pid) for worker in self.workers]

    def redis_reading(self) -> tuple[float | None, int | None, int | None]:
        """used_memory (MiB), outbox length, keys; None each while Redis does not answer."""
        try:
            client = self.server.client()
            memory = int(client.info("memory")["used_memory"]) / 2**20
            return memory, int(client.xlen(self.outbox_key)), int(client.dbsize())
        except Exception:  # restarting or loading its AOF
            return None, None, None
