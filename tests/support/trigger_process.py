"""`bot triggers run` as a real subprocess for e2e tests: one trigger consumer outside any
worker; its counters are read from the status file it rewrites every 0.1 s; it can be stopped
(SIGTERM) or kill -9'd."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.processes import BOT, ManagedProcess

#: What BOT_OPS_MODULES names to load the trigger test ops (tests/support/trigger_ops.py) with
#: the fault ops whose `touch` they start; named, not imported, so importing this module
#: declares no trigger.
TRIGGER_OPS = "tests.support.fault_ops,tests.support.trigger_ops"
#: The test triggers' names, as they appear in the ids of the jobs they start.
ON_EMIT = "tests.on_emit"
ON_EMIT_FAILED = "tests.on_emit_failed"
ON_EMIT_PIPELINE = "tests.on_emit_pipeline"
ON_SQUARES = "tests.on_squares"


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
