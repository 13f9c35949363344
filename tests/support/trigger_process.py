"""`bot triggers run` as a real subprocess for e2e tests: one trigger consumer outside any
worker; its counters are read from the status file it rewrites every 0.1 s; it can be stopped
(SIGTERM) or kill -9'd."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.processes import BOT, ManagedProcess


class TriggerProcess(ManagedProcess):
    kind = "trigger consumer"

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.status_path = log_dir / f"triggers-{name}.json"
        args = [BOT, "triggers", "run", "--status-file", str(self.status_path)]
        super().__init__(name, env, log_dir / f"triggers-{name}.log", args)

    def start(self) -> TriggerProcess:
        super().start()
        return self.wait_until(lambda: "ready" in self.log() and self.status_path.exists(), 30)

    def status(self) -> dict[str, Any]:
        """The consumer's snapshot (relay counters, `sink`: the trigger counters)."""
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
