"""The relay's grouped acks: delivered entries are XACKed together, once ACK_BATCH are waiting
or ACK_MAX_DELAY_S after the first, instead of one round trip per report (that was most of a
drain's cost).

Only an entry whose delivery succeeded is ever added. A relay killed between a POST and its
XACK re-sends at most ACK_BATCH delivered reports plus the ones in flight (the receiver dedupes
on Idempotency-Key). If Redis is away when the acks are flushed they stay queued, and the relay
does not send those entries again meanwhile (`holds`): a Redis restart does not make a
delivered report go out twice.
"""

from __future__ import annotations

from collections.abc import Callable

from bot.outbox.stream import Outbox

#: Delivered entries are XACKed together once this many are waiting, or after this long (s).
ACK_BATCH = 50
ACK_MAX_DELAY_S = 0.05


class AckQueue:
    """Delivered, not yet XACKed entries of one consumer group, per stream."""

    def __init__(self, outbox: Outbox, group: str, clock: Callable[[], float]) -> None:
        self.outbox = outbox
        self.group = group
        self._clock = clock
        self._waiting: list[tuple[str, str]] = []  # (stream, entry id), delivered
        self._since = 0.0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, stream: str, entry_id: str) -> None:
        """Queue the ack of a delivered entry; flush when the group is full or old enough."""
        if not self._waiting:
            self._since = self._clock()
        self._waiting.append((stream, entry_id))
        self.maybe_flush()

    def holds(self, stream: str) -> set[str]:
        """Ids of `stream` delivered but not yet acked: not to be sent again."""
        return {entry_id for s, entry_id in self._waiting if s == stream}

    def maybe_flush(self) -> None:
        if self._waiting and (
            len(self._waiting) >= ACK_BATCH or self._clock() - self._since >= ACK_MAX_DELAY_S
        ):
            self.flush()

    def flush(self) -> None:
        """XACK everything queued, one call per stream; on a Redis error what is left stays."""
        while self._waiting:
            stream = self._waiting[0][0]
            ids = [entry_id for s, entry_id in self._waiting if s == stream]
            self.outbox.ack(stream, self.group, *ids)
            self._waiting = [(s, i) for s, i in self._waiting if s != stream]
