"""Reports end to end: real `celery -A bot worker` processes end jobs and append reports,
real `python -m bot.cli.relay` processes (or the worker's own relay) deliver them to a real HTTP
receiver on loopback, the real `bot outbox` CLI inspects and replays. Faults: receiver down,
relay kill -9, receiver always 500, receiver refusing some reports with 400, redis-server
restarted (AOF) mid-run."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis

from bot.application import create_app
from bot.client import Client
from bot.jobs.reports import Report
from config.settings import Settings
from tests.support.processes import (
    FAST_FLEET,
    REPO_ROOT,
    WorkerProcess,
    bot_env,
    run_bot,
    run_to_end,
    wait_for,
)
from tests.support.receiver import Receiver
from tests.support.redis_server import RedisServer
from tests.support.relay_process import RelayProcess

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token"
SCHEMA = Report.model_json_schema()


@pytest.fixture
def relay_env(env: dict[str, str], receiver: Receiver) -> dict[str, str]:
    return {**env, **FAST_FLEET, "BOT_REPORT_URL": receiver.url, "BOT_REPORT_TOKEN": TOKEN}


@pytest.fixture
def relays(tmp_path: Path, relay_env: dict[str, str]) -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(name: str = "r1", env: dict[str, str] | None = None, **extra: str) -> RelayProcess:
        relay = RelayProcess(name, {**(env or relay_env), **extra}, tmp_path).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


def outbox_entries(client: redis.Redis) -> list[tuple[str, dict[str, str]]]:
    return client.xrange("bot:outbox")  # type: ignore[return-value]


def outbox_stats(env: dict[str, str]) -> dict[str, Any]:
    done = run_bot(env, "outbox", "stats", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def owed(env: dict[str, str], group: str = "http") -> int:
    groups = {g["group"]: g for g in outbox_stats(env)["groups"]}
    return int(groups[group]["owed"]) if group in groups else 0


def diagnose(client: redis.Redis, job_ids: set[str], receiver: Receiver) -> str:
    states = Counter(client.hget(f"bot:job:{j}", "state") for j in job_ids)
    return (
        f"job states {dict(states)}, outbox {client.xlen('bot:outbox')}, "
        f"delivered {len(receiver.accepted_counts())}, queue {client.llen('celery')}, "
        f"unacked {client.hlen('unacked')}"
    )


def delivered_exactly(receiver: Receiver, job_ids: set[str]) -> bool:
    return set(receiver.accepted_counts()) == job_ids


def test_every_ended_job_has_exactly_one_schema_valid_report(
    make_settings: Callable[..., Any],
    workers: Callable[..., WorkerProcess],
    relays: Callable[..., RelayProcess],
    receiver: Receiver,
    redis_server: RedisServer,
) -> None:
    # Given a worker (a job recovered once is dead) and a relay
    workers("w1", extra_env={**FAST_FLEET, "BOT_MAX_RECOVERIES": "0"})
    relay = relays("r1")
    app = create_app(make_settings())
    client = Client(app)

    # When one job succeeds, one fails, one is rejected and one's pool process is killed
    ok = client.submit("sum", {"a": 1, "b": 2}).job_id
    failed = client.submit("flaky", {"failure_rate": 1}).job_id
    rejected = app.send_task("ops.sum", kwargs={"a": "x", "b": 2}).id
    dead = client.submit("sleep", {"seconds": 30, "steps": 30}).job_id
    pid = wait_for(lambda: app.job_store().read(dead).get("pid"), 30, "the sleep job to run")
    os.kill(int(pid), signal.SIGKILL)  # type: ignore[arg-type]
    expected = {ok: "succeeded", failed: "failed", rejected: "rejected", dead: "dead"}
    wait_for(
        lambda: all(app.job_store().read(j).get("state") == s for j, s in expected.items()),
        60,
        "all four jobs to end",
    )

    # Then the outbox holds exactly one schema-valid report per job, and each is delivered once
    entries = outbox_entries(redis_server.client())
    seen = [(expected.get(f["job_id"]), json.loads(f["report"])["status"]) for _, f in entries]
    assert Counter(fields["job_id"] for _, fields in entries) == dict.fromkeys(expected, 1), seen
    for _, fields in entries:
        report = json.loads(fields["report"])
        jsonschema.validate(report, SCHEMA)
        assert report["status"] == expected[fields["job_id"]]
    wait_for(lambda: delivered_exactly(receiver, set(expected)), 20, "four reports delivered")
    assert max(receiver.accepted_counts().values()) == 1
    assert TOKEN not in relay.log()
    for received in receiver.accepted():
        jsonschema.validate(received.report, SCHEMA)
        assert received.idempotency_key == received.job_id
        assert received.authorization == f"Bearer {TOKEN}"


def test_receiver_down_while_500_jobs_run_then_all_delivered_once(
    make_settings: Callable[..., Any],
    workers: Callable[..., WorkerProcess],
    relays: Callable[..., RelayProcess],
    receiver: Receiver,
    relay_env: dict[str, str],
) -> None:
    # Given the receiver down, a worker (concurrency 2) and a relay
    receiver.down()
    workers("w1", extra_env=FAST_FLEET, concurrency=2)
    relay = relays("r1", BOT_OUTBOX_MAX_DELIVERIES="1000")
    client = Client(create_app(make_settings()))

    # When 500 jobs run
    job_ids = {client.submit("sum", {"a": i, "b": 1}).job_id for i in range(500)}

    # Then the breaker opens and what the sink owes grows to all 500
    try:
        wait_for(lambda: relay.status()["breaker"]["state"] != "closed", 30, "breaker open")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {relay.status()} {outbox_stats(relay_env)}") from None
    wait_for(lambda: owed(relay_env) == 500, 120, "500 reports owed")
    assert outbox_stats(relay_env)["oldest_pending_age_s"] > 0

    # When the receiver is back: all 500 delivered, each exactly once; the breaker closes
    receiver.up()
    wait_for(lambda: delivered_exactly(receiver, job_ids), 90, "500 reports delivered")
    assert max(receiver.accepted_counts().values()) == 1
    wait_for(lambda: relay.status()["breaker"]["state"] == "closed", 10, "breaker closed")
    wait_for(lambda: owed(relay_env) == 0, 10, "nothing owed")
    assert outbox_stats(relay_env)["dead"] == 0


def test_a_relay_killed_mid_delivery_has_its_entries_claimed_by_another(
    make_settings: Callable[..., Any],
    workers: Callable[..., WorkerProcess],
    relays: Callable[..., RelayProcess],
    receiver: Receiver,
    relay_env: dict[str, str],
) -> None:
    # Given a receiver that holds its first answer, one relay, and 30 reports
    receiver.delay_s = 5.0
    workers("w1", extra_env=FAST_FLEET)
    doomed = relays("doomed")
    client = Client(create_app(make_settings()))
    job_ids = {client.submit("sum", {"a": i, "b": 1}).job_id for i in range(30)}
    wait_for(lambda: receiver.arrivals, 30, "a first POST")

    # When it is kill -9'd mid-delivery (its POST unanswered: the entry stays in its pending
    # list; a 0.2 s answer let a loaded machine's relay ack it and wait idle for the next
    # report, owing nothing, before the kill) and another relay runs
    doomed.kill()
    receiver.delay_s = 0.2
    assert len(receiver.accepted()) < 30
    rescuer = relays("rescuer")

    # Then the other relay claims the dead one's pending entries and delivers every report
    wait_for(lambda: delivered_exactly(receiver, job_ids), 60, "all 30 delivered")
    # the claim may come after the last new report is delivered: the dead relay's pending
    # entry can be one the receiver had already accepted (killed before its XACK)
    wait_for(lambda: rescuer.status()["claimed"] >= 1, 30, "the dead relay's entries claimed")
    wait_for(lambda: owed(relay_env) == 0, 10, "nothing owed")
    # only reports POSTed but not yet acked at the kill are sent twice: with a slow receiver
    # acks go out as each POST ends, so at most those in flight (BOT_REPORT_CONCURRENCY, 32;
    # the receiver dedupes)
    assert sum(n - 1 for n in receiver.accepted_counts().values()) <= 32


def test_always_500_dead_letters_then_replay_delivers(
    make_settings: Callable[..., Any],
    workers: Callable[..., WorkerProcess],
    relays: Callable[..., RelayProcess],
    receiver: Receiver,
    relay_env: dict[str, str],
) -> None:
    # Given a receiver that always answers 500 and 3 deliveries at most
    receiver.status = 500
    workers("w1", extra_env=FAST_FLEET)
    relays("r1", BOT_OUTBOX_MAX_DELIVERIES="3", BOT_BREAKER_THRESHOLD="1000")
    client = Client(create_app(make_settings()))
    job_ids = {client.submit("sum", {"a": i, "b": 1}).job_id for i in range(5)}

    # Then each report is tried 3 times, then dead-lettered
    wait_for(lambda: outbox_stats(relay_env)["dead"] == 5, 60, "5 dead letters")
    assert Counter(r.job_id for r in receiver.requests) == dict.fromkeys(job_ids, 3)
    listed = run_bot(relay_env, "outbox", "dead", "--json").stdout.splitlines()
    dead = [json.loads(line) for line in listed]
    assert {d["job_id"] for d in dead} == job_ids
    assert {(d["group"], d["deliveries"], d["reason"]) for d in dead} == {("http", "3", "HTTP 500")}
    assert "HTTP 500" in run_bot(relay_env, "outbox", "dead").stdout

    # When the receiver answers 200 and one, then all, are replayed: each arrives once
    receiver.status = 200
    one = run_bot(relay_env, "outbox", "replay", dead[0]["id"])
    assert one.returncode == 0, one.stderr
    wait_for(lambda: set(receiver.accepted_counts()) == {dead[0]["job_id"]}, 20, "one replayed")
    rest = run_bot(relay_env, "outbox", "replay", "--all")
    assert rest.stdout.strip() == "replayed 4"
    wait_for(lambda: delivered_exactly(receiver, job_ids), 20, "all replayed reports delivered")
    assert max(receiver.accepted_counts().values()) == 1
    assert outbox_stats(relay_env)["dead"] == 0
    assert run_bot(relay_env, "outbox", "replay", dead[0]["id"]).returncode == 1  # gone
    assert run_bot(relay_env, "outbox", "replay").returncode == 2
    assert "length" in run_bot(relay_env, "outbox").stdout  # stats is the default


def test_relay_entry_point_needs_a_report_url(env: dict[str, str]) -> None:
    done = run_to_end([sys.executable, "-m", "bot.cli.relay"], env, REPO_ROOT, 60)

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bot: invalid configuration: BOT_REPORT_URL: must be set for a relay"
    ]


def test_redis_restarted_mid_run_loses_and_duplicates_no_report(
    private_redis: RedisServer,
    state_dir: Path,
    workers: Callable[..., WorkerProcess],
    relays: Callable[..., RelayProcess],
    receiver: Receiver,
) -> None:
    # Given a private AOF redis-server, a worker and a relay on it, and 120 jobs of 50 ms each
    env = bot_env(private_redis.url(), state_dir, FAST_FLEET)
    renv = {**env, "BOT_REPORT_URL": receiver.url, "BOT_REPORT_TOKEN": TOKEN}
    workers("w1", extra_env=env, concurrency=2)
    relays("r1", env=renv, BOT_OUTBOX_MAX_DELIVERIES="1000")
    client = Client(create_app(Settings(redis_url=private_redis.url(), state_dir=state_dir)))
    payload = {"failure_rate": 0, "duration_ms": 50}
    job_ids = {client.submit("flaky", payload).job_id for _ in range(120)}
    wait_for(lambda: len(receiver.accepted()) >= 10, 60, "reports flowing")

    # When redis-server restarts (AOF) mid-run
    private_redis.restart(down_for_s=1.0)

    # Then every job ends with exactly one report, delivered exactly once
    try:
        wait_for(lambda: delivered_exactly(receiver, job_ids), 90, "120 reports delivered")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{diagnose(private_redis.client(), job_ids, receiver)}"
        ) from None
    entries = outbox_entries(private_redis.client())
    assert Counter(f["job_id"] for _, f in entries) == dict.fromkeys(job_ids, 1)
    assert max(receiver.accepted_counts().values()) == 1


def test_reports_the_receiver_refuses_are_dead_lettered_and_the_worker_stays_ready(
    make_settings: Callable[..., Any],
    workers: Callable[..., WorkerProcess],
    receiver: Receiver,
    env: dict[str, str],
) -> None:
    # Given a worker whose own relay delivers to a receiver that answers 400 to 4 job ids
    # (more than the breaker threshold of 3) and 200 to the rest
    refused = {f"refused-{i}" for i in range(4)}
    receiver.statuses = dict.fromkeys(refused, 400)
    receiver.body = b"unknown op"
    report_env = {"BOT_REPORT_URL": receiver.url, "BOT_REPORT_TOKEN": TOKEN}
    workers("w1", extra_env={**FAST_FLEET, **report_env, "BOT_OUTBOX_MAX_DELIVERIES": "1000"})
    client = Client(create_app(make_settings()))

    # When the refused jobs run in a row, among 10 others
    good = {client.submit("sum", {"a": i, "b": 1}).job_id for i in range(5)}
    for job_id in sorted(refused):
        client.submit("sum", {"a": 1, "b": 1}, job_id=job_id)
    good |= {client.submit("sum", {"a": i, "b": 2}).job_id for i in range(5)}

    # Then the 10 are delivered once and the 4 dead-lettered on their first answer
    wait_for(lambda: delivered_exactly(receiver, good), 60, "10 reports delivered")
    wait_for(lambda: outbox_stats(env)["dead"] == 4, 30, "4 dead letters")
    listed = run_bot(env, "outbox", "dead", "--json").stdout.splitlines()
    dead = {d["job_id"]: (d["deliveries"], d["reason"]) for d in map(json.loads, listed)}
    assert dead == dict.fromkeys(refused, ("1", "HTTP 400: unknown op"))
    assert Counter(r.job_id for r in receiver.requests if r.status == 400) == dict.fromkeys(
        refused, 1
    )
    assert owed(env) == 0

    # And the worker never left READY/PROCESSING: its sink breaker stayed closed
    done = run_bot(env, "fleet", "--json")
    (row,) = json.loads(done.stdout)
    assert row["state"] in ("READY", "PROCESSING"), row
    assert row["breakers"]["sink:http"] == {"state": "closed", "failures": 0}, row
    assert not any("DEGRADED" in move for move in row["transitions"]), row["transitions"]
