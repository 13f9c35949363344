"""The worker's consumer: Celery's, with a last-resort guard around every message it takes in.

bot/jobs/intake.py guards `ops.*` messages and gives each a record and a report. Any other task
name (Celery's own `celery.*` tasks, an app's plain tasks) still goes through Celery's default
strategy, where a malformed body or header raises in the main process; Celery calls that
"Unrecoverable error" and stops the worker, and the message, put back at the head of its queue,
stops the next worker. Here such a message is logged (id, task, what went wrong) and acked
instead: no job of ours can be named for it, and no single message may stop a worker. A
broker connection error still propagates, so the consumer reconnects as Celery intends.

It also publishes task events in batches: Celery buffers them and flushes at the next turn
of the event loop, which under load is one PUBLISH (a Redis round trip of the main process,
the worker's bottleneck) per event, three per job. Here the buffer is flushed at most every
`EVENT_BATCH_WINDOW_S`, as one `task.multi` message that Flower and Celery's event receivers
unpack (a third of the main process's time per job in docs/profiles/worker-main.txt).

Installed with Celery's `worker_consumer` setting (config/celery_config.py).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer
from kombu.utils.functional import dictfilter

from bot.jobs.envelope import printable

logger = logging.getLogger(__name__)

#: Seconds a task event may wait to be published with others: well under what a person
#: watching Flower notices.
EVENT_BATCH_WINDOW_S = 0.1


class GuardedConsumer(Consumer):
    """Celery's consumer; a message whose handling raises is dropped with a log line, and task
    events are published in batches."""

    _event_flush_scheduled = False

    def on_send_event_buffered(self) -> None:
        # Called from whichever thread sent the event: hand over to the loop's thread, which
        # alone may touch its timer.
        if self.hub:
            self.hub.call_soon(self._schedule_event_flush)

    def _schedule_event_flush(self) -> None:
        if not self._event_flush_scheduled and self.hub:
            self._event_flush_scheduled = True
            self.hub.call_later(EVENT_BATCH_WINDOW_S, self._flush_event_batch)

    def _flush_event_batch(self) -> None:
        self._event_flush_scheduled = False
        self._flush_events()

    def shutdown(self) -> None:
        """Publish the events still waiting for their batch, then Celery's shutdown."""
        try:
            self._flush_event_batch()
        except Exception as exc:  # a Redis that went away: the events are Flower's, not jobs
            logger.warning("task events not published at shutdown: %s", exc)
        super().shutdown()

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)
        connection_errors = self.connection_errors

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except connection_errors:
                raise
            except Exception as exc:
                drop_message(message, exc, connection_errors)
                return None

        return on_task_received


def drop_message(message: Any, exc: BaseException, connection_errors: Any) -> None:
    """Log what can be told of the message and ack it (once: it may be acked already)."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    described = dictfilter({"id": headers.get("id"), "task": headers.get("task")})
    logger.error(
        "message dropped: it cannot be taken in (%s: %s); %s",
        type(exc).__name__,
        printable(str(exc), 300),
        printable(repr(described), 300),
        exc_info=exc,
    )
    if not message.acknowledged:
        message.ack_log_error(logger, connection_errors)
