"""Redis connections for bot's own keys (leases, records, outbox), with the same socket
timeouts as the broker so a dead Redis is noticed in seconds, never a hang; and the one tuple of
errors that means Redis is unreachable."""

from __future__ import annotations

import redis
from kombu.exceptions import OperationalError

from config.celery_config import (
    REDIS_CONNECT_TIMEOUT_S,
    REDIS_HEALTH_CHECK_INTERVAL_S,
    REDIS_SOCKET_TIMEOUT_S,
)
from config.settings import Settings

#: The one tuple of errors meaning "Redis (or the broker on it) is unreachable right now": a
#: caller waits it out, retries, or gives up on this round; never a bug to crash on.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OperationalError)


def connect(settings: Settings, *, socket_timeout_s: float = REDIS_SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client for `BOT_REDIS_URL` that decodes responses to str."""
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_keepalive=True,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL_S,
    )
