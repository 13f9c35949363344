"""`python -m bot.fleet.simulation` as a real subprocess: N simulated fleet members that
register and heartbeat like workers; SIGUSR1 silences one (its instance id is read from the
log), SIGTERM deregisters them all."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.processes import ManagedProcess, wait_for


class SimulationProcess(ManagedProcess):
    kind = "simulation"

    def __init__(self, members: int, env: Mapping[str, str], log_dir: Path) -> None:
        self.members = members
        args = [sys.executable, "-m", "bot.fleet.simulation", "--members", str(members)]
        super().__init__("sim", env, log_dir / "simulation.log", args)

    def start(self) -> SimulationProcess:
        super().start()
        return self.wait_until(lambda: f"registered {self.members} members" in self.log(), 30)

    def silenced(self) -> list[str]:
        return re.findall(r"^silenced (\w+)$", self.log(), re.MULTILINE)

    def silence_one(self) -> str:
        """Stop one member's heartbeat; its instance id."""
        before = len(self.silenced())
        self.signal(signal.SIGUSR1)
        wait_for(lambda: len(self.silenced()) > before, 10, "a member to be silenced")
        return self.silenced()[before]
