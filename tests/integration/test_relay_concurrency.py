"""The relay with POSTs in flight (BOT_REPORT_CONCURRENCY) and in batches (BOT_REPORT_BATCH),
against a real redis-server and a real HTTP receiver on loopback: 1,000 reports through a sink
with random latency and 503s (each delivered once, none acked before the sink's 2xx for it), a
relay process kill -9'd with 16 POSTs held open by the sink (another relay delivers what it
held; nothing lost), and a sink accepting half of each batch (the rest retried, none twice)."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bot.outbox.relay import Relay
from bot.outbox.sinks import HttpSink
from bot.outbox.stream import Outbox
from bot.store.connect import connect
from bot.store.keys import Keys
from config.settings import Settings
from tests.support.processes import FAST_FLEET, bot_env, wait_for
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer
from tests.support.relay_process import RelayProcess

pytestmark = pytest.mark.integration

KEYS = Keys("bot")
TOKEN = "relay-test-token"
FAST = {
    "heartbeat_interval": 0.2,
    "retry_base_delay": 0.02,
    "retry_max_delay": 0.1,
    "breaker_threshold": 1000,
    "outbox_max_deliveries": 1000,
}


@pytest.fixture
def relays(
    make_settings: Callable[..., Settings], receiver: Receiver
) -> Iterator[Callable[..., Relay]]:
    made: list[Relay] = []

    def make(name: str = "r1", **env: object) -> Relay:
        settings = make_settings(
            **{"report_url": receiver.url, "report_token": TOKEN, **FAST, **env}
        )
        sink = HttpSink(
            receiver.url,
            TOKEN,
            connect_timeout_s=1.0,
            read_timeout_s=5.0,
            connections=settings.report_concurrency,
        )
        relay = Relay.from_settings(settings, connect(settings), sink, name)
        made.append(relay)
        relay.start()
        return relay

    yield make
    for relay in made:
        relay.stop()
        relay.sink.close()


def append(client: redis.Redis, n: int) -> dict[str, str]:
    """n reports; job id -> entry id."""
    return {
        f"j{i}": str(
            client.xadd(KEYS.outbox, {"job_id": f"j{i}", "report": json.dumps({"job_id": f"j{i}"})})
        )
        for i in range(n)
    }


def owed(client: redis.Redis) -> int:
    groups = Outbox(client, KEYS).stats()["groups"]
    return sum(int(g["owed"]) for g in groups)


def test_1000_reports_through_a_slow_flaky_sink_each_delivered_once_none_acked_early(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    # Given a sink answering after 0-20 ms, 5 % of its answers 503, and checking as it
    # answers 2xx for a report that the relay still holds it pending (not acked)
    client = redis_server.client()
    rng = random.Random(7)
    lock = threading.Lock()
    entry_of: dict[str, str] = {}
    acked_early: list[str] = []

    def latency() -> float:
        with lock:
            return rng.uniform(0.0, 0.02)

    def status_for(job_id: str) -> int:
        with lock:
            return 503 if rng.random() < 0.05 else 200

    def still_pending(job_id: str, status: int) -> None:
        if status == 200:
            entry = entry_of[job_id]
            if not client.xpending_range(KEYS.outbox, "http", entry, entry, 1):
                acked_early.append(job_id)

    receiver.latency, receiver.status_for, receiver.before_answer = (
        latency,
        status_for,
        still_pending,
    )
    entry_of.update(append(client, 1000))

    # When one relay with 16 POSTs in flight drains them
    relay = relays(report_concurrency=16)

    # Then every report is accepted exactly once, none was acked before its 2xx, and the
    # relay did keep several POSTs in flight (never more than 16)
    everything = lambda: len(receiver.accepted_counts()) == 1000  # noqa: E731
    wait_for(lambda: everything() or acked_early, 60, "1,000 reports accepted")
    assert acked_early == []
    wait_for(lambda: owed(client) == 0, 10, "nothing owed")
    counts = receiver.accepted_counts()
    assert set(counts) == set(entry_of) and max(counts.values()) == 1
    assert 8 <= receiver.max_in_flight <= 16
    snap = relay.snapshot()
    assert snap["delivered"] == 1000 and snap["failed"] == len(receiver.requests) - 1000 > 0
    assert Outbox(client, KEYS).stats()["dead"] == 0


def test_a_sink_accepting_half_of_each_batch_gets_every_report_once(
    redis_server: RedisServer, receiver: Receiver, relays: Callable[..., Relay]
) -> None:
    # Given a sink that accepts the first half (rounded up) of each batch it is sent
    receiver.batch_accept = lambda ids: ids[: (len(ids) + 1) // 2]
    client = redis_server.client()
    job_ids = set(append(client, 200))

    # When a relay sends batches of up to 10, four in flight
    relays(report_batch=10, report_concurrency=4)

    # Then the rest of each batch is retried until taken: each report accepted once, none lost
    wait_for(lambda: set(receiver.accepted_counts()) == job_ids, 30, "200 reports accepted")
    wait_for(lambda: owed(client) == 0, 10, "nothing owed")
    assert max(receiver.accepted_counts().values()) == 1
    assert max(len(batch) for batch in receiver.batches) == 10
    assert len(receiver.batches) > 20  # halves were sent again
    assert Outbox(client, KEYS).stats()["dead"] == 0
    assert all(r.idempotency_key is None for r in receiver.requests)  # keys are in the body


def test_a_relay_killed_with_16_posts_in_flight_loses_nothing(
    redis_url: str,
    redis_server: RedisServer,
    receiver: Receiver,
    state_dir: Path,
    tmp_path: Path,
) -> None:
    # Given a sink that holds every request open, and 100 reports
    receiver.hold = threading.Event()
    client = redis_server.client()
    job_ids = set(append(client, 100))
    env = bot_env(
        redis_url,
        state_dir,
        {
            **FAST_FLEET,
            "BOT_REPORT_URL": receiver.url,
            "BOT_REPORT_TOKEN": TOKEN,
            "BOT_REPORT_CONCURRENCY": "16",
        },
    )
    doomed = RelayProcess("doomed", env, tmp_path).start()
    started = [doomed]
    try:
        # When the relay has 16 POSTs in flight, and is kill -9'd
        wait_for(lambda: receiver.in_flight == 16, 20, "16 POSTs in flight")
        held = set(receiver.arrivals)
        assert len(held) == 16 and receiver.max_in_flight == 16
        doomed.kill()
        receiver.hold.set()  # the sink takes what it held (the relay is gone: no XACK)

        # Then another relay claims what the dead one held and every report is delivered
        rescuer = RelayProcess("rescuer", env, tmp_path).start()
        started.append(rescuer)
        wait_for(lambda: set(receiver.accepted_counts()) == job_ids, 60, "100 accepted")
        wait_for(lambda: owed(client) == 0, 20, "nothing owed")
        wait_for(lambda: rescuer.status().get("claimed", 0) >= 16, 10, "the claim counted")
    finally:
        for relay in started:
            relay.stop()

    # Only the reports in flight at the kill reached the sink twice (it dedupes on the key)
    twice = {job for job, n in receiver.accepted_counts().items() if n > 1}
    assert twice <= held
    assert max(receiver.accepted_counts().values()) <= 2
    assert all(r.idempotency_key == r.job_id for r in receiver.requests)
