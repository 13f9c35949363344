"""The Celery application: `BotApp`, built from Settings, with every registered op as a task.

`bot.app` (what `celery -A bot` finds) is `create_app(load_settings())`. Tests and embedders
build their own with `create_app(settings)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery import Celery, signals

from bot.base.clock import now_ms
from bot.broker import transport
from bot.fleet.step import install_fleet
from bot.flows.canvas import COLLECT_TASK, FINISH_TASK
from bot.flows.pipeline_tasks import PipelineTask, collect_results, finish_run, start_run
from bot.flows.stage_hooks import PipelineStageHooks
from bot.jobs.envelope import ENQUEUED_AT_HEADER
from bot.jobs.intake import reject_unknown_op
from bot.jobs.run import OpTask, run_op
from bot.jobs.store import JobStore, ReplicaWait
from bot.observe.backlog import stamp_sent_at
from bot.ops import REGISTRY, OpSpec
from bot.pipelines.discovery import discover_pipelines
from bot.pipelines.registry import PIPELINES, PipelineSpec
from bot.store.connect import connect
from bot.store.keys import Keys
from config.celery_config import celery_config
from config.logging_setup import configure_logging
from config.settings import Settings

#: A process's (pid, client for bot's keys, job store on that client).
BotConnection = tuple[int, redis.Redis, JobStore]


class BotApp(Celery):
    """A Celery app that also knows bot's settings, keys and (per process) Redis client."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("bot", **kwargs)
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.conf.update(celery_config(settings))
        #: (pid, client, job store) of this process, replaced as one value: pool threads
        #: (`-P threads`) call redis() and job_store() at once, and a forked child makes its own.
        self._bot_redis: BotConnection | None = None
        #: The fleet step's service factories (`install_fleet(app, services=...)`); None: the
        #: DEFAULT_SERVICES of bot/fleet/services.py when the worker starts.
        self.fleet_services: Sequence[Callable[[Any], Any]] | None = None

    def _get_backend(self) -> Any:
        """Celery's result backend for this thread, which does not subscribe to a task's result
        channel when the task is sent (`on_task_call`). Observed with Celery 5.7's Redis backend
        (pinned by tests/integration/test_result_subscriptions.py): every `send_task` of a
        client subscribes its pubsub connection to the task's channel, and the AsyncResult
        dropped right after unsubscribes; nobody reads that connection unless `get()` waits
        on it, so Redis buffers each (un)subscribe reply and every result published there
        for it, up to the pubsub output-buffer limit (32 MB; a soak's submitter held 45 MB of
        Redis that way), then drops the connection. `get()` still works: it subscribes when
        it waits, then reads the stored result, so a result that was published before is not
        missed (Celery's `on_wait_for_pending`)."""
        backend = super()._get_backend()
        backend.on_task_call = _subscribe_when_waited_for
        return backend

    def redis(self) -> redis.Redis:
        """This process's client for bot's own keys (a forked pool child makes its own)."""
        return self._bot_connection()[1]

    def job_store(self) -> JobStore:
        return self._bot_connection()[2]

    def _bot_connection(self) -> BotConnection:
        # Thread-safe without a lock (a lock held by another thread at fork would stay held
        # in the child): threads racing here each build a client, the last one stays, and
        # every caller gets a client and a store that belong together, never None.
        current = self._bot_redis
        if current is None or current[0] != os.getpid():
            client = connect(self.settings)
            current = (
                os.getpid(),
                client,
                JobStore(client, self.keys, replica_wait(self.settings)),
            )
            self._bot_redis = current
        return current


def _subscribe_when_waited_for(producer: Any, task_id: str) -> None:
    """`on_task_call` of bot's result backend: nothing at send time (`BotApp._get_backend`)."""


#: Milliseconds in a second (WAIT takes its timeout in ms).
MS_PER_S = 1000


def replica_wait(settings: Settings) -> ReplicaWait:
    """The WAIT after a job's end that BOT_REDIS_MIN_REPLICAS asks for (bot/jobs/store.py)."""
    return ReplicaWait(settings.redis_min_replicas, int(settings.redis_wait_timeout * MS_PER_S))


def register_op(app: BotApp, spec: OpSpec) -> None:
    app.task(
        name=spec.task_name,
        base=OpTask,
        bind=True,
        op_spec=spec,
        max_retries=spec.max_retries,
        queue=spec.queue,
        shared=False,
        # STARTED is written with the job record by acquire.lua (bot/jobs/celery_meta.py)
        track_started=not app.settings.results_in_job_store,
        stage_hooks=PipelineStageHooks(app),
    )(run_op)


#: What pipeline tasks share: each message checked before Celery unpacks it (as for ops).
_GUARDED = "bot.jobs.intake:guarded"


def register_pipeline(app: BotApp, spec: PipelineSpec) -> None:
    """The task `pipelines.<name>` that starts a run of `spec` (bot/flows/pipeline_tasks.py)."""
    app.task(
        name=spec.task_name,
        base=PipelineTask,
        bind=True,
        pipeline_spec=spec,
        shared=False,
        Strategy=_GUARDED,
    )(start_run)


def register_pipeline_plumbing(app: BotApp) -> None:
    """The two tasks every run's canvas uses: a parallel stage's join and the run's end."""
    app.task(name=COLLECT_TASK, bind=True, shared=False, Strategy=_GUARDED)(collect_results)
    app.task(name=FINISH_TASK, bind=True, shared=False, Strategy=_GUARDED)(finish_run)


def create_app(settings: Settings, *, fleet: bool = True, **kwargs: Any) -> BotApp:
    """A configured app with every discovered op registered (and the fleet step installed);
    the pipelines declared next to the ops are checked too (bot/pipelines/discovery.py)."""
    discover_pipelines(settings.ops_modules)
    transport.install()  # redis:// and rediss:// through bot's kombu transport
    app = BotApp(settings, **kwargs)
    for spec in REGISTRY:
        register_op(app, spec)
    for pipeline_spec in PIPELINES:
        register_pipeline(app, pipeline_spec)
    register_pipeline_plumbing(app)
    _connect_signals(settings)
    if fleet:
        install_fleet(app)
    return app


def _connect_signals(settings: Settings) -> None:
    def setup_logging(**_: Any) -> None:
        configure_logging(settings)

    # dispatch_uid: an app built twice in one process (tests, embedders) connects each once.
    signals.setup_logging.connect(setup_logging, weak=False, dispatch_uid="bot.setup_logging")
    signals.before_task_publish.connect(
        stamp_publish_headers, dispatch_uid="bot.stamp_publish_headers"
    )
    signals.task_unknown.connect(reject_unknown_op, dispatch_uid="bot.reject_unknown_op")


def stamp_publish_headers(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Stamp every published task with its publish time (`bot_sent_at`: the queue backlog age
    of /metrics, bot/observe/backlog.py), and a job with its enqueue time, which its report
    carries (`bot_enqueued_at`: the first enqueue's, kept across retries)."""
    if headers is None:
        return
    stamp_sent_at(headers)
    if str(headers.get("task", "")).startswith("ops."):
        headers.setdefault(ENQUEUED_AT_HEADER, now_ms())
