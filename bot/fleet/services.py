"""The long-running services the fleet step starts in every worker besides its heartbeat: the
reaper with the unheld-job audit and the pipeline run audit (every BOT_REAPER_INTERVAL), the
outbox retention pass (every BOT_OUTBOX_TRIM_INTERVAL, relay or not), the outbox relay (when
BOT_REPORT_URL is set), the trigger consumer (when triggers are declared and
BOT_TRIGGERS is on) and the /metrics server (when BOT_METRICS_PORT is set). The relay and the
metrics server import their libraries (httpx, prometheus_client) only when they are
configured: `import bot`, which every worker process and client does, must not pay for them
(tests/unit/test_import_discipline.py).

A service is any object with `start()` and `stop()`; a `ServiceFactory` builds one from a
`FleetContext`. A service that is not configured is a `Disabled` one, so the step's service
list stays uniform. `PeriodicService` turns a callable into one that runs every `interval_s`
in its own thread (a `bot.base.loop.Loop`). More can be added with

    services.DEFAULT_SERVICES.append(
        lambda ctx: services.PeriodicService("cleanup", 60.0, cleanup_once))

or per app: `install_fleet(app, services=[...])`. Factories are read when the worker starts,
so appending to `DEFAULT_SERVICES` after `bot` was imported still counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.base.loop import Loop
from bot.fleet.identity import Identity
from bot.fleet.lifecycle import Lifecycle
from bot.flows.run_audit import RunAudit
from bot.flows.triggers import trigger_consumer
from bot.outbox.relay import Relay
from bot.outbox.retention import Retention
from bot.outbox.stream import Outbox
from bot.pipelines.triggers import TRIGGERS
from bot.recovery.reaper import Reaper
from bot.recovery.unheld_audit import UnheldAudit
from bot.runtime import worker_state
from bot.runtime.process import RUNTIME
from config.settings import Settings

logger = logging.getLogger("bot.fleet")


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class FleetContext:
    """What a service gets to build itself."""

    app: Any
    settings: Settings
    identity: Identity
    lifecycle: Lifecycle
    #: The breakers shown in the worker record; a service adds its own (e.g. a sink's).
    breakers: dict[str, Any]


ServiceFactory = Callable[[FleetContext], Service]


class Disabled:
    """A service that is not configured here."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why

    def start(self) -> None:
        logger.info("%s off (%s)", self.name, self.why)

    def stop(self) -> None:
        pass


class PeriodicService:
    """Runs `fn()` every `interval_s` seconds in a daemon thread until stopped. An exception is
    logged and the next round still runs: a periodic job must not kill the worker."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.fn = fn
        self._loop = Loop(name, self._round, first_wait_s=interval_s, error_wait_s=interval_s)

    def _round(self) -> float:
        self.fn()
        return self.interval_s

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout_s=max(5.0, self.interval_s))


def reaper_service(context: FleetContext) -> Service:
    """This worker's reaper and the audit of its own claims, every BOT_REAPER_INTERVAL in a
    thread of the worker's main process (bot/recovery/)."""
    reaper = Reaper.for_app(context.app)
    audit = UnheldAudit(
        context.app.redis(),
        context.app.keys,
        owner=RUNTIME.owner,
        held_job_ids=worker_state.held_job_ids,
        put_back=reaper.put_back,
    )

    def one_round() -> None:
        reaper.run_once()
        audit.run_once()

    return PeriodicService("reaper", context.settings.reaper_interval, one_round)


def pipeline_audit_service(context: FleetContext) -> Service:
    """The pipeline run audit (bot/flows/run_audit.py), every BOT_REAPER_INTERVAL."""
    audit = RunAudit(context.app)
    return PeriodicService("pipeline audit", context.settings.reaper_interval, audit.run_once)


def retention_service(context: FleetContext) -> Service:
    """The outbox retention pass (bot/outbox/retention.py), every BOT_OUTBOX_TRIM_INTERVAL,
    one worker per interval fleet-wide; it runs whether or not this worker has a relay."""
    retention = Retention.for_app(context.app)
    interval_s = context.settings.outbox_trim_interval
    return PeriodicService("outbox retention", interval_s, retention.run_once)


def relay_service(context: FleetContext) -> Service:
    """The built-in outbox relay to the HTTP sink (bot/outbox/relay.py), with its breaker
    shown in the record."""
    settings = context.settings
    if not settings.report_url:
        return Disabled("outbox relay", "BOT_REPORT_URL not set")
    # Lazy: the HTTP sink brings httpx (httpcore, h11, anyio, rich ...), several MiB in every
    # worker process, pool children included; only a worker with a sink to deliver to pays it.
    from bot.outbox.sinks import HttpSink

    relay = Relay.from_settings(
        settings,
        context.app.redis(),
        HttpSink.from_settings(settings),
        context.identity.instance_id,
    )
    context.breakers[relay.breaker.name] = relay.breaker
    return relay


def trigger_service(context: FleetContext) -> Service:
    """The trigger consumer (bot/flows/triggers.py): fires the declared triggers on the reports
    in the outbox; its breaker (`sink:triggers`) is shown in the record."""
    if not context.settings.triggers:
        return Disabled("triggers", "BOT_TRIGGERS is off")
    if not len(TRIGGERS):
        return Disabled("triggers", "no trigger is declared")
    consumer = trigger_consumer(context.app, context.identity.instance_id)
    context.breakers[consumer.breaker.name] = consumer.breaker
    return consumer


class MetricsServer:
    """Serves /metrics on BOT_METRICS_ADDR:BOT_METRICS_PORT from the worker's main process (an
    HTTP server thread of prometheus_client's own, not a loop)."""

    def __init__(self, context: FleetContext, port: int) -> None:
        self.context = context
        self.port = port
        self._server: Any = None

    def start(self) -> None:
        # Lazy: prometheus_client is imported only by a worker that serves /metrics.
        from bot.observe.metrics import serve

        app, settings = self.context.app, self.context.settings
        self._server = serve(
            app,
            self.port,
            lambda: RUNTIME.instance_id,
            settings.metrics_addr,
            outbox_owed=lambda: Outbox(app.redis(), app.keys).owed_by_group(),
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def metrics_service(context: FleetContext) -> Service:
    """/metrics (bot/observe/metrics.py), when BOT_METRICS_PORT is set."""
    port = context.settings.metrics_port
    if port is None:
        return Disabled("metrics", "BOT_METRICS_PORT not set")
    return MetricsServer(context, port)


#: Services every worker runs: the reaper, the pipeline run audit, the outbox retention pass,
#: the outbox relay, the trigger consumer, the metrics server.
DEFAULT_SERVICES: list[ServiceFactory] = [
    reaper_service,
    pipeline_audit_service,
    retention_service,
    relay_service,
    trigger_service,
    metrics_service,
]
