"""Simulated fleet members: N registrations and heartbeats without pools, for scale tests and
`make bench-scale`.

Each member goes through bot's own `WorkerRecords` (the `register.lua` and `heartbeat.lua`
scripts a real worker's FleetAgent calls), on the same keys, at the same BOT_HEARTBEAT_INTERVAL
and with the same BOT_LEASE_TTL, so the reaper, `bot fleet` and Redis see what they would see
from N real workers (minus jobs). One thread beats every member in turn, the beats spread
evenly over the interval.

Control, from outside the process:
- SIGUSR1: the next member still beating stops beating (a dead member: its lease expires and
  the reaper forgets it); the process prints `silenced <instance_id>`;
- SIGTERM / SIGINT: every member deregisters and the process exits 0.

    python -m bot.fleet.simulation --members 200
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bot.base.version import __version__
from bot.fleet.records import WorkerRecords
from bot.store.connect import connect
from bot.store.keys import Keys
from config.celery_config import broker_transport_options
from config.settings import Settings, load_settings

#: The pool kind a simulated member shows in its record (and in `bot fleet`).
SIMULATED = "simulated"


@dataclass
class Member:
    """One simulated fleet member."""

    index: int
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    beating: bool = True
    beats: int = 0

    @property
    def bot_id(self) -> str:
        return f"sim-{self.index}"

    def static_fields(self, run_started_ms: int) -> dict[str, Any]:
        return {
            "bot_id": self.bot_id,
            "instance_id": self.instance_id,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "node": f"{self.bot_id}@{socket.gethostname()}",
            "version": f"bot {__version__}; simulated member",
            "queues": [],
            "ops": [],
            "pool_kind": SIMULATED,
            "started_at": str(run_started_ms),
        }

    def dynamic_fields(self) -> dict[str, Any]:
        return {"state": "READY", "pool": "0", "in_flight": "0", "done": "0", "failed": "0"}


class SimulatedFleet:
    """N members registered and beating through `records`, every `heartbeat_s`."""

    def __init__(
        self, records: WorkerRecords, members: int, heartbeat_s: float, lease_ttl_s: float
    ) -> None:
        self.records = records
        self.members = [Member(i) for i in range(members)]
        self.heartbeat_s = heartbeat_s
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, members: int) -> SimulatedFleet:
        records = WorkerRecords(
            connect(settings), Keys(settings.key_prefix), broker_transport_options(settings)
        )
        return cls(records, members, settings.heartbeat_interval, settings.lease_ttl_s)

    def register_all(self) -> None:
        started_ms = int(time.time() * 1000)
        for member in self.members:
            self.records.register(
                member.instance_id,
                {**member.static_fields(started_ms), **member.dynamic_fields()},
                self.lease_ttl_ms,
                member.bot_id,
            )

    def silence_next(self) -> Member | None:
        """Stop the heartbeat of the first member still beating; that member, or None."""
        with self._lock:
            member = next((m for m in self.members if m.beating), None)
            if member is not None:
                member.beating = False
            return member

    def beat_round(self) -> None:
        """One heartbeat of every beating member, spread evenly over one interval."""
        start, step = time.monotonic(), self.heartbeat_s / max(1, len(self.members))
        for slot, member in enumerate(self.members):
            if self.stopping.wait(max(0.0, start + slot * step - time.monotonic())):
                return
            self.beat(member)

    def beat(self, member: Member) -> None:
        """One heartbeat of `member` (one script call, as a worker's); none once silenced."""
        if not member.beating:
            return
        self.records.heartbeat(
            member.instance_id, member.dynamic_fields(), self.lease_ttl_ms, member.bot_id
        )
        member.beats += 1

    def run(self) -> None:
        while not self.stopping.is_set():
            self.beat_round()

    def deregister_all(self) -> None:
        for member in self.members:
            if member.beating:
                self.records.deregister(member.instance_id)


def _install_signals(fleet: SimulatedFleet) -> None:
    def silence(*_: Any) -> None:
        member = fleet.silence_next()
        print(f"silenced {member.instance_id if member else '-'}", flush=True)

    signal.signal(signal.SIGUSR1, silence)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: fleet.stopping.set())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.fleet.simulation", description=__doc__)
    parser.add_argument("--members", type=int, default=200, help="simulated members (200)")
    args = parser.parse_args(argv)
    fleet = SimulatedFleet.from_settings(load_settings(), args.members)
    _install_signals(fleet)
    fleet.register_all()
    print(f"registered {len(fleet.members)} members", flush=True)
    beating = threading.Thread(target=fleet.run, name="simulated-heartbeats", daemon=True)
    beating.start()
    while beating.is_alive():
        beating.join(0.2)
    fleet.deregister_all()
    print(f"deregistered; {sum(m.beats for m in fleet.members)} heartbeats sent", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
