"""bot's kombu transport: kombu's Redis transport without the window in which it drops a message.

Observed in kombu 5.7 (pinned by tests/integration/test_transport.py): a consumer takes a
message off its queue with BRPOP, then records it as unacked (ZADD `unacked_index` + HSET
`unacked`) in a second round trip. When Redis goes away between the two (a restart, a
failover, a network cut), that write raises, the message is in no queue and no unacked hash,
and kombu forgets it: Celery never sees it and nothing will ever deliver it again.

In a fleet worker the window is closed in Redis itself: the channel moves each message into
the worker's inbox list in the step that takes it, and `QoS.append` records it as unacked and
removes it from the inbox in one MULTI (bot/broker/inbox.py, which also covers a BRPOP reply
that a stopping Redis never sends, and a worker killed between the two steps).

Elsewhere (a channel with no fleet instance id: kombu's BRPOP), `QoS.append` keeps such a
message in this process's memory ("stranded") and re-raises, so Celery reconnects exactly as
before; every channel this process opens afterwards first puts the stranded messages back at
the head of their queue, with kombu's own restore (RPUSH, the end BRPOP takes next;
`redelivered` set). Should the unacked write have reached Redis after all, the message now
exists twice: harmless, a job's acquire is fenced and the second delivery is acked without
running (bot/store/lua/acquire.lua). That path does not cover the process dying inside the
window, or exiting while Redis stays unreachable (the stranded messages are logged at exit).

A cost, not a fault: kombu builds a new `redis.Redis` for every publish, ack and restore
(copying its ~200 response callbacks each time: a sixth of a producer's CPU per job in
docs/profiles/producer.txt); `Channel.conn_or_acquire` here reuses one per channel and pool.

A second, smaller repair: restoring unacked messages on a channel whose transport was
already detached crashed the worker (see `QoS.restore_unacked_once`). A third: an item in a
queue list that is not a kombu message at all (anything written there with a raw LPUSH) made
kombu raise while reading it, which stopped the worker; it is dropped with a log line
(`Channel._brpop_read`).

Under Sentinel (`sentinel://` URLs) the same repairs hold: `SentinelTransport` here is kombu's
`SentinelTransport` with a channel that is both bot's `Channel` and kombu's `SentinelChannel`
(whose connection pools ask the sentinels for the master on every new connection, so a
reconnect after a failover reaches the promoted replica; kombu reads `master_name` from the
transport options, config/celery_config.py sets it from BOT_REDIS_SENTINEL_MASTER).

`install()` (called by `bot.application.create_app`) makes kombu resolve `redis://`,
`rediss://` and `sentinel://` to these transports in the process, through kombu's transport
alias table. Not Celery's `broker_transport` setting: that would also rename the URL scheme
kombu reports (`as_uri()`), and Flower picks its broker client (queue lengths) by that scheme.
"""

from __future__ import annotations

import atexit
import copy
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps
from redis._parsers import _RESP2Parser

from bot.broker.inbox import UNREADABLE_ITEM_ERRORS, InboxReads, Taken

logger = logging.getLogger(__name__)

#: URL scheme -> bot's transport for it, as kombu names transports (kombu's own otherwise).
TRANSPORTS = {
    "redis": "bot.broker.transport:Transport",
    "rediss": "bot.broker.transport:Transport",
    "sentinel": "bot.broker.transport:SentinelTransport",
}
#: bot's Redis transport (redis://, rediss://).
TRANSPORT = TRANSPORTS["redis"]


