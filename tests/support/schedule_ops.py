"""Schedules for the beat tests, loaded through BOT_OPS_MODULES after `tests.support.fault_ops`
(whose `touch` op they submit; listed the other way round they are checked when discovery
ends). Each fires every second; they differ in their catch-up policy.

- `each_second`: catch_up="run", max_catch_up=100 (a 10 s outage is caught up in full);
- `each_second_skip`: catch_up="skip";
- `each_second_built`: its payload is built from the slot (the decorator form).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot import schedule

schedule("each_second", every=1, op="touch", catch_up="run", max_catch_up=100)
schedule("each_second_skip", every=1, op="touch", payload={"seconds": 0}, catch_up="skip")


@schedule("each_second_built", every=1, op="touch", tz="Europe/Paris")
def each_second_built(slot: datetime) -> dict[str, Any]:
    """`steps` from the slot: 1 + the slot's second modulo 3 (the slot is in Europe/Paris)."""
    return {"steps": 1 + slot.second % 3}
