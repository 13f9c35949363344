"""What this process knows about the worker it belongs to: identity and settings.

Filled in the worker's main process by the fleet step before the pool forks, so every pool
child inherits it. Outside a worker (client, CLI, Flower) `instance_id` stays None.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from bot.base.breaker import CircuitBreaker
from bot.runtime.worker_state import OutcomeCounters


@dataclass
class WorkerRuntime:
    bot_id: str | None = None
    instance_id: str | None = None
    hostname: str = socket.gethostname()
    #: Guards job acquire; the fleet step replaces it with one shared by the pool children.
    acquire_breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker("acquire"))
    #: Outcome counters shared with the main process (the fleet step's; a local one otherwise).
    counters: OutcomeCounters = field(default_factory=OutcomeCounters)

    def owner(self) -> str:
        """The lease owner name of jobs run here: the instance id, or a process-local stand-in
        for a task executed outside a fleet-managed worker (e.g. eagerly in a unit test)."""
        return self.instance_id or f"local-{self.hostname}"


RUNTIME = WorkerRuntime()
