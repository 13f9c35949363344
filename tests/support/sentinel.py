"""A Redis Sentinel set on loopback ports: a primary, a replica (`--replicaof`) and three
`redis-server --sentinel` processes monitoring them, for failover tests with real processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from tests.support.redis_server import REDIS_SERVER, RedisServer, free_port

MASTER_NAME = "mymaster"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
SENTINELS = 3


class ReplicaServer(RedisServer):
    """A redis-server that replicates `primary_port` from its start."""

    def __init__(self, data_dir: Path, primary_port: int) -> None:
        super().__init__(data_dir, appendonly=False)

        self.extra_args = ["--replicaof", "127.0.0.1", str(primary_port)]


class SentinelProcess:
    """One `redis-server sentinel.conf --sentinel` on a free port, its config in `conf_dir`."""

    def __init__(self, conf_dir: Path, primary_port: int) -> None:
        self.port = free_port()
        self.conf_dir = conf_dir
        conf_dir.mkdir(parents=True, exist_ok=True)
        self.conf = conf_dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {conf_dir}\n"
            f"logfile {conf_dir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def master(self) -> dict[str, Any]:
        """What this sentinel says of the master (SENTINEL MASTER, parsed by redis-py: ports
        and counts are ints); empty while it does not answer."""
        try:
            return dict(self.client().sentinel_master(MASTER_NAME))
        except redis.RedisError:
            return {}

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class SentinelSet:
    """Primary + replica + three sentinels; `url()` is kombu's `sentinel://...;...` form."""

    def __init__(self, base_dir: Path) -> None:
        self.primary = RedisServer(base_dir / "primary", appendonly=False)
        self.replica = ReplicaServer(base_dir / "replica", self.primary.port)
        self.sentinels = [
            SentinelProcess(base_dir / f"sentinel-{n}", self.primary.port) for n in range(SENTINELS)
        ]

    def url(self, db: int = 0) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}/{db}" for s in self.sentinels)

    def start(self, timeout_s: float = 20.0) -> None:
        self.primary.start()
        self.replica.start()
        self.wait_replica_in_sync(timeout_s)
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_sentinels_agree(timeout_s)

    def wait_replica_in_sync(self, timeout_s: float) -> None:
        def synced() -> bool:
            info = self.replica.client().info("replication")
            return info.get("master_link_status") == "up"

        _wait(synced, timeout_s, "the replica to sync with the primary")

    def wait_sentinels_agree(self, timeout_s: float) -> None:
        """Every sentinel knows the other two and the replica."""

        def agreed() -> bool:
            masters = [s.master() for s in self.sentinels]
            return all(
                int(m.get("num-other-sentinels", 0)) == SENTINELS - 1
                and int(m.get("num-slaves", 0)) >= 1
                for m in masters
            )

        _wait(agreed, timeout_s, "the sentinels to see each other and the replica")

    def master_port(self) -> int | None:
        """The master port the sentinels name (None while they do not agree)."""
        ports = {s.master().get("port") for s in self.sentinels}
        port = ports.pop() if len(ports) == 1 else None
        return int(port) if port is not None else None

    def wait_promoted(self, timeout_s: float) -> None:
        """Until every sentinel names the replica as master and it accepts writes."""

        def promoted() -> bool:
            if self.master_port() != self.replica.port:
                return False
            info = self.replica.client().info("replication")
            return info.get("role") == "master"

        _wait(promoted, timeout_s, "Sentinel to promote the replica")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop(kill=True)
        self.primary.stop(kill=True)


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@contextmanager
def running_sentinel_set(base_dir: Path) -> Iterator[SentinelSet]:
    """A started SentinelSet, every process killed on the way out."""
    cluster = SentinelSet(base_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
