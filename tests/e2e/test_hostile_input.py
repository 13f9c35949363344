"""Hostile input against a real `celery -A bot worker`: one test per finding of the hostile
input issue (each failed on the main of 2026-11-30). The flood (test_flood.py) sends every
kind at once; these name one finding each, so a regression says which."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.application import create_app
from bot.client import Client
from tests.support.hostile import Hostile, RawSender
from tests.support.processes import FAST_FLEET, WorkerProcess, run_bot, wait_for
from tests.support.receiver import Receiver

pytestmark = pytest.mark.e2e


def reports(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(f["report"]) for _, f in client.xrange("bot:outbox")]


def wait_reports(client: redis.Redis, count: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    wait_for(lambda: client.xlen("bot:outbox") >= count, timeout_s, f"{count} reports")
    return reports(client)


def raw(sender: RawSender, job_id: Any, body: bytes, **headers: Any) -> None:
    all_headers = {"task": "ops.sum", "lang": "py", **headers}
    if job_id is not None:
        all_headers["id"] = job_id
    sender.send(Hostile("e2e", "ops.sum", all_headers, body, "rejected"))


GOOD = json.dumps([[], {"a": 1, "b": 2}, {}]).encode()
MALFORMED_BODIES = {
    "empty": b"",
    "null": b"null",
    "number": b"42",
    "object": b'{"a": 1}',
    "two items": b"[[], {}]",
    "four items": b"[[], {}, {}, {}]",
    "nested 500 deep": b"[" * 500 + b"]" * 500,
}


def test_malformed_ops_messages_stop_no_worker_and_each_ends_rejected(
    workers: Callable[..., WorkerProcess], client: redis.Redis, redis_url: str
) -> None:
    # Given one worker
    worker = workers("w1")
    pid = worker.pid
    sender = RawSender(redis_url)
    # When each body the issue found fatal is published, then a good job
    for name, body in MALFORMED_BODIES.items():
        raw(sender, f"bad-{name.replace(' ', '-')}", body)
    raw(sender, "good-1", GOOD)
    sender.close()
    # Then each malformed one ends rejected with one report, and the good one runs
    got = {r["job_id"]: r for r in wait_reports(client, len(MALFORMED_BODIES) + 1)}
    assert got.pop("good-1")["result"] == 3
    assert len(got) == len(MALFORMED_BODIES)
    assert all(r["status"] == "rejected" and r["attempts"] == 1 for r in got.values())
    assert got["bad-null"]["error"]["message"].startswith("message body must be a 3-item array")
    # and the worker's main process never stopped
    assert worker.pid == pid and worker.alive()
    assert "Unrecoverable" not in worker.log()
    assert client.llen("celery") == 0


def test_forged_headers_and_odd_kwargs_leave_no_job_unaccounted(
    workers: Callable[..., WorkerProcess], client: redis.Redis, redis_url: str
) -> None:
    workers("w1")
    sender = RawSender(redis_url)
    # a non-integer and an absurd enqueue time, kwargs named task/self, kwargs not a mapping
    raw(sender, "hdr-text", GOOD, bot_enqueued_at="yesterday")
    raw(sender, "hdr-1e20", GOOD, bot_enqueued_at=1e20)
    raw(sender, "kw-task", json.dumps([[], {"a": 1, "b": 2, "task": 1}, {}]).encode())
    raw(sender, "kw-self", json.dumps([[], {"a": 1, "b": 2, "self": 1}, {}]).encode())
    raw(sender, "kw-list", json.dumps([[], [1, 2], {}]).encode())
    sender.close()

    got = {r["job_id"]: r for r in wait_reports(client, 5)}

    # forged times are ignored: the job runs once, is never recovered
    for job_id in ("hdr-text", "hdr-1e20"):
        assert (got[job_id]["status"], got[job_id]["result"]) == ("succeeded", 3)
        assert (got[job_id]["attempts"], got[job_id]["recoveries"]) == (1, 0)
        assert got[job_id]["enqueued_at"] is None
    # kwargs that cannot bind are rejected with field errors, once
    assert got["kw-task"]["error"]["details"][0]["loc"] == ["task"]
    assert got["kw-self"]["error"]["details"][0]["loc"] == ["kwargs", "self"]
    assert got["kw-list"]["error"]["details"][0]["loc"] == ["kwargs"]
    assert {got[j]["status"] for j in ("kw-task", "kw-self", "kw-list")} == {"rejected"}
    assert max(int(client.hget(f"bot:job:{j}", "attempts") or 0) for j in got) == 1


def test_bad_job_ids_are_rejected_under_a_safe_id_and_block_no_report(
    workers: Callable[..., WorkerProcess],
    client: redis.Redis,
    redis_url: str,
    receiver: Receiver,
    env: dict[str, str],
) -> None:
    # Given a worker relaying reports to a receiver
    workers("w1", extra_env={**FAST_FLEET, "BOT_REPORT_URL": receiver.url})
    sender = RawSender(redis_url)
    bad_ids = ["bad\r\nid", "caf\u00e9", "x" * 100_000]
    # When messages with ids no report could carry come first, then good jobs
    for job_id in bad_ids:
        raw(sender, job_id, GOOD)
    for n in range(5):
        raw(sender, f"good-{n}", GOOD)
    sender.close()
    # Then each bad one is rejected under a safe stand-in id, and every report is delivered
    wait_for(lambda: len(receiver.accepted()) >= 8, 30, "8 reports delivered")
    delivered = {r.job_id for r in receiver.accepted()}
    stand_ins = {job_id for job_id in delivered if job_id.startswith("malformed-")}
    assert len(stand_ins) == 3
    assert {f"good-{n}" for n in range(5)} <= delivered
    assert client.xlen("bot:outbox:dead") == 0
    # and the CLI shows nothing raw
    listed = run_bot(env, "status", sorted(stand_ins)[0])
    assert "rejected" in listed.stdout and "\r" not in listed.stdout


def test_an_oversized_payload_is_rejected_before_it_is_acquired_or_stored(
    workers: Callable[..., WorkerProcess],
    client: redis.Redis,
    make_settings: Callable[..., Any],
) -> None:
    worker = workers("w1")
    app = create_app(make_settings())
    rss_before = _rss_kib(worker.pid)

    result = app.send_task("ops.sum", kwargs={"a": 1, "b": 2, "pad": "x" * 50_000_000})

    (report,) = wait_reports(client, 1, timeout_s=60)
    assert report["status"] == "rejected" and report["error"]["details"][0]["type"] == "too_large"
    assert report["job_id"] == result.id
    # nothing of the 50 MB stays: not in the record, not in the result meta
    assert (client.memory_usage(f"bot:job:{result.id}") or 0) < 8192
    assert (client.memory_usage(f"celery-task-meta-{result.id}") or 0) < 8192
    assert app.AsyncResult(result.id).state == "FAILURE"
    # the worker did not keep it either (it had to read it once: the bound is generous)
    assert _rss_kib(worker.pid) - rss_before < 150_000


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_reused_job_id_never_runs_the_senders_payload(
    workers: Callable[..., WorkerProcess],
    client: redis.Redis,
    make_settings: Callable[..., Any],
) -> None:
    workers("w1")
    app = create_app(make_settings())
    # Given a job submitted under the caller's id, queued for a few seconds
    Client(app).submit("sum", {"a": 1, "b": 2}, job_id="order-1", countdown=3)
    # When another message with that id and another payload arrives first
    app.send_task("ops.sum", kwargs={"a": 600, "b": 66}, task_id="order-1")
    time.sleep(1.5)
    assert client.hget("bot:job:order-1", "state") == "queued"  # the forged one did not run
    # Then only the submitted payload runs under that id
    (report,) = wait_reports(client, 1)
    assert (report["job_id"], report["result"]) == ("order-1", 3)
    assert client.hget("bot:stats", "id_reused") == "1"
