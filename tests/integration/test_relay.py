"""The relay against a real redis-server and a real HTTP receiver on loopback, in-process:
headers, breaker through a receiver outage, several relays on one group, claiming a dead
consumer's entries, dead letters and replay, reports the receiver refuses (4xx) or no request
can carry dead-lettered at once with the breaker closed, a Redis restart mid-drain, trimming."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bot.base.breaker import BreakerState
from bot.outbox.relay import Relay
from bot.outbox.relay_config import RelayConfig
from bot.outbox.sinks import HttpSink
from bot.outbox.stream import Outbox
from bot.store.connect import connect
from bot.store.keys import Keys
from config.settings import Settings
from tests.support.processes import wait_for
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

KEYS = Keys("bot")
TOKEN = "relay-test-token"
FAST = {
    "heartbeat_interval": 0.2,
    "retry_base_delay": 0.02,
    "retry_max_delay": 0.1,
    "breaker_threshold": 3,
    "breaker_timeout": 0.3,
    "outbox_max_deliveries": 1000,
}


@pytest.fixture
def relays(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> Iterator[Callable[..., Relay]]:
    """Factory of relays (same group `http`) delivering to `receiver`; all stopped after."""
    made: list[Relay] = []

    def make(name: str = "r1", *, start: bool = True, **overrides: object) -> Relay:
        config = {k: v for k, v in overrides.items() if k in RelayConfig.__dataclass_fields__}
        env = {k: v for k, v in overrides.items() if k not in config}
        settings = make_settings(
            **{"report_url": receiver.url, "report_token": TOKEN, **FAST, **env}
        )
        sink = HttpSink(receiver.url, TOKEN, connect_timeout_s=0.5, read_timeout_s=2.0)
        relay = Relay.from_settings(settings, connect(settings), sink, name, **config)
        made.append(relay)
        if start:
            relay.start()
        return relay

    yield make
    for relay in made:
        relay.stop()
        relay.sink.close()


def append(client: redis.Redis, n: int, prefix: str = "j") -> list[str]:
    return [
        str(
            client.xadd(
                KEYS.outbox,
                {"job_id": f"{prefix}{i}", "report": json.dumps({"job_id": f"{prefix}{i}"})},
            )
        )
        for i in range(n)
    ]


def delivered_once(receiver: Receiver, n: int, prefix: str = "j") -> bool:
    counts = receiver.accepted_counts()
    return len(counts) == n and set(counts) == {f"{prefix}{i}" for i in range(n)}


def test_delivers_with_bearer_and_idempotency_key(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    append(redis_server.client(), 3)
    relay = relays()

    wait_for(lambda: delivered_once(receiver, 3), 10, "3 reports at the receiver")

    assert {(r.idempotency_key, r.authorization) for r in receiver.requests} == {
        (f"j{i}", f"Bearer {TOKEN}") for i in range(3)
    }
    assert relay.snapshot()["delivered"] == 3
    assert Outbox(redis_server.client(), KEYS).stats()["groups"][0]["owed"] == 0


def test_receiver_down_opens_the_breaker_and_everything_is_delivered_once_back(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    # Given the receiver down while 200 reports arrive
    receiver.down()
    client = redis_server.client()
    relay = relays()
    append(client, 200)
    box = Outbox(client, KEYS)

    # Then the breaker opens and nothing is lost: all 200 are still owed
    wait_for(lambda: relay.breaker.state is not BreakerState.CLOSED, 10, "the breaker to open")
    assert box.stats()["groups"][0]["owed"] == 200

    # When the receiver comes back, every report arrives once and the breaker closes
    receiver.up()
    wait_for(lambda: delivered_once(receiver, 200), 30, "200 reports at the receiver")
    assert max(receiver.accepted_counts().values()) == 1
    wait_for(lambda: box.stats()["groups"][0]["owed"] == 0, 10, "nothing owed")
    assert relay.breaker.state is BreakerState.CLOSED
    assert box.stats()["dead"] == 0


def test_three_relays_on_one_group_deliver_each_report_once(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    for name in ("r1", "r2", "r3"):
        relays(name)

    append(redis_server.client(), 600)

    wait_for(lambda: delivered_once(receiver, 600), 60, "600 reports at the receiver")
    assert len(receiver.accepted()) == 600  # none twice


def test_a_dead_consumers_pending_entries_are_claimed_and_delivered(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    # Given 5 entries read by a relay that then died (its pending list stays)
    client = redis_server.client()
    box = Outbox(client, KEYS)
    box.ensure_group("http")
    append(client, 5)
    box.read_new(KEYS.outbox, "http", "dead-relay", 10)

    # When a live relay runs with a short claim idle time
    relay = relays("live", claim_idle_ms=300)

    # Then it claims and delivers them
    wait_for(lambda: delivered_once(receiver, 5), 15, "the dead relay's reports delivered")
    assert relay.snapshot()["claimed"] == 5
    assert box.pending(KEYS.outbox, "http", 10) == []


def test_a_live_relay_in_backoff_is_not_claimed_from(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    # Given relay A holding 3 failing entries in a long backoff, touching them every 0.2 s
    receiver.status = 500
    client = redis_server.client()
    a = relays("a", retry_base_delay=30.0, retry_max_delay=30.0, breaker_threshold=100)
    append(client, 3)
    wait_for(lambda: a.snapshot()["failed"] >= 3, 10, "A's first failures")

    # When relay B runs with a claim idle time of 1 s for 2 s
    b = relays("b", claim_idle_ms=1000)
    wait_for(lambda: b.snapshot()["running"], 5, "B running")
    pending_owners = []
    for _ in range(20):
        pending_owners.append(
            {p.consumer for p in Outbox(client, KEYS).pending(KEYS.outbox, "http", 10)}
        )
        time.sleep(0.1)

    # Then A still holds them all: a live relay's entries never age into a claim
    assert all(owners == {"a"} for owners in pending_owners)
    assert b.snapshot()["claimed"] == 0


def test_refused_reports_are_dead_lettered_then_replayed(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    # Given a receiver that always answers 500 and max 3 deliveries
    receiver.status = 500
    client = redis_server.client()
    box = Outbox(client, KEYS)
    relays(outbox_max_deliveries=3, breaker_threshold=1000)
    append(client, 10)

    # Then each report is tried 3 times and dead-lettered
    wait_for(lambda: box.stats()["dead"] == 10, 20, "10 dead letters")
    tries = {}
    for r in receiver.requests:
        tries[r.job_id] = tries.get(r.job_id, 0) + 1
    assert tries == {f"j{i}": 3 for i in range(10)}
    assert box.stats()["groups"][0]["owed"] == 0

    # When the receiver answers 200 and all are replayed, each arrives once
    receiver.status = 200
    assert box.replay_all() == 10
    wait_for(lambda: delivered_once(receiver, 10), 15, "the replayed reports")
    assert max(receiver.accepted_counts().values()) == 1
    assert box.stats()["dead"] == 0


def test_a_400_for_some_reports_dead_letters_them_at_first_answer_and_the_rest_flow(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    # Given a receiver that answers 400 to 5 of 30 reports (more than the breaker threshold of
    # 3, in a row), and two reports whose job id no header can carry
    client = redis_server.client()
    box = Outbox(client, KEYS)
    refused = {f"j{i}" for i in (3, 4, 5, 6, 20)}
    receiver.statuses = dict.fromkeys(refused, 400)
    receiver.body = b"unknown op"
    append(client, 30)
    unsendable = {"bad\r\nX-Injected: 1", "caf\u00e9"}
    for job_id in unsendable:
        client.xadd(KEYS.outbox, {"job_id": job_id, "report": json.dumps({"job_id": job_id})})

    # When the relay runs (up to 1000 deliveries per report before a dead letter)
    relay = relays()

    # Then the 25 others are delivered once, and the 7 bad ones dead-lettered on their first
    # answer (the unsendable ones never sent), with no failure counted against the sink
    good = {f"j{i}" for i in range(30)} - refused
    wait_for(lambda: set(receiver.accepted_counts()) == good, 15, "25 reports delivered")
    wait_for(lambda: box.stats()["dead"] == 7, 10, "7 dead letters")
    dead = {d["job_id"]: d for d in box.dead()}
    assert set(dead) == refused | unsendable
    assert {dead[j]["deliveries"] for j in dead} == {"1"}
    assert {dead[j]["reason"] for j in refused} == {"HTTP 400: unknown op"}
    assert all("header" in dead[j]["reason"] for j in unsendable)
    assert sorted(r.job_id for r in receiver.requests if r.status == 400) == sorted(refused)
    snap = relay.snapshot()
    assert (snap["failed"], snap["rejected"], snap["delivered"]) == (0, 7, 25)
    assert relay.breaker.state is BreakerState.CLOSED and relay.breaker.failures == 0
    wait_for(lambda: box.stats()["groups"][0]["owed"] == 0, 10, "nothing owed")


def test_redis_restart_mid_drain_loses_and_duplicates_nothing(
    private_redis: RedisServer, receiver: Receiver, state_dir: Path
) -> None:
    # Given a private AOF redis with 400 reports and a relay draining them slowly
    append(private_redis.client(), 400)
    receiver.delay_s = 0.005
    settings = Settings(
        redis_url=private_redis.url(), state_dir=state_dir, report_url=receiver.url, **FAST
    )
    relay = Relay.from_settings(settings, connect(settings), HttpSink(receiver.url, TOKEN), "r1")
    relay.start()
    wait_for(lambda: len(receiver.accepted()) >= 50, 20, "the drain to start")

    # When redis-server is stopped and started again (AOF) mid-drain
    private_redis.restart(down_for_s=1.0)

    # Then every report arrives, none twice, and the relay recovered by itself
    wait_for(lambda: delivered_once(receiver, 400), 60, "400 reports after the restart")
    relay.stop()
    assert max(receiver.accepted_counts().values()) == 1
    assert relay.snapshot()["redis_errors"] >= 1
    assert Outbox(private_redis.client(), KEYS).stats()["groups"][0]["owed"] == 0


def test_relay_trims_but_keeps_what_a_far_behind_group_owes(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    # Given a second group "audit" that has read nothing
    client = redis_server.client()
    box = Outbox(client, KEYS)
    box.ensure_group("audit")
    ids = append(client, 300)

    # When the relay delivers everything and trims to 10 entries
    relay = relays(max_len=10, max_age_s=0.0, trim_interval_s=3600.0)
    wait_for(lambda: delivered_once(receiver, 300), 20, "300 reports delivered")
    relay.trim()

    # Then nothing is trimmed: audit still owes all 300
    assert client.xlen(KEYS.outbox) == 300
    got = box.read_new(KEYS.outbox, "audit", "a1", 1000)
    assert [e.id for e in got] == ids
    box.ack(KEYS.outbox, "audit", *ids[:295])
    assert relay.trim() == 295  # audit caught up except the last 5 pending
    assert [e[0] for e in client.xrange(KEYS.outbox)] == ids[-5:]
