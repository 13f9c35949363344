"""A flood of hostile messages into a live two-worker fleet: raw kombu publishes, plain
`send_task`, and Flower's HTTP API. No worker's main process stops or restarts, every `ops.*`
message ends with exactly one record and one report, no job runs past the recovery bound,
Redis keeps nothing oversized, and a good job submitted meanwhile succeeds."""

from __future__ import annotations

import base64
import collections
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.application import create_app
from bot.client import Client
from tests.support.hostile import (
    DROPPED,
    REJECTED,
    SUCCEEDED,
    Hostile,
    RawSender,
    generate,
)
from tests.support.processes import REPO_ROOT, WorkerProcess, wait_for
from tests.support.redis_server import free_port

pytestmark = pytest.mark.e2e

#: Job ids the README promises to accept (bot.jobs.envelope.JOB_ID_PATTERN, spelled out again here
#: so that a change to the pattern is a change to this test too).
JOB_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,200}$")

#: Messages published raw through kombu (hypothesis-generated); send_task and Flower add more.
RAW_MESSAGES = 10_000
PAYLOAD_LIMIT = 16_384
FLOOD_ENV = {"BOT_MAX_PAYLOAD_BYTES": str(PAYLOAD_LIMIT), "BOT_MAX_RECOVERIES": "3"}
FLOWER_AUTH = ("flood", "flood-secret")
#: No key may hold more than this (a record or result meta keeping an oversized payload: the
#: oversized bodies are 21 KB to 131 KB, a record of a good job holds under 2 KB).
MAX_KEY_BYTES = 2 * PAYLOAD_LIMIT
#: Redis grows by what every job must leave (record, report, result meta): measured here
#: about 3.4 KB per job; this bound fails if anything of a payload is kept beyond that.
GROWTH_PER_JOB_BYTES = 5 * 1024


@pytest.fixture
def flower(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with (tmp_path / "flower.log").open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "bot", "flower", "--address=127.0.0.1"),
                *(f"--port={port}", "--basic-auth=" + ":".join(FLOWER_AUTH)),
            ],
            env={**env, **FLOOD_ENV},
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _flower_answers(base), 30, "Flower to answer")
        yield base
        process.terminate()
        process.wait(timeout=15)


