"""`bot outbox` (the real console script, against a real redis-server) prints what senders and
receivers chose (job ids, group names, dead-letter reasons) escaped: no CR, LF, escape sequence
or other control character reaches the operator's terminal raw; and it marks the groups the
last retention pass found behind."""

from __future__ import annotations

import json
import time

import pytest
import redis

from bot.outbox.retention import Bounds, Retention
from bot.store.keys import Keys
from tests.support.processes import run_bot

pytestmark = pytest.mark.integration

HOSTILE_ID = "job\r\nforged-line\x1b[2J\u202e"
HOSTILE_REASON = "HTTP 400: nope\r\n\x1b]0;title\x07"


def raw_controls(text: str) -> set[str]:
    """Non-printable characters in `text`, line ends between lines excepted."""
    return {ch for line in text.splitlines() for ch in line if not ch.isprintable()}


def test_dead_letters_are_listed_escaped(client: redis.Redis, env: dict[str, str]) -> None:
    client.xadd(
        "bot:outbox:dead",
        {
            "job_id": HOSTILE_ID,
            "report": "{}",
            "group": "http",
            "deliveries": "1",
            "reason": HOSTILE_REASON,
        },
    )

    done = run_bot(env, "outbox", "dead")

    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert "\r" not in done.stdout and raw_controls(done.stdout) == set()
    assert "job\\x0d\\x0aforged-line\\x1b[2J\\u202e" in done.stdout
    assert "HTTP 400: nope\\x0d\\x0a\\x1b]0;title\\x07" in done.stdout
    as_json = run_bot(env, "outbox", "dead", "--json").stdout
    assert json.loads(as_json)["job_id"] == HOSTILE_ID and raw_controls(as_json) == set()


def test_stats_and_replay_print_group_names_and_ids_escaped(
    client: redis.Redis, env: dict[str, str]
) -> None:
    client.xadd("bot:outbox", {"job_id": "j", "report": "{}"})
    client.xgroup_create("bot:outbox", "evil\rgroup\x1b[31m", id="0")

    stats = run_bot(env, "outbox")
    missing = run_bot(env, "outbox", "replay", "0-1")
    malformed = run_bot(env, "outbox", "replay", "0-1\r\nreplayed all\x1b[2J")

    assert stats.returncode == 0, stats.stderr
    assert "evil\\x0dgroup\\x1b[31m" in stats.stdout and raw_controls(stats.stdout) == set()
    assert (missing.returncode, missing.stderr) == (1, "bot: no dead report 0-1\n")
    assert malformed.returncode == 2, malformed.stderr
    assert malformed.stderr == "bot: not a dead report id: 0-1\\x0d\\x0areplayed all\\x1b[2J\n"


def test_stats_mark_the_groups_behind_the_retention_bounds(
    client: redis.Redis, env: dict[str, str]
) -> None:
    # Given "billing", which never reads, "http", which read everything, and 20 reports
    client.xgroup_create("bot:outbox", "billing", id="0", mkstream=True)
    client.xgroup_create("bot:outbox", "http", id="0")
    for i in range(20):
        client.xadd("bot:outbox", {"job_id": f"j{i}", "report": "{}"})
    client.xreadgroup("http", "r", {"bot:outbox": ">"})
    client.xack("bot:outbox", "http", *[e[0] for e in client.xrange("bot:outbox")])
    Retention(client, Keys("bot"), Bounds(3600.0, 5, 10), interval_s=60.0).run_once()

    as_json = json.loads(run_bot(env, "outbox", "--json").stdout)
    text = run_bot(env, "outbox").stdout

    groups = {g["group"]: g for g in as_json["groups"]}
    assert (groups["billing"]["behind"], groups["billing"]["behind_bound"]) == (True, "length")
    assert (groups["http"]["behind"], groups["http"]["owed"]) == (False, 0)
    assert as_json["behind"] == ["billing"] and as_json["length"] == 20
    (billing,) = [line for line in text.splitlines() if line.startswith("billing")]
    assert billing.endswith("yes (length)")
    assert "XGROUP DESTROY bot:outbox <group>" in text


def test_stats_show_each_groups_owed_reports_and_the_age_of_the_oldest(
    client: redis.Redis, env: dict[str, str]
) -> None:
    # Given reports written 120 s, 60 s and 1 s ago; "http" has read and acked the first and
    # holds the second pending; "audit" has read nothing
    now_ms = int(time.time() * 1000)
    ids = [f"{now_ms - age * 1000}-0" for age in (120, 60, 1)]
    for entry_id in ids:
        client.xadd("bot:outbox", {"job_id": entry_id, "report": "{}"}, id=entry_id)
    client.xgroup_create("bot:outbox", "http", id="0")
    client.xgroup_create("bot:outbox", "audit", id="0")
    client.xreadgroup("http", "r", {"bot:outbox": ">"}, count=2)
    client.xack("bot:outbox", "http", ids[0])

    text = run_bot(env, "outbox").stdout
    as_json = json.loads(run_bot(env, "outbox", "--json").stdout)

    # Then each group's line shows what it owes and how long the oldest of it has waited
    assert "owed age" in text.splitlines()[4]
    rows = {line.split()[0]: line.split() for line in text.splitlines()[5:7]}
    assert rows["http"][1:6] == ["1", "2", "1", "1", "0"]  # consumers owed pending unread replay
    assert rows["audit"][1:6] == ["0", "3", "0", "3", "0"]
    assert 59 <= float(rows["http"][6].rstrip("s")) < 70
    assert 119 <= float(rows["audit"][6].rstrip("s")) < 130
    groups = {g["group"]: g for g in as_json["groups"]}
    assert 59 <= groups["http"]["oldest_owed_age_s"] < 70
