"""The Celery configuration bot runs with: JSON only, at-least-once delivery, events on."""

from __future__ import annotations

from bot.store.keys import Keys
from config.celery_config import broker_transport_options, celery_config
from config.settings import Settings


def test_json_only_no_pickle() -> None:
    conf = celery_config(Settings())
    assert conf["accept_content"] == ["json"]
    assert conf["result_accept_content"] == ["json"]
    assert {conf["task_serializer"], conf["result_serializer"], conf["event_serializer"]} == {
        "json"
    }


def test_at_least_once_delivery_and_events() -> None:
    conf = celery_config(Settings())
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_send_task_events"] is True
    # task-sent costs every producer a publish per job: opt-in
    assert conf["task_send_sent_event"] is False
    assert conf["task_track_started"] is True  # op tasks override it (test_results.py)


def test_task_events_settings() -> None:
    assert celery_config(Settings(task_sent_events=True))["task_send_sent_event"] is True
    quiet = celery_config(Settings(task_events=False, task_sent_events=True))
    assert quiet["worker_send_task_events"] is False and quiet["task_send_sent_event"] is False


def test_op_tasks_leave_started_to_acquire_while_results_share_its_redis() -> None:
    from bot.application import create_app

    same = create_app(Settings(redis_url="redis://h:1/2", result_url="redis://h:1/2"), fleet=False)
    elsewhere = create_app(
        Settings(redis_url="redis://h:1/2", result_url="redis://other:1/3"), fleet=False
    )
    assert same.tasks["ops.sum"].track_started is False
    assert elsewhere.tasks["ops.sum"].track_started is True
    assert same.conf.task_track_started is True  # plain tasks on bot's app: Celery writes it


def test_user_transport_options_merge_over_ours() -> None:
    settings = Settings(
        visibility_timeout=7,
        broker_transport_options={"unacked_restore_interval": 1, "visibility_timeout": 9},
    )
    options = broker_transport_options(settings)
    assert options["visibility_timeout"] == 9
    assert options["unacked_restore_interval"] == 1
    assert options["socket_timeout"] > 0 and options["health_check_interval"] > 0


def test_result_backend_defaults_to_broker_redis() -> None:
    conf = celery_config(Settings(redis_url="redis://h:1/2"))
    assert conf["broker_url"] == conf["result_backend"] == "redis://h:1/2"
    conf = celery_config(Settings(redis_url="redis://h:1/2", result_url="redis://other:1/3"))
    assert conf["result_backend"] == "redis://other:1/3"


def test_results_live_bot_result_ttl_and_a_chord_as_long_as_a_job_record() -> None:
    conf = celery_config(Settings())
    assert (conf["result_expires"], conf["result_chord_expires"]) == (3600, 86400)
    conf = celery_config(Settings(result_ttl=120, job_ttl=7200))
    assert (conf["result_expires"], conf["result_chord_expires"]) == (120, 7200)


def test_the_beat_runs_bot_scheduler_with_redbeat_under_the_key_prefix() -> None:
    settings = Settings(
        redis_url="redis://r.example:6380/2", key_prefix="acme", beat_max_interval=2
    )
    conf = celery_config(settings)
    assert conf["beat_scheduler"] == "bot.flows.beat:BotScheduler"
    assert conf["beat_max_loop_interval"] == 2
    # redbeat on the broker's Redis, its keys under BOT_KEY_PREFIX, its lock 5 intervals long
    assert conf["redbeat_redis_url"] == "redis://r.example:6380/2"
    assert conf["redbeat_key_prefix"] == Keys("acme").redbeat_prefix == "acme:redbeat:"
    assert conf["redbeat_lock_timeout"] == 10
    # set, so redbeat neither falls back to the broker's transport options nor warns about it
    assert "retry_period" in conf["redbeat_redis_options"]
