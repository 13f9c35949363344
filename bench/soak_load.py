"""The soak's producer: one thread submitting `flaky` jobs (5 ms of work, never failing)
through bot's Client, each with its own job id so that every job can be accounted for at the
sink; either at a steady rate (jobs/s) or as a flood that keeps a bounded backlog (to measure
the fleet's capacity).

A submission that fails (Redis restarting) is tried again with the same id until it goes
through, for up to RETRY_FOR_S. The first try is `Client.submit`; a retry goes through
`submit_op(..., resend_queued=True)` (bot/flows/submit.py), the documented way to repair a
claim left without its message when Redis went away between the claim and the send.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

OP = "flaky"
PAYLOAD = {"duration_ms": 5, "failure_rate": 0.0}
RETRY_FOR_S = 60.0
RETRY_PAUSE_S = 0.2


def make_app(redis_url: str, state_dir: Path, settings: dict[str, str]) -> Any:
    """An in-process bot app (no fleet step) with the fleet's settings, for the producer."""
    from bot.application import create_app
    from config.settings import Settings

    values = {k.removeprefix("BOT_").lower(): v for k, v in settings.items()}
    return create_app(
        Settings(redis_url=redis_url, state_dir=state_dir, **values),  # type: ignore[arg-type]
        fleet=False,
    )


class Producer:
    """Submits `{prefix}-{n}` jobs from a thread until `stop()`. `rate`: jobs/s on a fixed
    schedule (a late submission is followed by the ones it held up, so the offered load stays
    `rate` on average); None: as fast as it can while fewer than `backlog` jobs are not yet
    delivered (`delivered()` counts the distinct ids the sink has)."""

    def __init__(
        self,
        app: Any,
        prefix: str,
        *,
        rate: float | None = None,
        backlog: int = 1000,
        delivered: Callable[[], int] | None = None,
    ) -> None:
        from bot.client import Client

        self.app = app
        self.client = Client(app)
        self.prefix = prefix
        self.rate = rate
        self.backlog = backlog
        self.delivered = delivered or (lambda: 0)
        #: job id -> monotonic time of its first submission attempt
        self.submitted: dict[str, float] = {}
        #: ids whose submission never went through (given up after RETRY_FOR_S)
        self.abandoned: list[str] = []
        self.retries = 0
        self.delivered_before = 0  # the sink's count when this producer started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"producer-{prefix}", daemon=True)

    def start(self) -> Producer:
        self.delivered_before = self.delivered()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(RETRY_FOR_S + 10)

    def _run(self) -> None:
        started, n = time.monotonic(), 0
        while not self._stop.is_set():
            if self.rate is not None:
                self._stop.wait(max(0.0, started + n / self.rate - time.monotonic()))
            else:
                while self._outstanding() >= self.backlog and not self._stop.is_set():
                    time.sleep(0.005)
            if self._stop.is_set():
                return
            self._submit(f"{self.prefix}-{n:07d}")
            n += 1

    def _outstanding(self) -> int:
        return len(self.submitted) - (self.delivered() - self.delivered_before)

    def _submit(self, job_id: str) -> None:
        from bot.flows.submit import submit_op

        first = time.monotonic()
        try:
            self.client.submit(OP, PAYLOAD, job_id=job_id)
        except Exception:
            while True:
                self.retries += 1
                if time.monotonic() - first > RETRY_FOR_S:
                    self.abandoned.append(job_id)
                    return
                time.sleep(RETRY_PAUSE_S)
                try:
                    submit_op(self.app, OP, PAYLOAD, job_id=job_id, resend_queued=True)
                    break
                except Exception:
                    continue
        self.submitted[job_id] = first
