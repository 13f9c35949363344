"""The stream side of reports: `bot:outbox` read through Redis consumer groups, one per sink.

Every report is XADDed to `bot:outbox` by complete.lua, atomically with the job's final state.
Each sink reads it through its own consumer group (the built-in HTTP relay's group is `http`),
so every sink gets every report, and a consumer in a group gets an entry no other consumer of
that group gets. This module owns what a sink does with the stream:

- `ensure_group`, reading new and pending entries, `ack`;
- `claim_stale`: XAUTOCLAIM of a dead consumer's pending entries (its relay was killed);
- `dead_letter`: an entry refused `BOT_OUTBOX_MAX_DELIVERIES` times moves to `bot:outbox:dead`
  (one script: XADD dead + XACK; no XDEL, other groups may still owe it);
- `replay`: a dead entry goes back into delivery for the group that refused it, through that
  group's replay stream `bot:outbox:replay:{group}` (read by the same relay);
- `stats` and `trim` (age/length retention that never drops what any group still owes; run
  by the fleet's retention service, bot/outbox/retention.py, and by each relay).

Adding a sink in another service: create a group on the stream and read it like any Redis
stream consumer (`XGROUP CREATE bot:outbox billing 0 MKSTREAM`, then `XREADGROUP GROUP billing
<consumer> STREAMS bot:outbox >` and `XACK`), or in Python `Outbox(client, keys).ensure_group(
"billing")` and the methods below. Every group counts for trimming: a group that stops reading
keeps the stream from being trimmed past it, so delete a group you no longer use
(`XGROUP DESTROY bot:outbox billing`). Redis 7.0 notes: no XACKDEL / ACKED trimming (8.2+),
hence the MINID floor in outbox_trim.lua; and an XDEL'd id stays in a pending list (XCLAIM
and XAUTOCLAIM drop such ids from the list in 7.0; reads of history return it with nil fields).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from bot.store import scripts
from bot.store.keys import Keys
from config.settings import OUTBOX_MAX_AGE_S, OUTBOX_MAX_LEN

#: The built-in HTTP sink's consumer group.
HTTP_GROUP = "http"
#: At most this many entries are read per step when finding the length-based trim point.
TRIM_SCAN_MAX = 5_000
#: Steps of one `trim` call: at most TRIM_MAX_STEPS x TRIM_SCAN_MAX entries trimmed by length
#: per call (500,000: a pass a minute keeps up with ~8,000 reports/s).
TRIM_MAX_STEPS = 100


@dataclass(frozen=True)
class Entry:
    """One report read from a stream, with how many times it has been delivered."""

    stream: str
    id: str
    job_id: str
    report: str
    deliveries: int


@dataclass(frozen=True)
class PendingInfo:
    id: str
    consumer: str
    idle_ms: int
    deliveries: int


@dataclass(frozen=True)
class Trimmed:
    """What a trim did: how many entries went, its retention target (entries below it are
    older than the age bound or beyond the length bound), and whether a group's floor held
    the trim below that target (it owes an entry the bounds would drop)."""

    count: int
    target: tuple[int, int]
    held: bool


def id_ms(entry_id: str) -> int:
    """The millisecond time part of a stream id."""
    return int(entry_id.split("-", 1)[0])


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream id 'ms-seq' as a tuple that orders as Redis orders ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _pending_info(row: dict[str, Any]) -> PendingInfo:
    return PendingInfo(
        str(row["message_id"]),
        str(row["consumer"]),
        int(row["time_since_delivered"]),
        int(row["times_delivered"]),
    )


def _entry(stream: str, entry_id: str, fields: dict[str, str] | None, deliveries: int) -> Entry:
    fields = fields or {}
    return Entry(stream, entry_id, fields.get("job_id", ""), fields.get("report", ""), deliveries)


class Outbox:
    """Consumer-group operations on the outbox (and replay/dead streams) for one key prefix."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._dead = scripts.register(client, "outbox_dead")
        self._replay = scripts.register(client, "outbox_replay")
        self._trim = scripts.register(client, "outbox_trim")

    @property
    def stream(self) -> str:
        return self.keys.outbox

    def streams_of(self, group: str) -> tuple[str, str]:
        """The streams a group's relay reads: the outbox and the group's replay stream."""
        return (self.keys.outbox, self.keys.outbox_replay(group))

    # -- groups and reading -------------------------------------------------------------------

    def ensure_group(self, group: str, stream: str | None = None, start_id: str = "0") -> bool:
        """Create `group` on the stream (from `start_id`; '0' = everything still retained).
        False when it existed already."""
        try:
            self.client.xgroup_create(stream or self.stream, group, id=start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    def read_new(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int | None = None
    ) -> list[Entry]:
        """Entries never delivered to this group (they join `consumer`'s pending list)."""
        reply: Any = self.client.xreadgroup(group, consumer, {stream: ">"}, count, block_ms)
        if not reply:
            return []
        return [_entry(stream, eid, fields, 1) for eid, fields in reply[0][1]]

    def pending(
        self, stream: str, group: str, count: int, consumer: str | None = None
    ) -> list[PendingInfo]:
        """The group's (or one consumer's) pending entries, oldest first."""
        rows: Any = self.client.xpending_range(
            stream, group, "-", "+", count, consumername=consumer
        )
        return [_pending_info(row) for row in rows]

    def take(self, stream: str, group: str, consumer: str, info: PendingInfo) -> Entry | None:
        """Re-deliver one of the group's pending entries to `consumer` (XCLAIM: its delivery
        count goes up by one). None when the entry was deleted (7.0 drops it from the list)."""
        reply: Any = self.client.xclaim(stream, group, consumer, 0, [info.id])
        if not reply or not reply[0][1]:
            return None
        eid, fields = reply[0]
        return _entry(stream, eid, fields, info.deliveries + 1)

    def touch(self, stream: str, group: str, consumer: str, ids: list[str]) -> None:
        """Reset the idle time of entries this consumer holds (XCLAIM JUSTID: the delivery
        count is unchanged), so a live relay waiting out a backoff is not claimed from."""
        if ids:
            self.client.xclaim(stream, group, consumer, 0, list[Any](ids), justid=True)

    def claim_stale(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Entry]:
        """XAUTOCLAIM: take pending entries idle longer than `min_idle_ms` (their consumer is
        gone). Deleted ids are dropped from the pending list by Redis 7.0 and not returned."""
        claimed: list[Entry] = []
        cursor = "0-0"
        while len(claimed) < count:
            reply: Any = self.client.xautoclaim(
                stream, group, consumer, min_idle_ms, cursor, count=count - len(claimed)
            )
            cursor, entries = reply[0], reply[1]
            claimed.extend(_entry(stream, eid, f, 0) for eid, f in entries if f)
            if cursor == "0-0":
                break
        return self._with_deliveries(stream, group, claimed)

    def _with_deliveries(self, stream: str, group: str, entries: list[Entry]) -> list[Entry]:
        """The claimed entries with their delivery counts (one pipeline of XPENDING)."""
        if not entries:
            return []
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.xpending_range(stream, group, entry.id, entry.id, 1)
        out = []
        for entry, rows in zip(entries, pipe.execute(), strict=True):
            deliveries = _pending_info(rows[0]).deliveries if rows else 1
            out.append(Entry(stream, entry.id, entry.job_id, entry.report, deliveries))
        return out

    def pending_of(self, stream: str, group: str, entry_id: str) -> PendingInfo | None:
        rows: Any = self.client.xpending_range(stream, group, entry_id, entry_id, 1)
        return _pending_info(rows[0]) if rows else None

    def ack(self, stream: str, group: str, *ids: str) -> int:
        return int(self.client.xack(stream, group, *ids)) if ids else 0

    def prune_consumers(self, stream: str, group: str, keep: str, min_idle_ms: int) -> int:
        """Delete consumers with nothing pending, idle longer than `min_idle_ms` (relays that
        died after their entries were claimed); each start of a relay is a new consumer."""
        idle = [
            info["name"]
            for info in self.client.xinfo_consumers(stream, group)
            if info["name"] != keep and info["pending"] == 0 and info["idle"] > min_idle_ms
        ]
        if idle:
            pipe = self.client.pipeline(transaction=False)
            for name in idle:
                pipe.xgroup_delconsumer(stream, group, name)
            pipe.execute()
        return len(idle)

    # -- dead letters ---------------------------------------------------------------------------

    def dead_letter(self, entry: Entry, group: str, reason: str) -> str:
        """Move a pending entry to `bot:outbox:dead` (XADD + XACK in one script). Returns the
        dead id, 'gone' (entry deleted; acked) or 'acked' (the group no longer owes it)."""
        return str(
            self._dead(
                keys=[entry.stream, self.keys.outbox_dead],
                args=[group, entry.id, entry.deliveries, reason[:500]],
            )
        )

    def dead(self, count: int = 100, after: str = "-") -> list[dict[str, str]]:
        """Dead entries, oldest first, each with its `id`."""
        rows: Any = self.client.xrange(self.keys.outbox_dead, after, "+", count)
        return [{"id": eid, **fields} for eid, fields in rows]

    def replay(self, dead_id: str) -> str | None:
        """Put one dead entry back into delivery for its group; None when it is not there."""
        rows: Any = self.client.xrange(self.keys.outbox_dead, dead_id, dead_id)
        if not rows:
            return None
        group = rows[0][1].get("group", HTTP_GROUP)
        reply = self._replay(
            keys=[self.keys.outbox_dead, self.keys.outbox_replay(group)], args=[dead_id, group]
        )
        return None if reply == "missing" else str(reply)

    def replay_all(self, batch: int = 500) -> int:
        """Replay every dead entry; returns how many were put back."""
        replayed = 0
        while rows := self.dead(batch):
            replayed += sum(1 for row in rows if self.replay(row["id"]) is not None)
        return replayed

    # -- retention and stats --------------------------------------------------------------------

    def trim(
        self,
        stream: str | None = None,
        *,
        max_age_s: float = OUTBOX_MAX_AGE_S,
        max_len: int = OUTBOX_MAX_LEN,
        now_ms: int | None = None,
    ) -> int:
        """Trim to the age/length target, never past an entry some group still owes; the
        number of entries trimmed."""
        return self.trim_to(
            stream or self.stream, max_age_s=max_age_s, max_len=max_len, now_ms=now_ms
        ).count

    def trim_to(
        self, stream: str, *, max_age_s: float, max_len: int, now_ms: int | None = None
    ) -> Trimmed:
        """Trim in steps (outbox_trim.lua; each step finds the length target in at most
        TRIM_SCAN_MAX entries) until the target is reached, a group's floor holds the trim,
        or TRIM_MAX_STEPS steps were made."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        count, target, held = 0, (0, 0), False
        for _ in range(TRIM_MAX_STEPS):
            target, exact = self._trim_target(stream, max_age_s, max_len, now)
            reply: Any = self._trim(keys=[stream], args=[f"{target[0]}-{target[1]}"])
            count += int(reply[0])
            held = parse_id(str(reply[1])) < target
            if exact or held or not int(reply[0]):
                break
        return Trimmed(count, target, held)

    def _trim_target(
        self, stream: str, max_age_s: float, max_len: int, now: int
    ) -> tuple[tuple[int, int], bool]:
        """The MINID the bounds ask for, and whether it is exact (the length target was found
        within TRIM_SCAN_MAX entries; beyond, it is where the next step goes on from)."""
        target = max(now - int(max_age_s * 1000), 0), 0
        excess = int(self.client.xlen(stream)) - max_len
        if excess <= 0:
            return target, True
        rows: Any = self.client.xrange(stream, "-", "+", min(excess, TRIM_SCAN_MAX))
        if not rows:
            return target, True
        last_ms, last_seq = parse_id(rows[-1][0])
        return max(target, (last_ms, last_seq + 1)), excess <= TRIM_SCAN_MAX

    def stats(self, now_ms: int | None = None) -> dict[str, Any]:
        """Length, per-group pending/unread/oldest owed age, dead count."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        stream = self.stream
        groups: list[dict[str, Any]] = []
        length = int(self.client.xlen(stream))
        if length or self.client.exists(stream):
            groups = [self._group_stats(stream, g, now) for g in self.client.xinfo_groups(stream)]
        return {
            "stream": stream,
            "length": length,
            "groups": groups,
            "oldest_pending_age_s": max((g["oldest_owed_age_s"] for g in groups), default=0.0),
            "dead": int(self.client.xlen(self.keys.outbox_dead)),
        }

    def owed_by_group(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """What each consumer group (sink) still owes: pending, unread, owed and the age of the
        oldest entry among them; [] when there is no stream. XINFO GROUPS, then an XPENDING
        summary or an XRANGE COUNT 1 per group that owes anything (what /metrics reads)."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        try:
            infos: Any = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:  # no outbox stream yet
            return []
        return [self._group_owed(self.stream, info, now) for info in infos]

    def _group_stats(self, stream: str, info: dict[str, Any], now: int) -> dict[str, Any]:
        owed = self._group_owed(stream, info, now)
        return {**owed, "replay_owed": self._replay_owed(owed["group"])}

    def _group_owed(self, stream: str, info: dict[str, Any], now: int) -> dict[str, Any]:
        name, last = info["name"], info["last-delivered-id"]
        unread = info.get("lag")
        if unread is None:  # unknown after deletions: count what is after last-delivered
            after: Any = self.client.xrange(stream, f"({last}", "+", TRIM_SCAN_MAX)
            unread = len(after)
        oldest: str | None = None
        if info["pending"]:
            oldest = self.client.xpending(stream, name)["min"]
        elif unread:
            first: Any = self.client.xrange(stream, f"({last}", "+", 1)
            oldest = first[0][0] if first else None
        return {
            "group": name,
            "consumers": int(info["consumers"]),
            "pending": int(info["pending"]),
            "unread": int(unread),
            "owed": int(info["pending"]) + int(unread),
            "oldest_owed_age_s": round(max(0, now - id_ms(oldest)) / 1000, 3) if oldest else 0.0,
            "oldest_owed_id": oldest,
            "last_delivered_id": last,
        }

    def _replay_owed(self, group: str) -> int:
        replay_key = self.keys.outbox_replay(group)
        if not self.client.exists(replay_key):
            return 0
        for info in self.client.xinfo_groups(replay_key):
            if info["name"] == group:
                return int(info["pending"]) + int(info.get("lag") or 0)
        return 0
