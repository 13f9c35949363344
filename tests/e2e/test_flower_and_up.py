"""Flower's HTTP API submits jobs; `bot up` runs a whole local fleet and stops what it started."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.application import create_app
from tests.support.processes import BOT, REPO_ROOT, WorkerProcess, bot_env, run_bot, wait_for
from tests.support.redis_server import free_port

pytestmark = pytest.mark.e2e


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def task_info(flower: str, task_id: str) -> dict[str, Any]:
    """Flower's view of a task; {} while Flower has not seen it yet (it answers 404)."""
    try:
        return dict(http_json(f"{flower}/api/task/info/{task_id}"))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def flower(env: dict[str, str], tmp_path: Path) -> Any:
    port = free_port()
    log = (tmp_path / "flower.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bot",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
        ],
        env={**env, "FLOWER_UNAUTHENTICATED_API": "true"},
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{base}/healthcheck"), 30, "Flower to answer")
    yield base
    process.terminate()
    process.wait(timeout=15)
    log.close()


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


def test_bot_up_starts_redis_worker_and_flower_then_stops_them(tmp_path: Path) -> None:
    redis_port, flower_port = free_port(), free_port()
    env = bot_env(f"redis://127.0.0.1:{redis_port}/0", tmp_path / "state")
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

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
    text = (tmp_path / "up.log").read_text(errors="replace")
    assert "started a private redis-server" in text
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
