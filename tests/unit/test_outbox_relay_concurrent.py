"""The relay with deliveries in flight (BOT_REPORT_CONCURRENCY) and in batches
(BOT_REPORT_BATCH), on fakeredis with an injected clock and sinks that answer when told: an
entry is acked only after its own call returned a success, a failure in flight stays pending
with its backoff, a half-open breaker lets one call through however wide the window, a batch
answer's accepted / rejected / missing reports, and a batch refused whole sent again alone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence

import fakeredis
import pytest

from bot.base.breaker import BreakerState
from bot.outbox.delivery import BatchAnswer, DeliveryFailed, DeliveryRejected
from bot.outbox.relay import Relay
from bot.outbox.stream import Outbox
from bot.store.keys import Keys
from tests.unit.test_outbox_relay import Clock
from tests.unit.test_outbox_relay import make_relay as make_sequential_test_relay

KEYS = Keys("bot")


class GatedSink:
    """Each delivery waits until its job id is released, then succeeds or fails as told."""

    name = "http"
    timeout_s = 1.0

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.fail: set[str] = set()
        self.returned: list[str] = []
        self.started: list[str] = []
        self._lock = threading.Lock()

    def gate(self, job_id: str) -> threading.Event:
        with self._lock:
            return self.gates.setdefault(job_id, threading.Event())

    def release(self, *job_ids: str) -> None:
        for job_id in job_ids:
            self.gate(job_id).set()

    def check(self, job_id: str, report_json: str) -> None:
        pass

    def deliver(self, job_id: str, report_json: str) -> None:
        with self._lock:
            self.started.append(job_id)
        assert self.gate(job_id).wait(5)
        self.gate(job_id).clear()
        with self._lock:
            self.returned.append(job_id)
        if job_id in self.fail:
            raise DeliveryFailed("HTTP 503")

    def close(self) -> None:
        pass


class BatchSink:
    """Answers each batch with what `answer` says (all accepted by default); a batch holding
    a job id in `poison` is refused whole (a 4xx), as a sink refuses an array it cannot read."""

    name = "http"
    timeout_s = 1.0

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.answer = BatchAnswer()
        self.poison: set[str] = set()

    def check(self, job_id: str, report_json: str) -> None:
        pass

    def deliver(self, job_id: str, report_json: str) -> None:
        raise AssertionError("batch mode POSTs batches only")

    def deliver_batch(self, items: Sequence[tuple[str, str]]) -> BatchAnswer:
        ids = [job_id for job_id, _ in items]
        self.batches.append(ids)
        if self.poison & set(ids):
            raise DeliveryRejected("HTTP 400: not a JSON array of reports")
        return self.answer

    def close(self) -> None:
        pass


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    yield fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture
def made() -> Iterator[list[Relay]]:
    relays: list[Relay] = []
    yield relays
    for relay in relays:
        relay.deliveries.window.close()


def make_relay(
    client: fakeredis.FakeRedis,
    sink: object,
    clock: Clock,
    made: list[Relay],
    **config: object,
) -> Relay:
    """test_outbox_relay's relay (same test settings), closed after the test (`made`)."""
    relay = make_sequential_test_relay(client, sink, clock, **config)  # type: ignore[arg-type]
    made.append(relay)
    return relay


def append(client: fakeredis.FakeRedis, *job_ids: str) -> dict[str, str]:
    """job id -> stream entry id."""
    return {
        job_id: str(
            client.xadd(KEYS.outbox, {"job_id": job_id, "report": json.dumps({"job_id": job_id})})
        )
        for job_id in job_ids
    }


def pending_jobs(client: fakeredis.FakeRedis, ids: dict[str, str]) -> set[str]:
    pending = {p.id for p in Outbox(client, KEYS).pending(KEYS.outbox, "http", 100)}
    return {job for job, entry_id in ids.items() if entry_id in pending}


def settle_until(relay: Relay, sink: GatedSink, returned: int) -> None:
    """Run passes until `returned` calls have returned and been settled."""
    for _ in range(200):
        relay.run_once()
        if len(sink.returned) >= returned and not relay.deliveries.window.busy:
            return
    raise AssertionError(f"calls returned: {sink.returned}")


