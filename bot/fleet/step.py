"""The fleet bootstep: a `StartStopStep` in the worker blueprint that owns the worker's
membership in the fleet (identity, registration, heartbeats, lifecycle, deregistration).

`install_fleet(app)` adds `FleetStep` to `app.steps['worker']`. It `requires` the Pool step,
so it starts after the pool and (steps stop in reverse) is stopped before the pool drains.

Celery 5.7 (prefork) behaviour relied on; the tests in tests/e2e/test_fleet.py that pin it:
- `__init__` of worker steps runs in `WorkController.__init__`, after logging is set up and
  before the pool forks: identity, `bot.runtime.process.RUNTIME` and `LogContext.instance_id`
  are set there so every pool child inherits them (pool-child log lines carry the instance id; a
  non-prefork `--autoscale` is refused from there: test_threads_pool_with_autoscale_...).
- Warm shutdown (SIGTERM): the step's `stop()` runs *before* the pool drains, and (DESIGN.md)
  `shutdown()` is never called for worker steps. So `stop()` only marks SHUTTING_DOWN (the
  heartbeat thread keeps the lease alive while jobs finish); deregistration happens on the
  `worker_shutdown` signal, which `WorkController.stop()` sends after the drain
  (test_sigterm_keeps_beating_..., by log order; test_soft_shutdown_...: SIGQUIT during the
  drain still ends through `worker_shutdown`).
- Cold shutdown (SIGQUIT) reaches the step through `terminate()`; `WorkController.terminate()`
  sends no `worker_shutdown` (test_cold_shutdown_...).
- A step whose `start()` raises `SystemExit(code)` makes the worker exit with that code
  (`WorkController.start` -> `stop(exitcode=code)`; test_redis_absent_at_start_...).
- The prefork pool (`AsynPool`) sends `worker_before_create_process` in the main process just
  before it forks each child, the first time when the Pool step starts, before the fleet step's
  `start()` (too late: the children exist by then). `freeze_before_fork` runs there.
- `celery.worker.state.requests` holds every request the main process has (reserved,
  scheduled, running), each with its kombu `message.delivery_tag` (heartbeat renewal).

Services (bot/fleet/services.py) start after the worker is READY, in the order given, and stop
at deregistration, after the pool drained, in reverse order. The factories come from the app
(`install_fleet(app, services=[...])`), or `services.DEFAULT_SERVICES` when it names none.
"""

from __future__ import annotations

import atexit
import gc
import logging
from collections.abc import Sequence
from typing import Any

from celery import bootsteps, signals
from celery.concurrency import ALIASES
from celery.concurrency.prefork import TaskPool as PreforkPool

from bot.base.exits import EXIT_USAGE
from bot.fleet.identity import resolve_identity
from bot.fleet.membership import FleetAgent
from bot.fleet.services import DEFAULT_SERVICES, FleetContext, Service, ServiceFactory
from bot.recovery.requeue import BrokerRequeue
from bot.runtime.process import RUNTIME
from config.logging_setup import LogContext

logger = logging.getLogger("bot.fleet")


class UnsupportedPool(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message


def refuse_unsupported_pool(worker: Any) -> None:
    """`--autoscale` needs prefork: Celery's threads pool has no `grow` and crashes at the
    first scale-up, so refuse the combination at start with one message."""
    pool_cls = getattr(worker, "pool_cls", None)
    if not getattr(worker, "autoscale", None):
        return
    if isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool):
        return
    path = f"{getattr(pool_cls, '__module__', '?')}:{getattr(pool_cls, '__name__', pool_cls)}"
    name = next((alias for alias, cls in ALIASES.items() if cls == path), path)
    message = (
        f"--autoscale works only with the prefork pool, not --pool {name}; "
        "use --pool prefork or drop --autoscale"
    )
    # Logging is set up by now (Celery configures it before it builds the blueprint).
    logger.critical(message)
    raise UnsupportedPool(message)


