"""An autoscaler that scales the prefork pool on queue depth, not only on reserved requests.

Celery's own `Autoscaler` sizes the pool by the requests this worker has reserved, which the
prefetch limit caps: with many workers on one queue, none of them sees the backlog waiting in
Redis. This one adds that backlog (the messages ready in this worker's queues, as kombu counts
them, priorities included) to the reserved requests. Scaling down keeps Celery's rules: only
after the keepalive since the last scale-up or task, only idle processes (billiard's shrink
refuses busy ones), and never below what is reserved here, since reserved requests (running
ones included) always count. Installed as `worker_autoscaler`; used with `--autoscale=MAX,MIN`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.worker import state
from celery.worker.autoscale import Autoscaler

logger = logging.getLogger(__name__)

#: Seconds a backlog reading is reused (the autoscaler thread wakes about once a second).
BACKLOG_TTL_S = 1.0


class QueueBacklog:
    """Messages waiting in a worker's queues, read through kombu (so priority sub-queues and
    `global_keyprefix` are counted as the transport itself lays them out)."""

    def __init__(self, app: Any, ttl_s: float = BACKLOG_TTL_S) -> None:
        self.app = app
        self.ttl_s = ttl_s
        self._value = 0
        self._read_at = float("-inf")
        self._connection: Any = None

    def queues(self) -> list[str]:
        return sorted(self.app.amqp.queues.consume_from)

    def read(self) -> int:
        now = time.monotonic()
        if now - self._read_at >= self.ttl_s:
            self._read_at = now
            try:
                self._value = self._count()
            except Exception as exc:  # broker away: keep the last reading, scale on reserved
                logger.debug("queue backlog unknown: %s", exc)
                self._close()
        return self._value

    def _count(self) -> int:
        if self._connection is None:
            self._connection = self.app.connection_for_read()
        channel = self._connection.default_channel
        return sum(
            int(channel.queue_declare(queue=name, passive=True).message_count)
            for name in self.queues()
        )

    def _close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            finally:
                self._connection = None


class QueueDepthAutoscaler(Autoscaler):
    """Celery's autoscaler, counting the queue backlog as demand too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backlog = QueueBacklog(self.worker.app)

    @property
    def qty(self) -> int:
        return len(state.reserved_requests) + self.backlog.read()
