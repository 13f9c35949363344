"""Exponential backoff with full jitter, in float seconds.

Celery's own `get_exponential_backoff_interval` works in whole seconds (`randrange`), which
cannot express the sub-second delays tests and fast retries need; this is the same formula
(AWS "full jitter") on floats, with an injectable random source for tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_ceiling(attempt: int, base_s: float, cap_s: float) -> float:
    """The un-jittered delay before retry `attempt` (0-based): base * 2**attempt, capped."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    return min(cap_s, base_s * (2 ** min(attempt, 62)))


def full_jitter(
    attempt: int,
    base_s: float,
    cap_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """A delay drawn uniformly from [0, backoff_ceiling(attempt)]."""
    return rand() * backoff_ceiling(attempt, base_s, cap_s)
