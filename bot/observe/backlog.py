"""The backlog of the queues a worker consumes: how many messages wait in each, and how long the
one waiting longest has waited. Read at scrape time; no prometheus_client here (bot's app
imports this module for `stamp_sent_at`, and `import bot` must not pay for prometheus_client).

**Where messages wait.** kombu's Redis transport keeps a queue as lists: the queue's own name
for priority 0 and `<queue>\\x06\\x16<step>` for each other priority step (kombu's `_q_for_pri`;
steps 0, 3, 6, 9 unless the transport option `priority_steps` says otherwise), each behind the
transport option `global_keyprefix` when set. A publisher LPUSHes; a worker's BRPOP takes the
tail of the first non-empty list. So a queue's length is the sum of its lists' LLEN, and the
message each list gives out next is `LINDEX <list> -1`.

**How old it is.** Celery's task messages carry no publish time, so bot's app stamps one: the
header `bot_sent_at` (epoch seconds, a float) on every task it publishes (`stamp_sent_at`,
called from the `before_task_publish` signal that bot/application.py connects). A queue's
oldest age is the largest age among its lists' next messages. A message without the header
(published by a process that does not load bot's app, such as a plain Celery client in another
service) or with an unusable one contributes no age: a queue whose next messages all lack it
has a length but no age. A message put back by the reaper or kombu's restore keeps its header,
so its age counts from its first publish. The messages are read undecoded and parsed here: a
queue item that is not UTF-8 or not JSON (anyone with write access to Redis can push one) gives
no age, never a failed scrape.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import NEVER_DECODE

#: Message header bot's app stamps on every task it publishes: the time, in epoch seconds.
SENT_AT_HEADER = "bot_sent_at"
#: kombu's Redis transport: its default priority steps and the separator of a priority list.
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_PRIORITY_SEP = "\x06\x16"
#: At most this many queues are read per scrape (a worker consumes a handful).
MAX_QUEUES = 64
#: Epoch seconds: a `bot_sent_at` before 2000-01-01 is no real publish time.
_EARLIEST_SENT_S = 946_684_800.0


@dataclass(frozen=True)
class QueueBacklog:
    """One queue: messages waiting (all priorities), and the age of the one waiting longest,
    None when messages wait but none of the next ones carries a usable `bot_sent_at`."""

    queue: str
    length: int
    oldest_age_s: float | None


def stamp_sent_at(headers: dict[str, Any]) -> None:
    """Stamp a message being published with the time: each publish (a retry's too) its own."""
    headers[SENT_AT_HEADER] = time.time()


def priority_lists(queue: str, transport_options: Mapping[str, Any]) -> list[str]:
    """The Redis lists of `queue`, one per priority step, named as kombu names them."""
    steps = sorted(set(transport_options.get("priority_steps") or KOMBU_PRIORITY_STEPS))
    sep = str(transport_options.get("sep") or KOMBU_PRIORITY_SEP)
    prefix = str(transport_options.get("global_keyprefix") or "")
    return [f"{prefix}{queue}{sep}{step}" if step else f"{prefix}{queue}" for step in steps]


def read_backlog(
    client: redis.Redis,
    queues: Iterable[str],
    transport_options: Mapping[str, Any],
    now_s: float | None = None,
) -> list[QueueBacklog]:
    """LLEN and the next message of each priority list of each queue, in one pipeline."""
    now = time.time() if now_s is None else now_s
    names = sorted(set(queues))[:MAX_QUEUES]
    lists = {queue: priority_lists(queue, transport_options) for queue in names}
    pipe = client.pipeline(transaction=False)
    for keys in lists.values():
        for key in keys:
            pipe.llen(key)
            pipe.execute_command("LINDEX", key, -1, **{NEVER_DECODE: []})
    replies = iter(pipe.execute())
    backlog = []
    for queue, keys in lists.items():
        per_list = [(next(replies), next(replies)) for _ in keys]
        backlog.append(_backlog(queue, per_list, now))
    return backlog


def _backlog(queue: str, per_list: list[tuple[Any, Any]], now: float) -> QueueBacklog:
    length = sum(int(size) for size, _ in per_list)
    ages = [age for _, raw in per_list if (age := message_age_s(raw, now)) is not None]
    oldest = max(ages) if ages else (0.0 if length == 0 else None)
    return QueueBacklog(queue, length, oldest)


def message_age_s(raw: bytes | None, now_s: float) -> float | None:
    """Seconds since a raw kombu message was published, from its `bot_sent_at` header; None
    when there is no message, it is not a JSON object, or the header is missing or no time."""
    if not raw:
        return None
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested past the limit
        return None
    headers = message.get("headers") if isinstance(message, dict) else None
    sent = headers.get(SENT_AT_HEADER) if isinstance(headers, dict) else None
    if isinstance(sent, bool) or not isinstance(sent, int | float):
        return None
    if not math.isfinite(sent) or sent < _EARLIEST_SENT_S:
        return None
    return max(0.0, now_s - float(sent))  # a publisher's clock a little ahead: 0, not negative
