"""How a worker takes a message off its queue without a window in which Redis forgets it.

kombu reads a queue with BRPOP: Redis removes the message and sends it back in the reply.
Observed with Redis 7.0 (pinned by tests/integration/test_inbox.py): a redis-server stopped with
SIGTERM (a restart, `systemctl stop`) executes a BRPOP that arrived in its last event-loop
round, writes the pop to its AOF, and exits without sending the reply. The message is then in
no queue and no unacked hash, and nothing will ever deliver it (the job never runs, no report).
The same holds for a consumer killed between the reply and kombu's unacked write.

So in a fleet worker (one whose fleet step set an instance id) the channel takes a message by
*moving* it, in one Redis step, from its queue list into the worker's inbox for that list
(bot/store/inbox.py), and removes it from the inbox in the same MULTI that records it as
unacked (`QoS.append`, bot/broker/transport.py). Whatever goes wrong in between, the message is
in Redis: the worker returns its inboxes to their lists before it consumes again (after a
reconnect) and the reaper returns a dead instance's. A message returned that had reached the
worker after all runs once: a job's acquire is fenced and a second delivery is acked as a
duplicate.

A take is `inbox_pop.lua` (LMOVE over every list the channel reads, in kombu's priority and
fair-cycle order; never blocks). When it finds nothing, the next read waits with BLMOVE, which
blocks on one list only: the first of kombu's cycle (the queue's base list). With several
lists (priority sub-lists, several queues) the wait is cut to `MULTI_LIST_WAIT_S`, so a message
on another list waits that long at most on an idle worker (the cycle rotates which list is
watched); one list waits kombu's `brpop_timeout`. Outside a fleet worker (clients, Flower, the
reaper's requeue channel, a plain Celery worker of this app) kombu's BRPOP is used unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from bot.runtime.process import RUNTIME
from bot.store.inbox import inbox_key, pop_args, prefixed, registry_key, return_inboxes

logger = logging.getLogger(__name__)

#: Seconds an idle worker that reads several lists blocks on one of them before looking at
#: all of them again.
MULTI_LIST_WAIT_S = 0.25
#: What kombu raises reading a queue item that is not one of its messages.
UNREADABLE_ITEM_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RecursionError)
#: Transport option naming bot's key prefix (config/celery_config.py sets it).
KEY_PREFIX_OPTION = "bot_key_prefix"


@dataclass(frozen=True)
class Sent:
    """The read in flight on the channel's consuming connection."""

    command: str  # "EVAL" (a take) or "BLMOVE" (a wait)
    sources: tuple[str, ...]  # the lists it reads, as kombu names them (unprefixed)


@dataclass(frozen=True)
class Reads:
    """The commands that read one order of the channel's lists."""

    sources: tuple[str, ...]  # the lists, as kombu names them (unprefixed)
    take_args: list[Any]  # EVAL inbox_pop.lua over all of them
    wait_args: list[Any]  # BLMOVE from the first, without its timeout


@dataclass(frozen=True)
class Taken:
    """A message moved into an inbox and not yet recorded as unacked."""

    inbox: str  # as Redis names it
    raw: bytes


