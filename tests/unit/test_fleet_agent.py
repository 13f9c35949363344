"""The fleet agent and step pieces without a worker process: heartbeat DEGRADED/recovery,
the heartbeat breaker, re-registration of a vanished record, registration backoff giving up,
the pool check, periodic services, and outcome counters shared across fork.

fakeredis (with Lua) stands in for Redis; the e2e tests run the same paths for real."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis

import bot.fleet.membership as fleet_agent
from bot.base.exits import EXIT_STARTUP_FAILED
from bot.fleet.identity import resolve_identity
from bot.fleet.lifecycle import State
from bot.fleet.membership import FleetAgent, StartupFailed
from bot.fleet.records import WorkerRecords
from bot.fleet.services import PeriodicService
from bot.fleet.step import UnsupportedPool, refuse_unsupported_pool
from bot.runtime.worker_state import OutcomeCounters
from bot.store.keys import Keys
from config.settings import Settings

KEYS = Keys("bot")


class FlakyRegistry(WorkerRecords):
    """A WorkerRecords whose heartbeats fail while `down` is set."""

    down = False

    def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise redis.ConnectionError("redis is down")
        return super().heartbeat(*args, **kwargs)


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def agent(tmp_path: Path, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> FleetAgent:
    monkeypatch.setattr(fleet_agent, "_ping_url", lambda url, sentinel_master: None)
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",
        state_dir=tmp_path,
        heartbeat_interval=0.5,
        breaker_threshold=2,
        retry_base_delay=0.0,
        max_startup_attempts=3,
    )
    app = SimpleNamespace(
        settings=settings,
        keys=KEYS,
        conf=SimpleNamespace(broker_url=None, result_backend=None, broker_transport_options={}),
    )
    worker = SimpleNamespace(pool=SimpleNamespace(num_processes=3), autoscale=None, app=None)
    made = FleetAgent(app, worker, resolve_identity(tmp_path, "w1@test"))
    made._registry = FlakyRegistry(client, KEYS)
    return made


def record(client: redis.Redis, agent: FleetAgent) -> dict[str, str]:
    return client.hgetall(KEYS.worker(agent.identity.instance_id))  # type: ignore[return-value]


def ready(agent: FleetAgent) -> FleetAgent:
    agent.lifecycle.to(State.REGISTERING)
    agent.register()
    agent.lifecycle.to(State.HEALTH_CHECK)
    assert agent.health_problems() == []
    agent.lifecycle.to(State.READY)
    agent.beat()
    return agent


def test_registration_writes_the_operator_record(client: redis.Redis, agent: FleetAgent) -> None:
    ready(agent)

    rec = record(client, agent)
    assert rec["state"] == "READY"
    assert rec["pool"] == "3"
    assert rec["bot_id"] == agent.identity.bot_id
    assert rec["pid"] == str(os.getpid())
    assert (rec["done"], rec["failed"], rec["in_flight"]) == ("0", "0", "0")
    breakers = json.loads(rec["breakers"])
    assert set(breakers) == {"registration", "heartbeat", "acquire"}
    assert client.pttl(KEYS.lease(agent.identity.instance_id)) > 0


def test_failed_heartbeat_degrades_and_a_good_one_recovers(
    client: redis.Redis, agent: FleetAgent
) -> None:
    ready(agent)
    registry: FlakyRegistry = agent.registry  # type: ignore[assignment]

    registry.down = True
    agent.beat()
    assert agent.lifecycle.state is State.DEGRADED

    registry.down = False
    agent.beat()
    assert agent.lifecycle.state is State.READY
    agent.beat()  # in a worker the transition wakes the heartbeat thread for this write
    counts = json.loads(record(client, agent)["transitions"])
    assert counts["READY->DEGRADED"] == counts["DEGRADED->READY"] == 1


def test_an_open_heartbeat_breaker_skips_redis_and_shows_in_the_record(
    client: redis.Redis, agent: FleetAgent
) -> None:
    ready(agent)
    registry: FlakyRegistry = agent.registry  # type: ignore[assignment]
    registry.down = True
    agent.beat()
    agent.beat()  # threshold 2: now open
    registry.down = False

    agent.beat()  # refused by the breaker: Redis is not tried, still degraded

    assert agent.lifecycle.state is State.DEGRADED
    assert agent.breakers["heartbeat"].snapshot() == {"state": "open", "failures": 2}


def test_a_vanished_record_is_registered_again(client: redis.Redis, agent: FleetAgent) -> None:
    ready(agent)
    client.delete(KEYS.worker(agent.identity.instance_id), KEYS.lease(agent.identity.instance_id))

    agent.beat()

    assert record(client, agent)["instance_id"] == agent.identity.instance_id
    assert client.exists(KEYS.lease(agent.identity.instance_id)) == 1


def test_shutdown_only_marks_then_finish_deregisters(
    client: redis.Redis, agent: FleetAgent
) -> None:
    ready(agent)

    agent.begin_shutdown("warm")
    agent.beat()
    assert record(client, agent)["state"] == "SHUTTING_DOWN"
    agent.finish("warm shutdown")

    assert agent.lifecycle.state is State.STOPPED
    assert record(client, agent) == {}
    assert client.zscore(KEYS.workers, agent.identity.instance_id) is None
    agent.finish("again")  # idempotent


def test_registration_gives_up_after_the_cap(
    agent: FleetAgent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def refuse() -> None:
        calls.append(1)
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(agent, "register", refuse)
    agent.breakers["registration"].timeout_s = 0.01  # threshold 2: it opens on the way
    agent.lifecycle.to(State.REGISTERING)

    with pytest.raises(StartupFailed) as failed:
        agent._register_with_backoff()

    assert failed.value.code == EXIT_STARTUP_FAILED
    assert len(calls) == 3
    assert agent.lifecycle.state is State.STOPPED
    assert [r.message for r in caplog.records if r.levelname == "CRITICAL"] == [
        failed.value.message
    ]


def test_autoscale_needs_prefork() -> None:
    from celery.concurrency.prefork import TaskPool as Prefork
    from celery.concurrency.thread import TaskPool as Threads

    refuse_unsupported_pool(SimpleNamespace(pool_cls=Prefork, autoscale=[4, 1]))
    refuse_unsupported_pool(SimpleNamespace(pool_cls=Threads, autoscale=None))
    with pytest.raises(UnsupportedPool) as refused:
        refuse_unsupported_pool(SimpleNamespace(pool_cls=Threads, autoscale=[4, 1]))
    assert refused.value.code == 2
    assert "not --pool threads" in refused.value.message


def test_periodic_service_runs_again_after_an_exception() -> None:
    runs: list[int] = []
    third = threading.Event()

    def job() -> None:
        runs.append(1)
        if len(runs) >= 3:
            third.set()
        raise RuntimeError("boom")

    service = PeriodicService("test", 0.01, job)
    service.start()
    try:
        assert third.wait(5)
    finally:
        service.stop()


def test_outcome_counters_are_shared_with_forked_children() -> None:
    counters = OutcomeCounters()

    pid = os.fork()
    if pid == 0:  # the "pool child"
        counters.count("SUCCESS")
        counters.count("SUCCESS")
        counters.count("FAILURE")
        counters.count("RETRY")
        os._exit(0)
    os.waitpid(pid, 0)

    assert (counters.done, counters.failed) == (2, 1)


def test_an_open_sink_breaker_degrades_and_its_closing_recovers(
    client: redis.Redis, agent: FleetAgent
) -> None:
    from bot.base.breaker import CircuitBreaker

    ready(agent)
    sink = CircuitBreaker("sink:http", threshold=1, timeout_s=60)
    agent.breakers["sink:http"] = sink

    sink.record_failure()
    agent.beat()
    assert agent.lifecycle.state is State.DEGRADED
    assert json.loads(record(client, agent)["breakers"])["sink:http"]["state"] == "open"

    sink.record_success()
    agent.beat()
    assert agent.lifecycle.state is State.READY


def test_redis_memory_over_the_limit_degrades_with_its_reason_and_recovers_when_freed(
    client: redis.Redis, agent: FleetAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = {"used_memory": 10, "maxmemory": 100}
    monkeypatch.setattr(client, "info", lambda section: dict(memory), raising=False)
    agent.memory_guard.min_interval_s = 0.0  # every beat reads INFO here
    ready(agent)
    assert (record(client, agent)["state"], record(client, agent)["memory_guard"]) == ("READY", "0")

    memory["used_memory"] = 93
    agent.beat()
    assert agent.lifecycle.state is State.DEGRADED
    agent.beat()  # in a worker the transition wakes the heartbeat thread for this write
    rec = record(client, agent)
    assert rec["state"] == "DEGRADED" and rec["memory_guard"] == "1"
    assert rec["state_reason"] == "redis memory 93% of maxmemory (limit 90%)"

    memory["used_memory"] = 89  # under the limit, not under its hysteresis: still degraded
    agent.beat()
    assert agent.lifecycle.state is State.DEGRADED
    assert agent.lifecycle.reason == "redis memory 89% of maxmemory (limit 90%)"

    memory["used_memory"] = 50
    agent.beat()
    assert agent.lifecycle.state is State.READY
    agent.beat()
    assert record(client, agent)["memory_guard"] == "0"


def test_a_redis_without_maxmemory_never_degrades_for_memory(
    client: redis.Redis, agent: FleetAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        client, "info", lambda section: {"used_memory": 10**12, "maxmemory": 0}, raising=False
    )
    agent.memory_guard.min_interval_s = 0.0
    ready(agent)
    agent.beat()
    assert agent.lifecycle.state is State.READY
