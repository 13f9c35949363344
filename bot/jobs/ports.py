"""The app as the layers below `bot.application` see it: settings, keys, this process's Redis
client and job store, and Celery's publish and broker connection.

`bot.application.BotApp` satisfies it. Lower layers (the job steps, recovery, metrics) name
this Protocol instead of importing the application, so no layer imports one above it
(pyproject.toml: the import-linter contract).
"""

from __future__ import annotations

from typing import Any, Protocol

import redis

from bot.jobs.store import JobStore
from bot.store.keys import Keys
from config.settings import Settings


class AppPort(Protocol):
    settings: Settings
    keys: Keys

    def redis(self) -> redis.Redis:
        """This process's client for bot's own keys."""

    def job_store(self) -> JobStore:
        """This process's job store."""

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Celery's publish (by task name)."""

    def connection_for_write(self, *args: Any, **kwargs: Any) -> Any:
        """A broker connection of Celery's (kombu)."""
