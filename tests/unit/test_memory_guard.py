"""The Redis memory guard's verdicts: the limit, the hysteresis that leaves it, maxmemory 0
(no limit: off), one INFO per interval, and a Redis that refuses INFO or is unreachable."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from bot.fleet.memory_guard import HYSTERESIS, MemoryGuard

MB = 1_000_000


def test_over_the_share_of_maxmemory_is_a_problem_naming_both() -> None:
    guard = MemoryGuard(0.9, 5.0)

    assert guard.judge(89 * MB, 100 * MB) is None
    assert guard.tripped is False
    assert guard.judge(93 * MB, 100 * MB) == "redis memory 93% of maxmemory (limit 90%)"
    assert guard.tripped is True


def test_exactly_at_the_limit_trips_the_guard() -> None:
    assert MemoryGuard(0.9, 5.0).judge(90 * MB, 100 * MB) is not None
    assert MemoryGuard(1.0, 5.0).judge(100 * MB, 100 * MB) is not None
    assert MemoryGuard(1.0, 5.0).judge(99 * MB, 100 * MB) is None


def test_the_guard_is_left_two_points_below_the_limit() -> None:
    guard = MemoryGuard(0.9, 5.0)
    guard.judge(95 * MB, 100 * MB)

    assert HYSTERESIS == 0.02
    assert guard.judge(89 * MB, 100 * MB) is not None  # below the limit, not below 88%
    assert guard.judge(int(88.5 * MB), 100 * MB) is not None
    assert guard.judge(87 * MB, 100 * MB) is None
    assert guard.judge(89 * MB, 100 * MB) is None  # back under the limit itself to trip again


def test_no_maxmemory_turns_the_guard_off() -> None:
    guard = MemoryGuard(0.9, 5.0)
    guard.judge(95 * MB, 100 * MB)

    assert guard.judge(50_000 * MB, 0) is None
    assert guard.tripped is False


class FakeClient:
    def __init__(self, used: int, maxmemory: int) -> None:
        self.memory = {"used_memory": used, "maxmemory": maxmemory, "maxmemory_policy": "x"}
        self.calls = 0
        self.error: Exception | None = None

    def info(self, section: str) -> dict[str, Any]:
        assert section == "memory"
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.memory


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_info_is_read_at_most_once_per_interval() -> None:
    client, clock = FakeClient(95 * MB, 100 * MB), Clock()
    guard = MemoryGuard(0.9, 5.0, clock)

    assert guard.check(client) is not None  # type: ignore[arg-type]
    client.memory["used_memory"] = 10 * MB
    assert guard.check(client) is not None  # type: ignore[arg-type]  # the last verdict
    assert client.calls == 1
    clock.now += 5.0
    assert guard.check(client) is None  # type: ignore[arg-type]
    assert client.calls == 2


def test_an_unreachable_redis_keeps_the_last_verdict() -> None:
    client, clock = FakeClient(95 * MB, 100 * MB), Clock()
    guard = MemoryGuard(0.9, 1.0, clock)
    guard.check(client)  # type: ignore[arg-type]

    client.error = redis.ConnectionError("gone")
    clock.now += 1.0
    assert guard.check(client) == "redis memory 95% of maxmemory (limit 90%)"  # type: ignore[arg-type]


def test_a_redis_refusing_info_turns_the_guard_off_once(caplog: pytest.LogCaptureFixture) -> None:
    client, clock = FakeClient(95 * MB, 100 * MB), Clock()
    client.error = redis.ResponseError("NOPERM this user has no permissions to run 'info'")
    guard = MemoryGuard(0.9, 1.0, clock)

    assert guard.check(client) is None  # type: ignore[arg-type]
    clock.now += 10
    assert guard.check(client) is None  # type: ignore[arg-type]
    assert client.calls == 1
    assert caplog.text.count("Redis memory guard off") == 1
