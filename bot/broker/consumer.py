"""The worker's consumer: Celery's, with a last-resort guard around every message it takes in.

bot/jobs/intake.py guards `ops.*` messages and gives each a record and a report. Any other task
name (Celery's own `celery.*` tasks, an app's plain tasks) still goes through Celery's default
strategy, where a malformed body or header raises in the main process; Celery calls that
"Unrecoverable error" and stops the worker, and the message, put back at the head of its queue,
stops the next worker. Here such a message is logged (id, task, what went wrong) and acked
instead: no job of ours can be named for it, and no single message may stop a worker. A
broker connection error still propagates, so the consumer reconnects as Celery intends.

Installed with Celery's `worker_consumer` setting (config/celery_config.py).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer
from kombu.utils.functional import dictfilter

from bot.jobs.envelope import printable

logger = logging.getLogger(__name__)


class GuardedConsumer(Consumer):
    """Celery's consumer; a message whose handling raises is dropped with a log line."""

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
