"""`python -m bot.cli.relay` as a real subprocess for e2e tests: its snapshot is read from the
status file it rewrites every 0.1 s; it can be stopped (SIGTERM) or kill -9'd."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.processes import ManagedProcess


class RelayProcess(ManagedProcess):
    kind = "relay"

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.status_path = log_dir / f"relay-{name}.json"
        args = [sys.executable, "-m", "bot.cli.relay", "--status-file", str(self.status_path)]
        super().__init__(name, env, log_dir / f"relay-{name}.log", args)

    def start(self) -> RelayProcess:
        super().start()
        return self.wait_until(lambda: "ready" in self.log() and self.status_path.exists(), 20)

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_path.read_text()) if self.status_path.exists() else {}

    def stop(self, timeout_s: float = 15) -> int | None:
        return super().stop(timeout_s)
