"""Putting a recovered job's message back on the broker: kombu's side of recovery.

Observed in kombu 5.7's Redis transport (pinned by tests/integration/test_kombu_layout.py):
a delivered, unacked message sits in hash `unacked` (delivery tag -> [payload, exchange,
routing_key]) and zset `unacked_index` (tag -> delivery time, seconds); `QoS.restore_by_tag`
moves one entry back onto its queue in one WATCH/MULTI transaction. Publishers LPUSH and
consumers BRPOP, so the end a consumer takes next is the right one: `leftmost=False` (RPUSH)
puts the message at the head of its queue, `leftmost=True` (LPUSH) at its tail.

`BrokerRequeue` owns one broker connection (not the worker's consumer connection, so it can
be used from any thread of the worker's main process) and goes through kombu's own client,
which honours `global_keyprefix`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from bot.jobs.ports import AppPort
from bot.store.inbox import inbox_key, prefixed, registry_key, return_inboxes

if TYPE_CHECKING:
    from kombu import Connection

logger = logging.getLogger(__name__)


class Requeue(Protocol):
    """What the reaper needs from the broker (a fake in unit tests)."""

    def restore(self, tag: str) -> bool:
        """Put the unacked message `tag` back at the head of its queue; False if it is gone."""

    def republish(self, job_id: str, message: dict[str, Any]) -> None:
        """Publish the job again from its stored message (same task id)."""

    def stale_tags(self, older_than_s: float) -> list[str]:
        """Tags in `unacked_index` whose score is older than `older_than_s` seconds."""

    def return_inboxes(self, instance_id: str) -> int:
        """Put back what the dead instance's inboxes hold (bot/store/inbox.py); how many."""

    def reset(self) -> None:
        """Drop the broker connection after an error; the next call reconnects."""


class BrokerRequeue:
    """`Requeue` on the app's broker, through kombu's Redis channel."""

    def __init__(self, app: AppPort) -> None:
        self.app = app
        self._connection: Connection | None = None

    def _channel(self) -> Any:
        if self._connection is None:
            self._connection = self.app.connection_for_write()
        return self._connection.default_channel

    def restore(self, tag: str) -> bool:
        """kombu's `QoS.restore_by_tag`, step for step (one WATCH/MULTI transaction on the
        unacked hash), except that it tells whether there was anything to put back: kombu's
        returns nothing, and an entry acked between a separate check and its transaction would
        be counted as restored while nothing was pushed, and the job left with no message."""
        channel = self._channel()
        found = False

        def put_back(pipe: Any) -> None:
            nonlocal found
            raw = pipe.hget(channel.unacked_key, tag)
            pipe.multi()
            channel.qos._remove_from_indices(tag, pipe)
            found = raw is not None
            if found:
                payload, exchange, routing_key = loads(bytes_to_str(raw))
                # leftmost=False: RPUSH, the end BRPOP takes next (the head of the queue).
                channel._do_restore_message(payload, exchange, routing_key, pipe, False)

        with channel.conn_or_acquire() as client:
            client.transaction(put_back, channel.unacked_key)
        return found

    def republish(self, job_id: str, message: dict[str, Any]) -> None:
        self.app.send_task(
            message["task"],
            args=message.get("args") or (),
            kwargs=message.get("kwargs") or {},
            task_id=job_id,
            queue=message.get("queue") or self.app.settings.default_queue,
            # a pipeline stage's chain, chord and headers (bot.jobs.run.canvas_options)
            **(message.get("options") or {}),
        )

    def stale_tags(self, older_than_s: float) -> list[str]:
        channel = self._channel()
        ceiling = time.time() - older_than_s  # kombu scores are time.time() seconds
        with channel.conn_or_acquire() as client:
            tags = client.zrange(channel.unacked_index_key, "-inf", ceiling, byscore=True)
        return [bytes_to_str(tag) for tag in tags]

    def return_inboxes(self, instance_id: str) -> int:
        """Messages the instance had taken off a queue and not yet recorded as unacked when it
        died (or when a reply was lost): back onto the lists they came from, then its set of
        inboxes goes. Through kombu's client (global_keyprefix on SMEMBERS and DEL)."""
        channel = self._channel()
        prefix = self.app.settings.key_prefix
        registry = registry_key(prefix, instance_id)
        with channel.conn_or_acquire() as client:
            sources = sorted(bytes_to_str(s) for s in client.smembers(registry))
            pairs = [
                (
                    prefixed(channel.global_keyprefix, inbox_key(prefix, instance_id, source)),
                    prefixed(channel.global_keyprefix, source),
                )
                for source in sources
            ]
            moved = return_inboxes(client, pairs)
            client.delete(registry)
        return moved

    def reset(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # a broken connection may fail to close; it is dropped anyway
                logger.debug("closing the reaper's broker connection failed", exc_info=True)
