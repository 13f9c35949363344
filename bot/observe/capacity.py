"""Metric families of what can fill up and fall behind: Redis memory, the backlog of the queues
this worker consumes, and what each outbox sink still owes (how many reports, since when).
Built from values the collector (bot/observe/metrics.py) read at scrape time; alerting rules on
them are in deploy/prometheus/alerts.yml, explained in docs/alerts.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from bot.observe.backlog import QueueBacklog


def redis_memory_metrics(info: Mapping[str, Any]) -> Iterator[Any]:
    """Redis's `used_memory` and `maxmemory` (INFO memory; max 0 = no limit). Nothing when
    INFO could not be read (a user without the command, a Redis that does not offer it)."""
    if "used_memory" not in info:
        return
    yield GaugeMetricFamily(
        "bot_redis_memory_used_bytes",
        "Bytes Redis has allocated (INFO memory used_memory).",
        value=int(info["used_memory"]),
    )
    yield GaugeMetricFamily(
        "bot_redis_memory_max_bytes",
        "Redis's maxmemory in bytes; 0 means no limit.",
        value=int(info.get("maxmemory") or 0),
    )


def queue_metrics(backlog: list[QueueBacklog]) -> Iterator[Any]:
    """Per queue this worker consumes: messages waiting, and how long the oldest has waited
    (no sample while the waiting messages carry no `bot_sent_at`: bot/observe/backlog.py)."""
    length = GaugeMetricFamily(
        "bot_queue_length", "Messages waiting in a queue, all priorities.", labels=["queue"]
    )
    age = GaugeMetricFamily(
        "bot_queue_oldest_age_seconds",
        "Seconds since the oldest next-to-run message of a queue was published; 0 when empty.",
        labels=["queue"],
    )
    for queue in backlog:
        length.add_metric([queue.queue], queue.length)
        if queue.oldest_age_s is not None:
            age.add_metric([queue.queue], queue.oldest_age_s)
    yield length
    yield age


def outbox_owed_metrics(groups: list[dict[str, Any]]) -> Iterator[Any]:
    """Per consumer group of the outbox (a sink): reports it owes (delivered but not acked,
    plus not yet read) and the age of the oldest of them (0 when it owes none); the groups as
    `bot.outbox.stream.Outbox.owed_by_group` gives them."""
    owed = GaugeMetricFamily(
        "bot_outbox_pending", "Reports a sink still owes (pending + unread).", labels=["sink"]
    )
    age = GaugeMetricFamily(
        "bot_outbox_owed_age_seconds",
        "Age of the oldest report a sink still owes (pending or unread); 0 when none.",
        labels=["sink"],
    )
    for group in groups:
        sink = str(group["group"])
        owed.add_metric([sink], int(group.get("owed") or 0))
        age.add_metric([sink], float(group.get("oldest_owed_age_s") or 0.0))
    yield owed
    yield age


def outbox_behind_metric(groups: list[dict[str, Any]], behind: set[str]) -> Any:
    """Per consumer group (sink): 1 when the last outbox retention pass found it owing a report
    past BOT_OUTBOX_MAX_AGE or BOT_OUTBOX_MAX_LEN (`bot:outbox:behind`, bot/outbox/retention.py;
    what it owes is kept, so it holds the outbox past its bounds), else 0."""
    late = GaugeMetricFamily(
        "bot_outbox_group_behind",
        "1 when a sink owes reports past the outbox retention bounds.",
        labels=["sink"],
    )
    for group in groups:
        sink = str(group["group"])
        late.add_metric([sink], 1 if sink in behind else 0)
    return late
