"""Real `celery -A bot beat` processes for e2e tests, and reading what they did from their logs."""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from tests.support.processes import ManagedProcess

#: The test schedules (tests/support/schedule_ops.py), after the `touch` op they submit.
SCHEDULE_OPS = "tests.support.schedule_ops"
#: What redbeat logs when a beat took its lock, and when it lets it go.
ACQUIRED = "beat: Acquired lock"
RELEASED = "beat: Releasing lock"
_SUBMITTED = re.compile(r"schedule '[^']+': submitted (sched\.\S+)$", re.MULTILINE)
_STAMP = re.compile(rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}) .*?({ACQUIRED}|{RELEASED})")


class BeatProcess(ManagedProcess):
    """One `celery -A bot beat` with its own log file."""

    kind = "beat"

    def __init__(self, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        args = [sys.executable, "-m", "celery", "-A", "bot", "beat", "-l", "info"]
        super().__init__(name, env, log_dir / f"beat-{name}.log", args)

    def wait_holding_lock(self, timeout_s: float = 30) -> BeatProcess:
        return self.wait_until(lambda: ACQUIRED in self.log(), timeout_s)

    def submitted(self) -> list[str]:
        """The slot ids this beat enqueued (not those it found submitted already)."""
        return _SUBMITTED.findall(self.log())

    def lock_events(self) -> list[tuple[datetime, str]]:
        """(when, "acquired" or "released") from redbeat's log lines."""
        events = []
        for line in self.log().splitlines():
            found = _STAMP.match(line)
            if found:
                when = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
                events.append((when, "acquired" if found.group(2) == ACQUIRED else "released"))
        return events


def submissions(beats: list[BeatProcess]) -> Counter[str]:
    """How many times each slot id was enqueued, over all the beats."""
    return Counter(slot_id for beat in beats for slot_id in beat.submitted())
