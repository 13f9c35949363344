"""The one wall clock of bot: epoch milliseconds, as every record, lease and report stores it.

Durations use `time.monotonic()`; anything written to Redis or a report uses `now_ms()`.
Code that must be testable without sleeping takes a clock argument defaulting to this.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the epoch (wall clock)."""
    return int(time.time() * 1000)
