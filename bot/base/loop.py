"""The one loop primitive for bot's background threads (heartbeat, periodic services such as
the reaper, the outbox relay).

A `Loop` calls `step()` in a daemon thread until stopped; `step` returns how many seconds to
wait before the next call. `wake()` cuts the current wait short; `request_stop()` is safe from a
signal handler; `stop()` also joins the thread. An exception from `step` is logged and the loop
goes on after `error_wait_s`: a background thread must outlive any bug in one round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Loop:
    def __init__(
        self,
        name: str,
        step: Callable[[], float],
        *,
        first_wait_s: float = 0.0,
        error_wait_s: float = 1.0,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.step = step
        self.first_wait_s = first_wait_s
        self.error_wait_s = error_wait_s
        self.on_exit = on_exit
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.alive:
            return
        self._halt.clear()
        self._thread = threading.Thread(target=self._run, name=f"bot-{self.name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._halt.is_set()

    def wake(self) -> None:
        """Run the next step now rather than after the current wait."""
        self._wake.set()

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` (cut short by wake() or a stop); True when stopping."""
        self._wake.wait(max(0.0, seconds))
        self._wake.clear()
        return self._halt.is_set()

    def request_stop(self) -> None:
        """Ask the thread to stop after its current step (safe from a signal handler)."""
        self._halt.set()
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop and join the thread."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        pause = self.first_wait_s
        while not self.wait(pause):
            try:
                pause = self.step()
            except Exception:
                pause = self.error_wait_s
                logger.exception("%s failed; next round in %.1fs", self.name, pause)
        if self.on_exit is not None:
            self.on_exit()
