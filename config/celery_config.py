"""The Celery configuration, derived from `Settings` and nothing else.

JSON is the only content type accepted anywhere (no pickle). Delivery is at-least-once:
`task_acks_late` + `task_reject_on_worker_lost`, prefetch of one, and task events on so
Flower shows every job. The Redis socket options make a restarted Redis noticed in seconds
instead of a hung worker (celery#10205, #10302).
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings, is_sentinel_url, parse_sentinel_url

#: Seconds: how long a Redis socket may block, how long a connect may take, and how often an
#: idle connection is checked. Short enough that a dead Redis is seen within a heartbeat or two.
REDIS_SOCKET_TIMEOUT_S = 10.0
REDIS_CONNECT_TIMEOUT_S = 5.0
REDIS_HEALTH_CHECK_INTERVAL_S = 10

JSON_ONLY = ["json"]


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """bot's own kombu transport options, with `BOT_BROKER_TRANSPORT_OPTIONS` merged over them."""
    options: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": REDIS_HEALTH_CHECK_INTERVAL_S,
        "retry_on_timeout": True,
        # bot's own option, read by bot/broker/inbox.py (kombu ignores options it does not know)
        "bot_key_prefix": settings.key_prefix,
        **sentinel_options(settings, settings.redis_url),
    }
    options.update(settings.broker_transport_options)
    return options


def sentinel_options(settings: Settings, url: str) -> dict[str, Any]:
    """kombu's and Celery's transport options for a sentinel:// URL: the master's name (both
    kombu.transport.redis.SentinelChannel and celery.backends.redis.SentinelBackend read
    `master_name`) and the sentinels' own socket timeouts (`sentinel_kwargs`: Celery passes {}
    when unset, which leaves redis-py's sentinel connections without any timeout); nothing for a
    plain Redis URL."""
    if not is_sentinel_url(url):
        return {}
    return {
        "master_name": settings.redis_sentinel_master,
        "sentinel_kwargs": {
            "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        },
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting bot depends on, as a plain dict for `app.conf.update`."""
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.result_backend_url,
        "result_backend_transport_options": sentinel_options(settings, settings.result_backend_url),
        "broker_transport_options": broker_transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "redis_socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "redis_socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        "redis_socket_keepalive": True,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": REDIS_HEALTH_CHECK_INTERVAL_S,
        "accept_content": JSON_ONLY,
        "result_accept_content": JSON_ONLY,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Op tasks override it: their STARTED is written by bot's acquire script when results
        # share the job store's Redis (bot/jobs/celery_meta.py, bot.application.register_op).
        "task_track_started": True,
        "task_send_sent_event": settings.task_events and settings.task_sent_events,
        "worker_send_task_events": settings.task_events,
        "result_extended": True,
        "result_expires": settings.result_ttl,
        # A pipeline's parallel stage (a chord) keeps its count and its members' results in the
        # result backend until the last member ends: as long as a job record, not a result, so
        # a stage whose jobs wait in a backlog longer than BOT_RESULT_TTL still completes.
        "result_chord_expires": settings.job_ttl,
        "task_default_queue": settings.default_queue,
        "worker_hijack_root_logger": False,
        # A message that cannot be taken in is dropped with a log line, never stops the
        # worker (bot/broker/consumer.py); ops.* messages are rejected with a report first.
        "worker_consumer": "bot.broker.consumer:GuardedConsumer",
        # With --autoscale: scale on the queue backlog in Redis too (bot/broker/autoscale.py).
        "worker_autoscaler": "bot.broker.autoscale:QueueDepthAutoscaler",
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "enable_utc": True,
        **beat_config(settings),
    }


#: A dead beat's redbeat lock expires after this many max intervals (redbeat's own ratio).
BEAT_LOCK_INTERVALS = 5
#: Seconds redbeat's Redis client retries a lost connection before the beat gives up.
BEAT_REDIS_RETRY_S = 60


def beat_config(settings: Settings) -> dict[str, Any]:
    """celery beat with celery-redbeat's lock and bot's schedules (bot/flows/beat.py), on the
    broker's Redis under BOT_KEY_PREFIX (the prefix is `Keys.redbeat_prefix`)."""
    return {
        "beat_scheduler": "bot.flows.beat:BotScheduler",
        "beat_max_loop_interval": settings.beat_max_interval,
        **redbeat_redis(settings),
        "redbeat_key_prefix": f"{settings.key_prefix}:redbeat:",
        "redbeat_lock_timeout": settings.beat_max_interval * BEAT_LOCK_INTERVALS,
    }


def redbeat_redis(settings: Settings) -> dict[str, Any]:
    """Where redbeat keeps its schedule and lock: the broker's Redis. Under Sentinel redbeat
    wants its own form (schedulers.get_redis: a `redis-sentinel://` URL, the sentinels and the
    master's `service_name`, password and db in its options)."""
    options: dict[str, Any] = {"retry_period": BEAT_REDIS_RETRY_S}
    if not is_sentinel_url(settings.redis_url):
        return {"redbeat_redis_url": settings.redis_url, "redbeat_redis_options": options}
    address = parse_sentinel_url(settings.redis_url)
    options.update(
        sentinels=list(address.sentinels),
        service_name=settings.redis_sentinel_master,
        password=address.password,
        db=address.db,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
    )
    if address.username:
        options["username"] = address.username
    return {"redbeat_redis_url": "redis-sentinel://", "redbeat_redis_options": options}
