"""Flower's HTTP API submits jobs behind basic auth; `bot up` runs a whole local fleet (Flower
with credentials it prints once) and stops what it started.

Observed in Flower 2.2 with FLOWER_BASIC_AUTH: an API call without credentials gets 401; with
`-u user:password` a POST works without any XSRF cookie; a browser's cross-site POST
(`Sec-Fetch-Site: cross-site`, or an `Origin` of another host) gets 403 even with credentials;
no `Access-Control-Allow-Origin` header is sent. FLOWER_UNAUTHENTICATED_API=true, which `bot up`
used to set, skips the XSRF check and answers `Access-Control-Allow-Origin: *`."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.application import create_app
from config.settings import Settings
from tests.support.flower import FLOWER_AUTH, answers, http, http_json, task_info
from tests.support.processes import BOT, WorkerProcess, bot_env, run_bot, wait_for
from tests.support.redis_server import free_port

pytestmark = pytest.mark.e2e


def test_flower_async_apply_runs_an_op_and_shows_its_worker(
    flower: str, make_settings: Callable[..., Any], workers: Callable[..., WorkerProcess]
) -> None:
    workers("w1")

    sent = http_json(f"{flower}/api/task/async-apply/ops.sum", {"kwargs": {"a": 20, "b": 22}})

    app = create_app(make_settings())
    assert app.AsyncResult(sent["task-id"]).get(timeout=30) == 42
    shown = wait_for(
        lambda: (info := task_info(flower, sent["task-id"])).get("state") == "SUCCESS" and info,
        20,
        "Flower to show the task as SUCCESS",
    )
    assert shown["worker"].startswith("w1@")  # type: ignore[index]
    assert shown["result"] == "42"  # type: ignore[index]


def test_flower_api_refuses_a_post_without_credentials(flower: str, redis_server: Any) -> None:
    url = f"{flower}/api/task/async-apply/ops.sum"
    payload = {"kwargs": {"a": 1, "b": 2}}

    for auth in (None, "tester:wrong"):
        status, headers, _ = http(url, payload, auth=auth)
        assert status == 401
        assert "Access-Control-Allow-Origin" not in headers
    assert redis_server.client().llen("celery") == 0  # nothing was enqueued


def test_flower_api_refuses_a_cross_site_post_even_with_credentials(flower: str) -> None:
    # what a browser sends for a page elsewhere posting to Flower: fetch metadata, or an Origin
    url = f"{flower}/api/task/async-apply/ops.sum"
    payload = {"kwargs": {"a": 1, "b": 2}}
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://evil.example"}):
        status, answer, _ = http(url, payload, auth=FLOWER_AUTH, headers=headers)
        assert status == 403, headers
        assert "Access-Control-Allow-Origin" not in answer


def test_flower_api_with_credentials_sends_no_cors_header(flower: str) -> None:
    status, headers, _ = http(
        f"{flower}/api/task/async-apply/ops.nope", {"kwargs": {}}, auth=FLOWER_AUTH
    )
    assert status == 404  # authenticated and past the XSRF check without any cookie
    assert "Access-Control-Allow-Origin" not in headers


def test_flower_answers_404_for_an_unknown_op(flower: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        http_json(f"{flower}/api/task/async-apply/ops.nope", {"kwargs": {}})
    assert raised.value.code == 404


def test_flower_reads_queue_lengths_through_its_redis_broker_client(
    flower: str, workers: Callable[..., WorkerProcess]
) -> None:
    # Flower picks its broker client by the URL scheme kombu reports: bot's transport must
    # leave it redis://
    workers("w1")

    def lengths() -> Any:
        answer = http_json(f"{flower}/api/queues/length")
        return answer["active_queues"] or None

    queues = wait_for(lengths, 30, "Flower to report queue lengths")
    assert [(q["name"], type(q["messages"])) for q in queues] == [("celery", int)]  # type: ignore[attr-defined]


def printed_credentials(log: str) -> str:
    """The `user:password` `bot up` printed for Flower."""
    found = re.search(r"user:password  (\S+)", log)
    assert found, f"bot up printed no Flower credentials:\n{log[-2000:]}"
    return found.group(1)


def test_bot_up_starts_redis_worker_beat_and_flower_then_stops_them(tmp_path: Path) -> None:
    redis_port, flower_port = free_port(), free_port()
    env = bot_env(f"redis://127.0.0.1:{redis_port}/0", tmp_path / "state")
    env.pop("FLOWER_BASIC_AUTH", None)  # bot up makes its own
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [BOT, "up", "--autoscale=2,1", f"--flower-port={flower_port}"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: answers(f"http://127.0.0.1:{flower_port}/healthcheck"), 60, "Flower from bot up"
        )
        done = run_bot(env, "submit", "sum", "a=1", "b=2", "--wait", "--timeout", "60")
        assert done.stdout.strip() == "3", done.stderr
        assert (tmp_path / "state" / "redis" / "appendonlydir").is_dir()  # private Redis, AOF on

        # Flower's API: refused without the credentials `bot up` printed, working with them
        base = f"http://127.0.0.1:{flower_port}"
        credentials = printed_credentials((tmp_path / "up.log").read_text(errors="replace"))
        url = f"{base}/api/task/async-apply/ops.sum"
        status, headers, _ = http(url, {"kwargs": {"a": 1, "b": 2}})
        assert status == 401 and "Access-Control-Allow-Origin" not in headers
        sent = http_json(url, {"kwargs": {"a": 20, "b": 22}}, auth=credentials)
        app = create_app(Settings(redis_url=env["BOT_REDIS_URL"], state_dir=tmp_path / "state"))
        assert app.AsyncResult(sent["task-id"]).get(timeout=30) == 42

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
    text = (tmp_path / "up.log").read_text(errors="replace")
    assert "started a private redis-server" in text
    # the beat ran beside the worker, held redbeat's lock and let it go when stopped
    assert "beat: Acquired lock" in text and "beat: Releasing lock" in text
    assert text.count(credentials) == 2  # printed once: the login line and the curl example
    assert "FLOWER_UNAUTHENTICATED_API" not in text
    assert not answers(f"http://127.0.0.1:{flower_port}/healthcheck")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"--port {redis_port}" not in ps
    assert f"--port={flower_port}" not in ps


def test_flower_shows_progress_as_state_and_readable_result(
    flower: str, make_settings: Callable[..., Any], workers: Callable[..., WorkerProcess]
) -> None:
    # Observed in Flower 2.2: a custom task event becomes the task's state, its extra fields are
    # not shown, but the standard `result` field is; so bot's progress event carries a summary.
    workers("w1")
    app = create_app(make_settings())
    job = app.send_task("ops.sleep", kwargs={"seconds": 6, "steps": 6})

    shown = wait_for(
        lambda: (info := task_info(flower, job.id)).get("state") == "PROGRESS" and info,
        20,
        "Flower to show the job in PROGRESS",
    )

    assert shown["result"].split(" ")[0] in {f"{n}/6" for n in range(1, 6)}  # type: ignore[index]
    assert "slept" in shown["result"]  # type: ignore[index]
    assert job.get(timeout=30)["slept_s"] >= 6
