"""Worker records in Redis: the record, lease, in-flight set, `bot:workers`, `bot:ops`.

Writes are single Lua scripts (`bot/store/lua/register.lua`, `heartbeat.lua`, `deregister.lua`), so
each is atomic and costs one round trip. Reads (`fleet()`) are one pipeline. The worker side
(the fleet step) writes; the CLI (`bot fleet`, `bot health`) reads.

A heartbeat also renews kombu's `unacked_index` score of every delivery tag the worker holds,
in the same script call, so a live worker's messages never age into a visibility-timeout
redelivery (DESIGN "Job lifecycle and leases", renewal).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from bot.base.clock import now_ms
from bot.ops import REGISTRY
from bot.store import scripts
from bot.store.keys import KOMBU_UNACKED_INDEX, Keys, kombu_key


def op_schemas() -> dict[str, str]:
    """op name -> JSON Schema (text) of its payload, for `bot:ops`."""
    return {spec.name: json.dumps(spec.schema(), sort_keys=True) for spec in REGISTRY}


def _flatten(fields: Mapping[str, Any]) -> list[str]:
    flat: list[str] = []
    for name, value in fields.items():
        flat.append(name)
        flat.append(value if isinstance(value, str) else json.dumps(value, default=str))
    return flat


@dataclass(frozen=True)
class Beat:
    """What one heartbeat found: whether the record was there, whether the lease had lapsed
    (the worker was away longer than its TTL), how many held tags were renewed."""

    record_missing: bool
    lease_existed: bool = True
    tags_renewed: int = 0


class WorkerRecords:
    """WorkerRecords reads and writes for one key prefix on one Redis client."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.unacked_index = kombu_key(KOMBU_UNACKED_INDEX, dict(transport_options or {}))
        self._register = scripts.register(client, "register")
        self._heartbeat = scripts.register(client, "heartbeat")
        self._deregister = scripts.register(client, "deregister")

    # -- worker side -------------------------------------------------------------------------

    def register(
        self,
        instance_id: str,
        record: Mapping[str, Any],
        lease_ttl_ms: int,
        lease_value: str,
        ops: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the record, take the lease, list the worker, publish op schemas."""
        fields = _flatten(record)
        op_pairs = [item for pair in (ops or {}).items() for item in pair]
        self._register(
            keys=[*self._worker_keys(instance_id), self.keys.ops],
            args=[
                *(instance_id, now_ms(), lease_ttl_ms, lease_value, len(fields) // 2),
                *fields,
                *op_pairs,
            ],
        )

    def heartbeat(
        self,
        instance_id: str,
        fields: Mapping[str, Any],
        lease_ttl_ms: int,
        lease_value: str,
        tags: Sequence[str] = (),
    ) -> Beat:
        """Renew the lease, refresh the record's changing fields and the tags' index scores.
        One script call whatever `len(tags)`."""
        flat = _flatten(fields)
        reply = self._heartbeat(
            keys=[*self._worker_keys(instance_id), self.unacked_index],
            args=[
                *(instance_id, now_ms(), lease_ttl_ms, lease_value, repr(time.time())),
                len(flat) // 2,
                *flat,
                *tags,
            ],
        )
        if reply[0] == "missing":
            return Beat(record_missing=True)
        return Beat(False, bool(int(reply[1])), int(reply[2]))

    def deregister(self, instance_id: str) -> int:
        """Delete the record and lease (and the registry entry unless jobs are still in
        flight); the number of jobs left in flight."""
        return int(
            self._deregister(
                keys=[*self._worker_keys(instance_id), self.keys.inflight(instance_id)],
                args=[instance_id],
            )
        )

    def _worker_keys(self, instance_id: str) -> list[str]:
        return [self.keys.worker(instance_id), self.keys.lease(instance_id), self.keys.workers]

    # -- reader side -------------------------------------------------------------------------

    def fleet(self) -> list[WorkerView]:
        """Every worker listed in `bot:workers`, with its record and lease TTL (one pipeline
        after the ZRANGE)."""
        members: list[tuple[str, float]] = self.client.zrange(  # type: ignore[assignment]
            self.keys.workers, 0, -1, withscores=True
        )
        if not members:
            return []
        pipe = self.client.pipeline(transaction=False)
        for instance_id, _ in members:
            pipe.hgetall(self.keys.worker(instance_id))
            pipe.pttl(self.keys.lease(instance_id))
        replies = pipe.execute()
        return [
            WorkerView(instance_id, int(score), replies[2 * i], int(replies[2 * i + 1]))
            for i, (instance_id, score) in enumerate(members)
        ]

    def worker(self, instance_id: str) -> WorkerView | None:
        """One worker (listed or not); None when neither a record nor a lease exists."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.worker(instance_id))
        pipe.pttl(self.keys.lease(instance_id))
        pipe.zscore(self.keys.workers, instance_id)
        record, ttl, score = pipe.execute()
        if not record and int(ttl) < 0 and score is None:
            return None
        return WorkerView(instance_id, int(score or 0), record, int(ttl))


@dataclass(frozen=True)
class WorkerView:
    """A worker as the registry shows it. `state` folds in liveness: a record without a live
    lease is `DEAD`, a listed instance without a record is `GONE`."""

    instance_id: str
    listed_ms: int
    record: dict[str, str] = field(default_factory=dict)
    lease_ttl_ms: int = -2

    @property
    def alive(self) -> bool:
        return self.lease_ttl_ms > 0

    @property
    def state(self) -> str:
        if not self.record:
            return "GONE"
        if not self.alive:
            return "DEAD"
        return self.record.get("state", "?")

    def heartbeat_age_s(self, now: float | None = None) -> float | None:
        last = self.record.get("last_heartbeat") or (str(self.listed_ms) if self.listed_ms else "")
        if not last:
            return None
        return max(0.0, (now if now is not None else time.time()) - int(last) / 1000)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        age = self.heartbeat_age_s(now)
        return {
            "instance_id": self.instance_id,
            "state": self.state,
            "alive": self.alive,
            "lease_ttl_ms": max(self.lease_ttl_ms, 0),
            "heartbeat_age_s": None if age is None else round(age, 3),
            **{k: _maybe_json(v) for k, v in self.record.items() if k not in ("state",)},
            "recorded_state": self.record.get("state"),
        }


def _maybe_json(value: str) -> Any:
    if value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