class FleetStep(bootsteps.StartStopStep):
    """Registers the worker, beats, and leaves the fleet at shutdown."""

    label = "fleet"
    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        refuse_unsupported_pool(worker)
        app = worker.app
        identity = resolve_identity(app.settings.state_dir, worker.hostname, app.settings.id)
        RUNTIME.bot_id = identity.bot_id
        RUNTIME.instance_id = identity.instance_id
        RUNTIME.hostname = identity.hostname
        LogContext.instance_id = identity.instance_id
        self.agent = FleetAgent(app, worker, identity)
        RUNTIME.acquire_breaker = self.agent.breakers["acquire"]
        RUNTIME.counters = self.agent.counters
        self.services: list[Service] = []
        _track(self)
        logger.info("fleet identity: bot_id=%s node=%s", identity.bot_id, identity.node_name)

    def start(self, worker: Any) -> None:
        self.agent.start()
        factories = worker.app.fleet_services
        context = FleetContext(
            worker.app,
            self.agent.settings,
            self.agent.identity,
            self.agent.lifecycle,
            self.agent.breakers,
        )
        for factory in DEFAULT_SERVICES if factories is None else factories:
            service = factory(context)
            service.start()
            self.services.append(service)

    def stop(self, worker: Any) -> None:
        # Runs before the pool drains (see module docstring): keep beating, leave later.
        self.agent.begin_shutdown("warm shutdown: finishing jobs in flight")

    def terminate(self, worker: Any) -> None:
        self.leave("cold shutdown")

    def leave(self, how: str) -> None:
        self.agent.finish(how, self._before_leaving)

    def _before_leaving(self) -> None:
        """Between the heartbeat's last round and deregistration: services stop, and what
        this worker's inboxes hold goes back to its queues (`return_own_inboxes`)."""
        self._stop_services()
        return_own_inboxes(self.agent.app, self.agent.identity.instance_id)

    def _stop_services(self) -> None:
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception:
                logger.exception("service %r failed to stop", service)
        self.services.clear()


def return_own_inboxes(app: Any, instance_id: str) -> None:
    """Messages this worker took into its inboxes and never recorded (bot/broker/inbox.py: a
    reply lost just before shutdown) go back to their queues, and its set of inboxes goes:
    after a clean exit no reaper would ever look at them. With Redis away, both stay; the
    lease then expires (deregistration fails too) and the reaper returns them."""
    requeue = BrokerRequeue(app)
    try:
        moved = requeue.return_inboxes(instance_id)
    except Exception as exc:  # any broker error: leaving must go on
        logger.warning("inboxes not returned before leaving (%s); the reaper will", exc)
        return
    finally:
        requeue.reset()
    if moved:
        logger.warning("returned %d message(s) from this worker's inbox before leaving", moved)


#: The step of this process's worker (one worker per process; set in the step's __init__).
_current: FleetStep | None = None


def _track(step: FleetStep) -> None:
    global _current
    _current = step


def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    """After the pool drained (warm shutdown): deregister."""
    step = _current
    if step is not None and (sender is None or sender is step.agent.worker):
        step.leave("warm shutdown")


def on_task_postrun(state: str | None = None, **_: Any) -> None:
    """In the pool child that ran the task: count its outcome in shared memory."""
    step = _current
    if step is not None and state:
        step.agent.counters.count(state)


def freeze_before_fork(**_: Any) -> None:
    """Before the prefork pool forks its first child: collect, then freeze what start-up made
    (modules, the app, ops) into the GC's permanent generation. A pool child's full collections
    then skip those objects instead of writing to each one's GC header, which copied nearly
    every page the child shared with the main process (~10 MiB PSS per child, measured by
    bench/memory_bench.py). Once per process: a later fork (a child replaced, autoscaling)
    would also freeze requests in flight, which the main process could then never collect."""
    if gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()


def _at_exit() -> None:
    # Safety net for an exit path that neither sent worker_shutdown nor called terminate():
    # leave rather than make the fleet wait a lease TTL. `finish` is a no-op in pool children.
    step = _current
    if step is not None:
        step.leave("process exit")


def install_fleet(app: Any, services: Sequence[ServiceFactory] | None = None) -> None:
    """Add the fleet step to the worker blueprint, with these services (None: the
    DEFAULT_SERVICES of when the worker starts)."""
    app.fleet_services = services
    app.steps["worker"].add(FleetStep)
    # dispatch_uid: an app built twice in one process connects each receiver once.
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False, dispatch_uid="bot.fleet.stop")
    signals.task_postrun.connect(on_task_postrun, weak=False, dispatch_uid="bot.fleet.count")
    signals.worker_before_create_process.connect(
        freeze_before_fork, weak=False, dispatch_uid="bot.fleet.freeze"
    )


# A no-op unless this process runs a fleet step.
atexit.register(_at_exit)