def test_with_calls_in_flight_an_entry_is_acked_only_after_its_own_success(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    sink, clock = GatedSink(), Clock()
    relay = make_relay(client, sink, clock, made, concurrency=4, breaker_threshold=100)
    ids = append(client, "a", "b", "c", "d")

    # When one pass puts all four in flight
    assert relay.run_once() == 4
    assert sorted(sink.started) == ["a", "b", "c", "d"]

    # Then none is acked while its call runs
    relay.run_once()
    assert pending_jobs(client, ids) == {"a", "b", "c", "d"}

    # When b's call succeeds, b alone is acked
    sink.release("b")  # (a, c and d still run)
    for _ in range(100):
        relay.run_once()
        if "b" not in pending_jobs(client, ids):
            break
    assert pending_jobs(client, ids) == {"a", "c", "d"}

    # When a fails and c, d succeed: a stays pending with its backoff, c and d are acked
    sink.fail.add("a")
    sink.release("a", "c", "d")
    settle_until(relay, sink, 4)
    assert pending_jobs(client, ids) == {"a"}
    snap = relay.snapshot()
    assert (snap["delivered"], snap["failed"], snap["in_flight"]) == (3, 1, 0)
    assert relay.deliveries.is_waiting(KEYS.outbox, ids["a"])

    # And after its backoff a is sent again (once) and acked
    sink.fail.clear()
    clock.now += 1.1
    sink.release("a")
    settle_until(relay, sink, 5)
    assert pending_jobs(client, ids) == set()
    assert sorted(sink.returned) == ["a", "a", "b", "c", "d"]


def test_an_entry_in_flight_is_not_sent_again_by_the_retry_pass(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    sink, clock = GatedSink(), Clock()
    relay = make_relay(client, sink, clock, made, concurrency=4)
    append(client, "a")
    relay.run_once()
    clock.now += 100  # any backoff long over
    for _ in range(5):
        relay.run_once()
    assert sink.started == ["a"]
    sink.release("a")
    settle_until(relay, sink, 1)
    assert relay.snapshot()["delivered"] == 1


def test_a_half_open_breaker_lets_one_call_through_however_wide_the_window(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    sink, clock = GatedSink(), Clock()
    relay = make_relay(client, sink, clock, made, concurrency=8, breaker_threshold=2)
    ids = append(client, "a", "b")
    sink.fail.update({"a", "b"})
    sink.release("a", "b")
    relay.run_once()
    settle_until(relay, sink, 2)
    assert relay.breaker.state is BreakerState.OPEN

    # When the breaker turns half-open with 2 owed and 5 new reports
    clock.now += 31
    ids.update(append(client, "c", "d", "e", "f", "g"))
    sink.fail.clear()
    for _ in range(3):
        relay.run_once()

    # Then exactly one call is in flight, and while it is, no other entry is taken (XCLAIM
    # would count a delivery never made) nor read
    assert relay.deliveries.window.busy == 1
    assert sink.started == ["a", "b", "a"]
    owed = {p.id: p.deliveries for p in Outbox(client, KEYS).pending(KEYS.outbox, "http", 100)}
    assert owed == {ids["a"]: 2, ids["b"]: 1}

    # When the trial succeeds, the breaker closes and everything is delivered
    sink.release("a")
    settle_until(relay, sink, 3)
    assert relay.breaker.state is BreakerState.CLOSED
    sink.release("b", "c", "d", "e", "f", "g")
    settle_until(relay, sink, 9)
    assert pending_jobs(client, ids) == set()


def test_stopping_settles_the_calls_in_flight_and_acks_what_they_delivered(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    sink, clock = GatedSink(), Clock()
    relay = make_relay(client, sink, clock, made, concurrency=4)
    ids = append(client, "a", "b", "c")
    relay.run_once()
    threading.Timer(0.05, sink.release, ("a", "b", "c")).start()

    assert relay.deliveries.stop(5.0) == 0

    assert pending_jobs(client, ids) == set()
    assert relay.snapshot()["delivered"] == 3


def test_a_batch_answer_accepting_half_leaves_the_rest_pending_then_sends_only_them(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    sink, clock = BatchSink(), Clock()
    relay = make_relay(client, sink, clock, made, report_batch=4, breaker_threshold=1)
    ids = append(client, "a", "b", "c", "d")
    sink.answer = BatchAnswer(accepted=frozenset({"a", "c"}))

    relay.run_once()

    assert pending_jobs(client, ids) == {"b", "d"}
    snap = relay.snapshot()
    assert (snap["delivered"], snap["failed"], snap["dead_lettered"]) == (2, 2, 0)
    assert relay.breaker.state is BreakerState.CLOSED  # the sink answered 2xx

    sink.answer = BatchAnswer()
    clock.now += 1.1
    relay.run_once()

    assert sink.batches == [["a", "b", "c", "d"], ["b", "d"]]
    assert pending_jobs(client, ids) == set()
    assert relay.snapshot()["delivered"] == 4


def test_reports_a_batch_answer_rejects_are_dead_lettered_at_once(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    sink, clock = BatchSink(), Clock()
    relay = make_relay(client, sink, clock, made, report_batch=10, max_deliveries=100)
    ids = append(client, "a", "b", "c")
    sink.answer = BatchAnswer(rejected={"b": "unknown op"})

    relay.run_once()

    assert pending_jobs(client, ids) == set()
    (dead,) = Outbox(client, KEYS).dead()
    assert (dead["job_id"], dead["reason"], dead["deliveries"]) == ("b", "unknown op", "1")
    assert relay.snapshot()["delivered"] == 2


def test_a_batch_refused_whole_is_sent_again_one_report_per_batch(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    sink, clock = BatchSink(), Clock()
    relay = make_relay(client, sink, clock, made, report_batch=10, breaker_threshold=1)
    ids = append(client, "a", "bad", "c")
    sink.poison.add("bad")

    relay.run_once()  # [a, bad, c] refused: nothing dead-lettered, each due again at once
    assert pending_jobs(client, ids) == {"a", "bad", "c"}
    assert Outbox(client, KEYS).dead() == []
    relay.run_once()

    assert sink.batches == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    assert pending_jobs(client, ids) == set()
    assert [d["job_id"] for d in Outbox(client, KEYS).dead()] == ["bad"]
    assert relay.breaker.state is BreakerState.CLOSED and relay.breaker.failures == 0


def test_batches_with_calls_in_flight_cover_every_report_once(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    sink, clock = BatchSink(), Clock()
    relay = make_relay(client, sink, clock, made, report_batch=7, concurrency=4)
    ids = append(client, *(f"j{i}" for i in range(50)))
    for _ in range(20):
        relay.run_once()
    relay.deliveries.stop(5.0)

    assert sorted(j for batch in sink.batches for j in batch) == sorted(ids)
    assert max(len(batch) for batch in sink.batches) == 7
    assert pending_jobs(client, ids) == set()


def test_batch_mode_needs_a_sink_that_takes_batches(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    with pytest.raises(ValueError, match="takes no batches"):
        make_relay(client, GatedSink(), Clock(), made, report_batch=10)


def test_a_relay_asked_to_stop_starts_no_new_call_and_what_it_read_stays_pending(
    client: fakeredis.FakeRedis, made: list[Relay]
) -> None:
    sink, clock = GatedSink(), Clock()
    relay = make_relay(client, sink, clock, made, concurrency=2)
    ids = append(client, "a", "b", "c", "d", "e")
    passing = threading.Thread(target=relay.run_once)
    passing.start()  # a and b in flight; c waits for a slot
    for _ in range(100):
        if len(sink.started) == 2:
            break
        time.sleep(0.01)

    relay.request_stop()
    sink.release("a", "b", "c")
    passing.join(5)
    relay.deliveries.stop(5.0)

    assert sink.started == ["a", "b", "c"]
    assert pending_jobs(client, ids) == {"d", "e"}