def _flower_answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthcheck", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def flower_post(base: str, path: str, body: bytes) -> tuple[int, Any]:
    token = base64.b64encode(":".join(FLOWER_AUTH).encode()).decode()
    request = urllib.request.Request(
        base + path,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


#: Bodies for Flower's async-apply: options Flower passes on to apply_async as they come.
FLOWER_BODIES: list[Any] = [
    {"args": {"a": 1}},
    {"kwargs": [1, 2]},
    {"args": [1, 2, 3]},
    {"args": [1], "kwargs": {"a": 1}},
    {"kwargs": {"a": 1, "b": 2, "task": 3}},
    {"kwargs": {"a": "x" * (PAYLOAD_LIMIT * 2), "b": 1}},
    {"kwargs": {"a": 1, "b": 2}, "task_id": "flower\r\nid"},
    {"kwargs": {"a": 1, "b": 2}, "shadow": 5},
    {"kwargs": {"a": 1, "b": 2}, "headers": {"bot_enqueued_at": 1e20}},
    {"kwargs": {"a": 1, "b": 2}, "headers": {"timelimit": "soon"}},
    {"kwargs": {"a": 1, "b": 2}, "countdown": "later"},
    {"kwargs": {"a": 1, "b": 2}, "expires": [1]},
    {"kwargs": json.loads("[" * 100 + "]" * 100)},
    {"kwargs": {"a": 1, "b": 2}},
    "not an object",
    None,
]


def send_through_flower(base: str) -> list[str | None]:
    """Each body a few times; the ids Flower answered with (None: it refused the request)."""
    ids: list[str | None] = []
    for body in FLOWER_BODIES * 10:
        raw = json.dumps(body).encode() if body is not None else b"{not json"
        status, answer = flower_post(base, "/api/task/async-apply/ops.sum", raw)
        ids.append(answer["task-id"] if status == 200 and answer else None)
    return ids


def send_through_celery(app: Any) -> list[str]:
    """Plain send_task with odd ids, headers and arguments; the ids Celery accepted."""
    sent = []
    cases: list[dict[str, Any]] = [
        {"kwargs": {"a": 1, "b": 2}, "task_id": f"crlf\r\n{uuid.uuid4().hex}"},
        {"kwargs": {"a": 1, "b": 2}, "task_id": f"caf\u00e9-{uuid.uuid4().hex}"},
        {"kwargs": {"a": 1, "b": 2}, "headers": {"bot_enqueued_at": "yesterday"}},
        {"kwargs": {"a": 1, "b": 2}, "headers": {"retries": "many"}},
        {"kwargs": {"a": 1, "b": 2, "self": 0}},
        {"args": [1, 2, 3]},
        {"args": [4, 5]},
        {"kwargs": {"a": 1, "b": 2, "pad": "y" * (PAYLOAD_LIMIT * 3)}},
    ]
    for options in cases * 25:
        try:
            sent.append(app.send_task("ops.sum", **options).id)
        except (TypeError, ValueError):
            continue  # refused by Celery's producer: never on the wire
    return sent


def reports(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(f["report"]) for _, f in client.xrange("bot:outbox")]


def largest_keys(client: redis.Redis, pattern: str) -> list[tuple[int, str]]:
    sizes = [
        (client.memory_usage(key) or 0, key) for key in client.scan_iter(match=pattern, count=1000)
    ]
    return sorted(sizes, reverse=True)[:3]


@pytest.mark.timeout(900)  # ~2 minutes alone on two cores; far more when they are shared
def test_a_flood_of_hostile_messages_stops_no_worker_and_loses_no_report(
    env: dict[str, str],
    workers: Callable[..., WorkerProcess],
    redis_server: Any,
    redis_url: str,
    make_settings: Callable[..., Any],
    flower: str,
) -> None:
    # Given a live two-worker fleet, and ten thousand hostile messages
    fleet = [workers(name, extra_env=FLOOD_ENV) for name in ("w1", "w2")]
    pids = [worker.pid for worker in fleet]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    memory_before = client.info("memory")["used_memory"]
    flood = generate(RAW_MESSAGES, PAYLOAD_LIMIT)
    kinds = collections.Counter(message.kind.split(":")[0] for message in flood)
    assert len(kinds) >= 12, kinds  # every kind of bad message is in the flood
    app = create_app(make_settings(**_settings_of(FLOOD_ENV)))

    # When they are sent raw, through send_task and through Flower, with a good job among them
    sender = RawSender(redis_url)
    for message in flood[: len(flood) // 2]:
        sender.send(message)
    good = Client(app).submit("sum", {"a": 20, "b": 22})
    for message in flood[len(flood) // 2 :]:
        sender.send(message)
    sender.close()
    celery_ids = send_through_celery(app)
    flower_ids = send_through_flower(flower)

    # Then every ops.* message gets exactly one report
    # (a job is named by its id; copies sharing an unusable id share one stand-in id)
    ops_messages = [m for m in flood if m.expect != DROPPED]
    identities = {_identity(m.headers, m.body) for m in ops_messages}
    identities |= {repr(i) for i in celery_ids} | {repr(i) for i in flower_ids if i}
    expected = len(identities) + 1  # and the good job
    wait_while_progressing(lambda: client.xlen("bot:outbox"), expected, stall_s=30)
    got = reports(client)
    by_id = collections.Counter(report["job_id"] for report in got)
    missing = collections.Counter(
        m.kind for m in ops_messages if _usable(m.job_id) and m.job_id not in by_id
    )
    assert len(got) == expected, (len(got), expected, missing.most_common(10))
    assert max(by_id.values()) == 1, by_id.most_common(3)
    _assert_outcomes(client, ops_messages, by_id)
    assert all(i in by_id for i in celery_ids if _usable(i))
    assert all(i in by_id for i in flower_ids if i and _usable(i))
    # no job ran past the recovery bound
    _assert_attempts_bounded(client, limit=3 + 1)
    # the good job submitted during the flood succeeded
    assert Client(app).wait(good.job_id, timeout=30).result == 42
    # no worker's main process stopped or restarted
    assert [worker.pid for worker in fleet] == pids
    assert all(worker.alive() for worker in fleet)
    assert not any("Unrecoverable" in worker.log() for worker in fleet)
    # Redis keeps nothing oversized: bounded per message, no key holding a payload
    for pattern in ("bot:job:*", "celery-task-meta-*"):
        biggest = largest_keys(client, pattern)
        assert biggest and biggest[0][0] < MAX_KEY_BYTES, biggest
    grown = client.info("memory")["used_memory"] - memory_before
    assert grown < expected * GROWTH_PER_JOB_BYTES + 8 * 2**20, (grown, expected)


def wait_while_progressing(count: Callable[[], int], target: int, stall_s: float) -> None:
    """Wait until `count()` reaches `target`, or has not grown for `stall_s` seconds."""
    last, since = -1, time.monotonic()
    while (now := count()) < target:
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall_s:
            return
        time.sleep(0.5)


def _settings_of(values: dict[str, str]) -> dict[str, Any]:
    return {name.removeprefix("BOT_").lower(): value for name, value in values.items()}


def _usable(job_id: Any) -> bool:
    return isinstance(job_id, str) and JOB_ID.match(job_id) is not None


def _identity(headers: dict[str, Any], body: bytes) -> Any:
    """What names a message's job: its id as sent, or its body when it has none."""
    return repr(headers["id"]) if "id" in headers else ("body", body)


def _assert_outcomes(
    client: redis.Redis, messages: list[Hostile], by_id: collections.Counter[str]
) -> None:
    """Each raw message with a usable id: its record's state is what its kind demands."""
    pipe = client.pipeline()
    checked = [m for m in messages if _usable(m.job_id)]
    for message in checked:
        pipe.hget(f"bot:job:{message.job_id}", "state")
    states = pipe.execute()
    wrong = [
        (m.kind, state)
        for m, state in zip(checked, states, strict=True)
        if (m.expect == REJECTED and state != "rejected")
        or (m.expect == SUCCEEDED and state != "succeeded")
        or state not in ("rejected", "succeeded", "failed", "dead")
        or m.job_id not in by_id
    ]
    assert not wrong, collections.Counter(wrong).most_common(10)
    stand_ins = sum(1 for job_id in by_id if job_id.startswith("malformed-"))
    unusable = {_identity(m.headers, m.body) for m in messages if not _usable(m.job_id)}
    assert stand_ins >= len(unusable)


def _assert_attempts_bounded(client: redis.Redis, limit: int) -> None:
    keys = list(client.scan_iter(match="bot:job:*", count=1000))
    pipe = client.pipeline()
    for key in keys:
        pipe.hget(key, "attempts")
    attempts = [int(a or 0) for a in pipe.execute()]
    assert max(attempts) <= limit
