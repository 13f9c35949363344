"""Redis connections for bot's own keys (leases, records, outbox), with the same socket
timeouts as the broker so a dead Redis is noticed in seconds, never a hang; the one tuple of
errors that means Redis is unreachable; and, for a `sentinel://` URL, a client that follows the
master Sentinel names (redis-py's `Sentinel.master_for`: each new connection asks the sentinels
where the master is, so after a failover the next command reaches the promoted replica)."""

from __future__ import annotations

from typing import Any

import redis
import redis.sentinel
from kombu.exceptions import OperationalError

from config.celery_config import (
    REDIS_CONNECT_TIMEOUT_S,
    REDIS_HEALTH_CHECK_INTERVAL_S,
    REDIS_SOCKET_TIMEOUT_S,
)
from config.settings import Settings, is_sentinel_url, parse_sentinel_url

#: The one tuple of errors meaning "Redis (or the broker on it) is unreachable right now": a
#: caller waits it out, retries, or gives up on this round; never a bug to crash on.
#: redis-py's MasterNotFoundError (no sentinel knows a master: mid-failover) is a ConnectionError.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OperationalError)


def connect(settings: Settings, *, socket_timeout_s: float = REDIS_SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client for `BOT_REDIS_URL` (the master, under Sentinel) that decodes responses to str."""
    return client_for_url(
        settings.redis_url,
        settings.redis_sentinel_master,
        decode_responses=True,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_keepalive=True,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL_S,
    )


def client_for_url(url: str, sentinel_master: str | None, **options: Any) -> redis.Redis:
    """A client for a redis://, rediss://, unix:// or sentinel:// URL; `options` are redis-py's
    connection keywords (timeouts, decoding), used for the sentinels' connections too."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    if not sentinel_master:
        raise ValueError("a sentinel:// URL needs BOT_REDIS_SENTINEL_MASTER")
    address = parse_sentinel_url(url)
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = redis.sentinel.Sentinel(list(address.sentinels), sentinel_kwargs=timeouts)
    return sentinel.master_for(
        sentinel_master,
        db=address.db,
        username=address.username,
        password=address.password,
        **options,
    )


def ping_url(url: str, sentinel_master: str | None, timeout_s: float) -> None:
    """PING the Redis behind `url` (its master, under Sentinel); raises what redis-py raises."""
    client = client_for_url(
        url, sentinel_master, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        client.ping()
    finally:
        client.close()
