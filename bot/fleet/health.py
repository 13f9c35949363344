"""Health verdicts for `bot health` (and container probes), from the worker records.

Local: the worker(s) recorded in `BOT_STATE_DIR/identity.json` (one per node name started with
that state dir; `node` picks one) must each have a live lease and a READY/PROCESSING record.
Fleet: at least one worker in `bot:workers` is alive and READY/PROCESSING.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.fleet.identity import local_identities
from bot.fleet.lifecycle import HEALTHY
from bot.fleet.records import WorkerRecords, WorkerView


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    lines: list[str]


def describe(view: WorkerView | None, node: str, instance_id: str) -> str:
    if view is None:
        return f"{node} ({instance_id}): not registered"
    reason = view.record.get("state_reason") if view.state == "DEGRADED" else None
    return f"{node} ({instance_id}): {view.state}" + (f" ({reason})" if reason else "")


def is_healthy(view: WorkerView | None) -> bool:
    return view is not None and view.alive and view.state in HEALTHY


def local_health(registry: WorkerRecords, state_dir: Path, node: str | None = None) -> Verdict:
    """Healthy when every local worker (or the one named `node`) is READY/PROCESSING."""
    identities = local_identities(state_dir)
    if node is not None:
        identities = {k: v for k, v in identities.items() if k == node}
    if not identities:
        where = f" for node {node}" if node else ""
        return Verdict(False, [f"no local worker identity{where} in {state_dir}"])
    lines, healthy = [], True
    for name, identity in sorted(identities.items()):
        instance_id = str(identity.get("instance_id", ""))
        view = registry.worker(instance_id) if instance_id else None
        healthy = healthy and is_healthy(view)
        lines.append(describe(view, name, instance_id))
    return Verdict(healthy, lines)


def fleet_health(registry: WorkerRecords) -> Verdict:
    """Healthy when at least one worker of the fleet is READY/PROCESSING."""
    views = registry.fleet()
    good = [view for view in views if is_healthy(view)]
    return Verdict(bool(good), [f"{len(good)} of {len(views)} worker(s) READY/PROCESSING"])
