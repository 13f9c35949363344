"""Shared fixtures: a private redis-server for the session, a clean database per test, real
worker processes, and a settings factory for in-process apps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.application import BotApp, create_app
from tests.support.flower import running_flower
from tests.support.processes import FAULT_OPS, WorkerProcess, bot_env
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server (AOF on) for the whole session, on a free loopback port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server (AOF on) of this test's own, which it may stop, kill and restart without
    disturbing any other test; stopped after the test."""
    server = RedisServer(tmp_path / "private-redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, emptied before the test."""
    if redis_server.process is None:  # a fault test stopped it and failed before restarting
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url()


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    """A client of the test's (emptied) Redis, decoding to str."""
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def bot_app(make_settings: Callable[..., Any]) -> Iterator[BotApp]:
    """An in-process app (no fleet step) against the test's Redis, closed after the test."""
    app = create_app(make_settings(), fleet=False)
    yield app
    app.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP report receiver on a free loopback port (answers 200 until told otherwise)."""
    rx = Receiver().up()
    yield rx
    rx.down()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def env(redis_url: str, state_dir: Path) -> dict[str, str]:
    """Environment for bot subprocesses (workers, CLI) against the test's Redis."""
    return bot_env(redis_url, state_dir)


@pytest.fixture
def make_settings(redis_url: str, state_dir: Path) -> Callable[..., Any]:
    """Settings for an in-process app against the test's Redis, with the test-only ops;
    keyword overrides."""
    from config.settings import Settings

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "state_dir": state_dir,
            "ops_modules": [FAULT_OPS],
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def workers(tmp_path: Path, env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory of started, ready worker processes; every one is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(
        name: str = "w1",
        *,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
        **kwargs: Any,
    ) -> WorkerProcess:
        worker = WorkerProcess(name, {**env, **(extra_env or {})}, tmp_path, **kwargs).start()
        started.append(worker)
        return worker.wait_ready() if wait else worker

    yield start
    for worker in started:
        worker.stop(timeout_s=10)


@pytest.fixture
def flower(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A real Flower with basic auth (tests.support.flower.FLOWER_AUTH); its base URL."""
    with running_flower(env, tmp_path) as base:
        yield base
