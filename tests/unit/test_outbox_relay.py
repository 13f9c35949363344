"""The relay's decisions with an injected clock and a scripted sink, on fakeredis: per-entry
backoff, the breaker (no reads while open, one trial half-open), dead-lettering after the
configured deliveries, rejected reports dead-lettered at once without touching the breaker,
and that a delivered entry is acked exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator

import fakeredis
import pytest

from bot.base.breaker import BreakerState
from bot.outbox.delivery import DeliveryFailed, DeliveryRejected
from bot.outbox.relay import Relay
from bot.outbox.relay_config import RelayConfig
from bot.outbox.stream import Outbox
from bot.store.keys import Keys

KEYS = Keys("bot")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedSink:
    """Answers ok or fails as told; records what it was asked to deliver."""

    name = "http"
    timeout_s = 1.0

    def __init__(self) -> None:
        self.ok = True
        self.bug = False  # raise something other than DeliveryFailed (a bug in a sink)
        self.calls: list[str] = []
        self.refused: set[str] = set()  # deliver() answers these with a 4xx
        self.malformed: set[str] = set()  # check() rejects these

    def check(self, job_id: str, report_json: str) -> None:
        if job_id in self.malformed:
            raise DeliveryRejected("job id is not a valid header value")

    def deliver(self, job_id: str, report_json: str) -> None:
        self.calls.append(job_id)
        assert json.loads(report_json)["job_id"] == job_id
        if job_id in self.refused:
            raise DeliveryRejected("HTTP 400: no such op")
        if self.bug:
            raise KeyError("a sink bug")
        if not self.ok:
            raise DeliveryFailed("HTTP 500")

    def close(self) -> None:
        pass


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    server = fakeredis.FakeServer()
    yield fakeredis.FakeRedis(server=server, decode_responses=True)


def make_relay(
    client: fakeredis.FakeRedis, sink: ScriptedSink, clock: Clock, **config: object
) -> Relay:
    values: dict[str, object] = {
        "max_deliveries": 3,
        "retry_base_s": 1.0,
        "retry_max_s": 8.0,
        "breaker_threshold": 2,
        "breaker_timeout_s": 30.0,
        "claim_interval_s": 3600.0,
        "touch_interval_s": 3600.0,
        "trim_interval_s": 3600.0,
    }
    values.update(config)
    return Relay(client, KEYS, sink, "me", RelayConfig(**values), clock=clock, rand=lambda: 1.0)  # type: ignore[arg-type]


def append(client: fakeredis.FakeRedis, *job_ids: str) -> None:
    for job_id in job_ids:
        client.xadd(KEYS.outbox, {"job_id": job_id, "report": json.dumps({"job_id": job_id})})


def test_delivers_and_acks_each_entry_once(client: fakeredis.FakeRedis) -> None:
    sink, clock = ScriptedSink(), Clock()
    relay = make_relay(client, sink, clock)
    append(client, "a", "b", "c")

    assert relay.run_once() == 3
    assert relay.run_once() == 0

    assert sink.calls == ["a", "b", "c"]
    assert relay.snapshot()["delivered"] == 3
    assert Outbox(client, KEYS).pending(KEYS.outbox, "http", 10) == []


def test_a_failed_entry_waits_its_backoff_then_is_retried(client: fakeredis.FakeRedis) -> None:
    sink, clock = ScriptedSink(), Clock()
    relay = make_relay(client, sink, clock, breaker_threshold=100)
    append(client, "a")
    sink.ok = False
    relay.run_once()  # delivery 1 fails: next try after base * 2**0 = 1 s (rand=1: the ceiling)

    clock.now += 0.9
    assert relay.run_once() == 0
    clock.now += 0.2
    sink.ok = True
    assert relay.run_once() == 1

    assert sink.calls == ["a", "a"]
    assert relay.snapshot()["failed"] == 1 and relay.snapshot()["delivered"] == 1


def test_an_entry_whose_sink_raised_stays_owed_and_is_retried(
    client: fakeredis.FakeRedis,
) -> None:
    # Given a sink with a bug: it raises something other than DeliveryFailed
    sink, clock = ScriptedSink(), Clock()
    relay = make_relay(client, sink, clock, breaker_threshold=100)
    append(client, "a")
    sink.bug = True

    # When a pass tries the entry, the relay survives and the entry is not acked
    assert relay.run_once() == 1
    assert [p.id for p in Outbox(client, KEYS).pending(KEYS.outbox, "http", 10)]
    assert relay.snapshot()["delivered"] == 0

    # Then, the sink fixed, it is delivered after its backoff and only then acked
    sink.bug = False
    clock.now += 10
    assert relay.run_once() == 1
    assert sink.calls == ["a", "a"]
    assert Outbox(client, KEYS).pending(KEYS.outbox, "http", 10) == []


def test_dead_lettered_after_max_deliveries(client: fakeredis.FakeRedis) -> None:
    sink, clock = ScriptedSink(), Clock()
    relay = make_relay(client, sink, clock, breaker_threshold=100)
    append(client, "a")
    sink.ok = False

    for _ in range(5):
        relay.run_once()
        clock.now += 10

    assert sink.calls == ["a", "a", "a"]  # max_deliveries=3
    box = Outbox(client, KEYS)
    (dead,) = box.dead()
    assert (dead["job_id"], dead["deliveries"], dead["reason"]) == ("a", "3", "HTTP 500")
    assert box.pending(KEYS.outbox, "http", 10) == []
    assert relay.snapshot()["dead_lettered"] == 1


def test_breaker_opens_stops_reading_and_a_half_open_trial_closes_it(
    client: fakeredis.FakeRedis,
) -> None:
    # Given a failing sink and 10 entries
    sink, clock = ScriptedSink(), Clock()
    relay = make_relay(client, sink, clock, max_deliveries=100, breaker_threshold=2)
    append(client, *[f"j{i}" for i in range(10)])
    sink.ok = False

    # When a pass runs: two failures open the breaker, the rest of the batch is not attempted
    relay.run_once()
    assert relay.breaker.state is BreakerState.OPEN
    assert sink.calls == ["j0", "j1"]
    append(client, "late")
    clock.now += 20
    assert relay.run_once() == 0  # open: nothing attempted, nothing new read

    # Then after the timeout one trial goes through; its success closes the breaker and all drain
    clock.now += 20
    sink.ok = True
    relay.run_once()
    assert relay.breaker.state is BreakerState.CLOSED
    while relay.run_once():
        clock.now += 10
    assert sorted(set(sink.calls)) == sorted([f"j{i}" for i in range(10)] + ["late"])
    assert relay.snapshot()["delivered"] == 11


def test_snapshot_shape(client: fakeredis.FakeRedis) -> None:
    relay = make_relay(client, ScriptedSink(), Clock())
    snap = relay.snapshot()
    assert snap["group"] == "http" and snap["consumer"] == "me" and snap["running"] is False
    assert snap["breaker"] == {"state": "closed", "failures": 0}


def test_a_rejected_report_is_dead_lettered_at_once_and_never_trips_the_breaker(
    client: fakeredis.FakeRedis,
) -> None:
    # Given a sink that refuses 4 of 10 reports with a 4xx, and a breaker threshold of 2
    sink, clock = ScriptedSink(), Clock()
    relay = make_relay(client, sink, clock, max_deliveries=10, breaker_threshold=2)
    sink.refused = {"j1", "j2", "j3", "j7"}
    append(client, *[f"j{i}" for i in range(10)])

    # When one pass runs
    relay.run_once()
    clock.now += 60
    assert relay.run_once() == 0  # nothing left to retry

    # Then each is tried once: the refused ones dead-lettered on their first answer, the rest
    # delivered, and the breaker never counted a failure
    assert sink.calls == [f"j{i}" for i in range(10)]
    box = Outbox(client, KEYS)
    dead = {d["job_id"]: (d["deliveries"], d["reason"]) for d in box.dead()}
    assert dead == dict.fromkeys(sink.refused, ("1", "HTTP 400: no such op"))
    assert relay.breaker.state is BreakerState.CLOSED and relay.breaker.failures == 0
    snap = relay.snapshot()
    assert (snap["delivered"], snap["rejected"], snap["failed"]) == (6, 4, 0)
    assert box.pending(KEYS.outbox, "http", 10) == []


def test_a_report_no_request_can_carry_never_reaches_deliver(
    client: fakeredis.FakeRedis,
) -> None:
    sink, clock = ScriptedSink(), Clock()
    relay = make_relay(client, sink, clock, breaker_threshold=1)
    sink.malformed = {"bad"}
    append(client, "bad", "good")

    relay.run_once()

    assert sink.calls == ["good"]
    (dead,) = Outbox(client, KEYS).dead()
    assert (dead["job_id"], dead["deliveries"]) == ("bad", "1")
    assert relay.breaker.state is BreakerState.CLOSED


def test_a_rejection_answering_a_half_open_trial_closes_the_breaker(
    client: fakeredis.FakeRedis,
) -> None:
    # Given a breaker opened by a sink that was down
    sink, clock = ScriptedSink(), Clock()
    relay = make_relay(client, sink, clock, max_deliveries=100, breaker_threshold=1)
    append(client, "down")
    sink.ok = False
    relay.run_once()
    assert relay.breaker.state is BreakerState.OPEN

    # When the sink is back and the half-open trial is a report it refuses with a 4xx
    sink.ok, sink.refused = True, {"down"}
    clock.now += 31
    relay.run_once()

    # Then the sink answered: the breaker closes (no trial left hanging) and the next reads flow
    assert relay.breaker.state is BreakerState.CLOSED
    append(client, "next")
    relay.run_once()
    assert sink.calls == ["down", "down", "next"]


def test_the_relays_trim_takes_the_retention_settings() -> None:
    from config.settings import Settings

    settings = Settings(outbox_max_age=120, outbox_max_len=50, outbox_trim_interval=7)
    config = RelayConfig.from_settings(settings, sink_timeout_s=8.0)

    assert (config.max_age_s, config.max_len, config.trim_interval_s) == (120.0, 50, 7.0)
    assert (RelayConfig().max_age_s, RelayConfig().max_len) == (86400.0, 1_000_000)
