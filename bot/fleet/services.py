"""The long-running services the fleet step starts in every worker besides its heartbeat:
the outbox relay (when BOT_REPORT_URL is set) and the /metrics server (when BOT_METRICS_PORT
is set). The reaper is registered by `bot.fleet.step` itself.

Each factory takes the `FleetContext` and returns an object with start()/stop(); a service
that is not configured is a `Disabled` one, so the step's service list stays uniform.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bot.runtime.process import RUNTIME

if TYPE_CHECKING:
    from bot.fleet.step import FleetContext

logger = logging.getLogger("bot.fleet")

#: Name of the HTTP sink's breaker in the worker record (and in `bot_breaker_state`).
HTTP_SINK_BREAKER = "sink:http"


class Disabled:
    """A service that is not configured here."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why

    def start(self) -> None:
        logger.info("%s off (%s)", self.name, self.why)

    def stop(self) -> None:
        pass


def relay_service(context: FleetContext) -> Any:
    """The built-in outbox relay to the HTTP sink, with its breaker shown in the record."""
    settings = context.settings
    if not settings.report_url:
        return Disabled("outbox relay", "BOT_REPORT_URL not set")
    from bot.outbox.relay import Relay
    from bot.outbox.sinks import HttpSink

    relay = Relay.from_settings(
        settings,
        context.app.redis(),
        HttpSink.from_settings(settings),
        context.identity.instance_id,
    )
    context.breakers[HTTP_SINK_BREAKER] = relay.breaker
    return relay


class MetricsServer:
    """Serves /metrics on BOT_METRICS_ADDR:BOT_METRICS_PORT from the worker's main process."""

    def __init__(self, context: FleetContext, port: int) -> None:
        self.context = context
        self.port = port
        self._server: Any = None

    def start(self) -> None:
        from bot.observe.metrics import serve

        settings = self.context.settings
        self._server = serve(
            self.context.app, self.port, lambda: RUNTIME.instance_id, settings.metrics_addr
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def metrics_service(context: FleetContext) -> Any:
    port = context.settings.metrics_port
    if port is None:
        return Disabled("metrics", "BOT_METRICS_PORT not set")
    return MetricsServer(context, port)