class InboxReads(kombu_redis.Channel):
    """kombu's Redis channel, reading through inboxes in a fleet worker (module docstring)."""

    _inbox_sent: Sent | None = None
    _inbox_idle = False
    _inbox_reads: dict[tuple[str, ...], Reads] | None = None
    #: Set while a taken message is being delivered; `QoS.append` records and clears it.
    inbox_taken: Taken | None = None

    # -- names ---------------------------------------------------------------------------------

    def _inbox_owner(self) -> str | None:
        return RUNTIME.instance_id

    def _bot_prefix(self) -> str:
        options = getattr(self.connection.client, "transport_options", None) or {}
        return str(options.get(KEY_PREFIX_OPTION, "bot"))

    def _p(self, key: str) -> str:
        return prefixed(self.global_keyprefix, key)

    def _inbox(self, owner: str, source: str) -> str:
        return self._p(inbox_key(self._bot_prefix(), owner, source))

    def _sources(self, queues: list[str]) -> list[str]:
        return [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]

    # -- consuming -----------------------------------------------------------------------------

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        """kombu's, after returning what this worker's inboxes of `queue` hold (a take whose
        reply was lost, or whose unacked write failed, before a reconnect)."""
        owner = self._inbox_owner()
        if owner is not None and queue not in self._fanout_queues:
            self._return_own(owner, self._sources([queue]))
        return super().basic_consume(queue, *args, **kwargs)

    def _return_own(self, owner: str, sources: list[str]) -> None:
        registry = registry_key(self._bot_prefix(), owner)
        with self.conn_or_acquire() as client:
            # kombu's client prefixes SADD's key itself (global_keyprefix)
            client.sadd(registry, *sources)
            pairs = [(self._inbox(owner, source), self._p(source)) for source in sources]
            moved = return_inboxes(client, pairs)
        if moved:
            logger.warning("returned %d message(s) from this worker's inbox to their queue", moved)

    def _brpop_start(self, timeout: Any = None) -> None:
        owner = self._inbox_owner()
        if owner is None:
            return super()._brpop_start(timeout)
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        reads = self._reads(owner, tuple(queues))
        if self._inbox_idle:
            wait = (timeout if timeout is not None else self.brpop_timeout) or 0
            if len(reads.sources) > 1:
                wait = min(wait, MULTI_LIST_WAIT_S) if wait else MULTI_LIST_WAIT_S
            args: list[Any] = [*reads.wait_args, wait]
            self._inbox_sent = Sent("BLMOVE", reads.sources[:1])
        else:
            args = reads.take_args
            self._inbox_sent = Sent("EVAL", reads.sources)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu's None default
        self.client.connection.send_command(*args)
        return None

    def _reads(self, owner: str, queues: tuple[str, ...]) -> Reads:
        """The take and wait commands for `queues` in this order (one per rotation of kombu's
        fair cycle), built once: they are sent for every message."""
        if self._inbox_reads is None:
            self._inbox_reads = {}
        reads = self._inbox_reads.get(queues)
        if reads is None:
            sources = self._sources(list(queues))
            inboxes = [self._inbox(owner, source) for source in sources]
            listed = [self._p(source) for source in sources]
            reads = Reads(
                tuple(sources),
                pop_args(listed, inboxes),
                ["BLMOVE", listed[0], inboxes[0], "RIGHT", "LEFT"],
            )
            self._inbox_reads[queues] = reads
        return reads

    def _brpop_read(self, **options: Any) -> Any:
        sent, self._inbox_sent = self._inbox_sent, None
        if sent is None:
            return super()._brpop_read(**options)
        try:
            reply = self._read_reply(sent, **options)
            if not reply:
                # a take that found nothing waits next; a wait that timed out looks at every
                # list again (it watched only the first of them)
                self._inbox_idle = sent.command == "EVAL"
                raise Empty()
            self._inbox_idle = False
            source, raw = self._taken(sent, reply)
            self._deliver_taken(source, raw)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own reset
            self._flush_brpop_reauth()

    def _read_reply(self, sent: Sent, **options: Any) -> Any:
        connection = self.client.connection
        try:
            return self.client.parse_response(connection, sent.command, **options)
        except self.connection_errors:
            # as kombu does for BRPOP: the next round reconnects
            connection.disconnect()
            raise

    @staticmethod
    def _taken(sent: Sent, reply: Any) -> tuple[str, bytes]:
        if sent.command == "BLMOVE":
            return sent.sources[0], reply
        index, raw = reply
        return sent.sources[int(index) - 1], raw

    def _deliver_taken(self, source: str, raw: bytes) -> None:
        owner = self._inbox_owner() or ""
        taken = Taken(self._inbox(owner, source), raw)
        queue = source.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        self.inbox_taken = taken
        try:
            self.connection._deliver(loads(bytes_to_str(raw)), queue)
        except UNREADABLE_ITEM_ERRORS:
            # not a kombu message (transport.Channel._brpop_read logs and drops it): nothing
            # will ever read it, so it must not go back to the queue with the inbox either
            self._drop_taken(taken)
            raise
        finally:
            self.inbox_taken = None

    def _drop_taken(self, taken: Taken) -> None:
        with self.conn_or_acquire() as client:
            client.execute_command("LREM", taken.inbox, 1, taken.raw)