class StrandedMessages:
    """Messages this process took off a queue but could not record as unacked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[dict[str, Any], str, str]] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def keep(self, payload: dict[str, Any], exchange: str, routing_key: str) -> None:
        with self._lock:
            self._messages.append((copy.deepcopy(payload), exchange, routing_key))

    def job_ids(self) -> list[str]:
        with self._lock:
            return [str(p.get("headers", {}).get("id", "?")) for p, _, _ in self._messages]

    def put_back(self, channel: Any) -> int:
        """Push every stranded message back at the head of its queue through `channel`, in one
        MULTI/EXEC; on failure they stay stranded (and the error propagates)."""
        with self._lock:
            pending, self._messages = self._messages, []
        if not pending:
            return 0
        try:
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                # Each restore goes to the head: the last one pushed is taken first, so push
                # in reverse to keep the order in which they were taken.
                for payload, exchange, routing_key in reversed(pending):
                    channel._do_restore_message(payload, exchange, routing_key, pipe, False)
                pipe.execute()
        except BaseException:
            with self._lock:
                self._messages[:0] = pending
            raise
        return len(pending)


#: This process's stranded messages (the worker's consumer runs in its main process).
STRANDED = StrandedMessages()


class QoS(kombu_redis.QoS):
    """kombu's QoS; a message whose unacked write fails is stranded instead of forgotten."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        taken = getattr(self.channel, "inbox_taken", None)
        if taken is not None:
            self._record_taken(message, delivery_tag, taken)
            return
        try:
            super().append(message, delivery_tag)
        except self.channel.connection_errors:
            info = message.delivery_info
            STRANDED.keep(message._raw, info["exchange"], info["routing_key"])
            logger.warning(
                "message %s taken off %r but Redis went away before it was recorded as "
                "unacked; kept in memory, put back on reconnect",
                delivery_tag,
                info["routing_key"],
            )
            raise

    def _record_taken(self, message: Any, delivery_tag: Any, taken: Taken) -> None:
        """kombu's unacked write (ZADD `unacked_index` + HSET `unacked`) and the removal of the
        message from the inbox it was taken into, in one MULTI (bot/broker/inbox.py). Should it
        fail, the message stays in the inbox, returned before this worker consumes again."""
        info = message.delivery_info
        entry = dumps([message._raw, info["exchange"], info["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(self.unacked_key, delivery_tag, entry)
            # LREM is no command kombu's prefixing client rewrites: `taken.inbox` is the full name
            pipe.execute_command("LREM", taken.inbox, 1, taken.raw)
            pipe.execute()
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        if self._detached("ack", delivery_tag):
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._detached("reject", delivery_tag):
            return
        super().reject(delivery_tag, requeue=requeue)

    def _detached(self, what: str, delivery_tag: Any) -> bool:
        """Whether this channel lost its connection (closed after Redis went away). Seen in a
        worker (Celery 5.7 / kombu 5.7, tests/e2e/test_outbox_e2e.py): a pool child handed a
        job back (`Reject(requeue=True)`, Redis unreachable) and the reject reached the main
        process after the consumer had reconnected on a new channel; kombu's reject on the old
        one reached for its missing connection, an AttributeError Celery treats as
        unrecoverable, and the worker shut down. Skipped, the message stays in Redis's unacked
        hash, where the reaper's orphan sweep and kombu's visibility sweep put it back (a job
        that had ended is then a duplicate, acked without running)."""
        connection = self.channel.connection
        if connection is not None and connection.client is not None:
            return False
        self._delivered.pop(delivery_tag, None)
        logger.warning(
            "%s of message %s skipped: its channel's connection is gone; the message stays "
            "in Redis's unacked hash for the sweeps",
            what,
            delivery_tag,
        )
        return True

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        """kombu's restore of this channel's unacked messages at close, except on a channel
        whose transport was already detached from its connection. Seen in a worker when Redis
        went away (Celery 5.7 / kombu 5.7): the consumer's `collect()` detaches the transport,
        an earlier close of the channel stopped at a Redis error, and the final close then
        restores through the missing connection: an AttributeError that Celery treats as
        unrecoverable, shutting the worker down. The same at process exit on a channel closed
        before (its connection None; kombu's exit finalizer). Skipped, the messages stay in
        Redis's unacked hash, where the reaper's orphan sweep and kombu's visibility sweep put
        them back."""
        if self.channel.connection is None or self.channel.connection.client is None:
            if self._delivered:
                logger.warning(
                    "%d unacked message(s) left in Redis for the sweeps (connection gone)",
                    len(self._delivered),
                )
            self._delivered.clear()
            # kombu's own mark on that dict: restored once, never again.
            self._delivered.restored = True  # type: ignore[attr-defined]
            return None
        return super().restore_unacked_once(stderr)


class Channel(InboxReads):
    """kombu's Redis channel reading through inboxes in a fleet worker (bot/broker/inbox.py);
    a new one first puts this process's stranded messages back."""

    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._shared_client: tuple[Any, Any] | None = None  # (pool, client on that pool)
        super().__init__(*args, **kwargs)
        if len(STRANDED):
            self._put_back_stranded()

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's connection parameters; the connections that read messages off the queues
        (the asynchronous pool: BRPOP) use redis-py's own Python reply parser instead of
        hiredis. hiredis's reader keeps its buffer at the size of the largest reply until the
        next one arrives on that connection, and a consumer's BRPOP connection waits idle after
        a large message: one 50 MB body left the worker's main process 180 MB bigger
        (tests/e2e/test_hostile_input.py bounds it at 150). Publishes, acks and the unacked
        bookkeeping (the other pool) keep hiredis, as do bot's own clients."""
        params = super()._connparams(asynchronous)
        if asynchronous:
            params["parser_class"] = _RESP2Parser  # redis-py switches to its RESP3 twin as needed
        return params

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The given client, or this channel's one client on its current connection pool
        (kombu makes a new client per call; redis-py clients are thread-safe)."""
        if client:
            yield client
            return
        pool = self.pool
        if self._shared_client is None or self._shared_client[0] is not pool:
            self._shared_client = (pool, self._create_client())
        yield self._shared_client[1]

    def _put_back_stranded(self) -> None:
        try:
            count = STRANDED.put_back(self)
        except self.connection_errors as exc:
            logger.warning("stranded messages not put back yet (%s); next connection", exc)
            return
        logger.warning("put %d stranded message(s) back at the head of their queue", count)

    def _brpop_read(self, **options: Any) -> Any:
        """kombu's read of one message; an item that is not a kombu message (not JSON, or
        without kombu's envelope) is dropped with a log line instead of stopping the worker.
        It is off the queue already and names no job, so there is nothing to put back.
        Errors of the consumer itself never arrive here (bot/broker/consumer.py catches them), and a
        Redis error is none of these types: it propagates, and Celery reconnects."""
        try:
            return super()._brpop_read(**options)
        except UNREADABLE_ITEM_ERRORS as exc:
            logger.error(
                "dropped an item of a queue list that is not a kombu message (%s: %.200s)",
                type(exc).__name__,
                exc,
            )
            return True


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel` above."""

    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """bot's `Channel` on kombu's Sentinel-managed pools (MRO: bot's repairs, then kombu's
    Sentinel channel, then kombu's Redis channel)."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with `SentinelChannel` above."""

    Channel = SentinelChannel


def install() -> None:
    """Resolve `redis://`, `rediss://` and `sentinel://` URLs to bot's transports here."""
    for scheme, transport in TRANSPORTS.items():
        kombu.transport.TRANSPORT_ALIASES[scheme] = transport
        # kombu caches the class per name; drop one resolved before this call.
        kombu.transport._transport_cache.pop(scheme, None)


def _report_stranded_at_exit() -> None:
    if len(STRANDED):
        logger.error(
            "exiting with %d message(s) taken off Redis and never put back (Redis unreachable "
            "since): jobs %s",
            len(STRANDED),
            ", ".join(STRANDED.job_ids()),
        )


atexit.register(_report_stranded_at_exit)
