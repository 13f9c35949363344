"""What `bot fleet` prints under its table and `bot health` next to a state: why a worker is
DEGRADED (its record's `state_reason`), and the outbox groups behind the retention bounds."""

from __future__ import annotations

from bot.cli.fleet import notes
from bot.fleet.health import describe
from bot.fleet.records import WorkerView

MEMORY = "redis memory 93% of maxmemory (limit 90%)"


def view(state: str, reason: str = "") -> WorkerView:
    record = {"state": state, "state_reason": reason, "bot_id": "b"}
    return WorkerView("i-1", 1, record, lease_ttl_ms=5000)


def test_degraded_workers_are_listed_with_their_reason() -> None:
    lines = notes([view("DEGRADED", MEMORY), view("READY", "idle")], {})

    assert lines == [f"i-1: DEGRADED: {MEMORY}"]


def test_behind_groups_are_listed_escaped() -> None:
    behind = {"bill\ring": {"owed": 30, "oldest_owed_age_s": 12.5, "bound": "length"}}

    (line,) = notes([], behind)

    assert (
        line
        == "outbox group bill\\x0ding behind (length bound): owes 30, oldest 12.5s (bot outbox)"
    )


def test_health_shows_the_reason_of_a_degraded_worker() -> None:
    assert describe(view("DEGRADED", MEMORY), "w1", "i-1") == f"w1 (i-1): DEGRADED ({MEMORY})"
    assert describe(view("READY", "idle"), "w1", "i-1") == "w1 (i-1): READY"
