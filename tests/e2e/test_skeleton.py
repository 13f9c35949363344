"""The walking skeleton end to end: real redis-server, real `celery -A bot worker` processes,
the real `bot` console script, and a second Python process using plain Celery."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pytest

from bot.application import create_app
from bot.errors import PayloadRejected
from tests.support.processes import (
    BOT,
    REPO_ROOT,
    WorkerProcess,
    run_bot,
    run_python,
    run_to_end,
    wait_for,
)

pytestmark = pytest.mark.e2e

FAST_RETRIES = {"BOT_RETRY_BASE_DELAY": "0.05", "BOT_RETRY_MAX_DELAY": "0.2"}


def outbox_reports(redis_server: Any) -> list[dict[str, Any]]:
    return [
        json.loads(fields["report"]) for _, fields in redis_server.client().xrange("bot:outbox")
    ]


def test_submit_wait_prints_the_result(
    env: dict[str, str], workers: Callable[..., WorkerProcess]
) -> None:
    workers("w1")

    done = run_bot(env, "submit", "sum", "a=1", "b=2", "--wait")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_send_task_from_another_process(
    env: dict[str, str], workers: Callable[..., WorkerProcess]
) -> None:
    workers("w1")
    code = (
        "import bot; print(bot.app.send_task('ops.sum', kwargs={'a': 1, 'b': 2}).get(timeout=30))"
    )

    done = run_python(code, env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_cli_rejects_a_bad_payload_and_enqueues_nothing(
    env: dict[str, str], redis_server: Any
) -> None:
    done = run_bot(env, "submit", "sum", "a=x", "b=2")

    assert done.returncode == 2
    assert "a: Input should be a valid number" in done.stderr
    assert "Traceback" not in done.stderr
    assert redis_server.client().dbsize() == 0  # no message, no record


def test_bad_payload_past_the_client_is_rejected_after_one_attempt(
    make_settings: Callable[..., Any], workers: Callable[..., WorkerProcess], redis_server: Any
) -> None:
    workers("w1")
    app = create_app(make_settings())

    result = app.send_task("ops.sum", kwargs={"a": "x", "b": 2})

    with pytest.raises(PayloadRejected) as raised:
        result.get(timeout=30)
    assert [error["loc"] for error in raised.value.errors] == [["a"]]
    record = app.job_store().read(result.id)
    assert record["state"] == "rejected"
    assert record["attempts"] == "1"
    (report,) = outbox_reports(redis_server)
    assert report["status"] == "rejected"
    assert report["error"]["details"][0]["loc"] == ["a"]
    assert redis_server.client().llen("celery") == 0  # acked, not requeued


def test_flaky_is_retried_the_configured_times_then_fails(
    make_settings: Callable[..., Any], workers: Callable[..., WorkerProcess], redis_server: Any
) -> None:
    workers("w1", extra_env=FAST_RETRIES)
    app = create_app(make_settings())

    result = app.send_task("ops.flaky", kwargs={"failure_rate": 1})

    with pytest.raises(Exception, match="flaky failure") as raised:
        result.get(timeout=60)
    assert type(raised.value).__name__ == "FlakyFailure"
    record = app.job_store().read(result.id)
    assert record["state"] == "failed"
    assert record["attempts"] == "4"  # the first try and max_retries=3 retries
    (report,) = outbox_reports(redis_server)
    assert (report["status"], report["attempts"], report["error"]["type"]) == (
        "failed",
        4,
        "FlakyFailure",
    )


def test_sleep_progress_is_readable_by_bot_status(
    env: dict[str, str], workers: Callable[..., WorkerProcess]
) -> None:
    workers("w1")
    job_id = run_bot(env, "submit", "sleep", "seconds=4", "steps=8").stdout.strip()

    def status() -> dict[str, Any]:
        return json.loads(run_bot(env, "status", job_id, "--json").stdout)

    midway = wait_for(
        lambda: (s := status())["progress"] and s["progress"]["current"] < 8 and s,
        20,
        "a progress report while the job runs",
    )
    assert midway["state"] == "running"  # type: ignore[index]
    assert midway["progress"]["total"] == 8  # type: ignore[index]
    final = wait_for(lambda: (s := status())["state"] == "succeeded" and s, 20, "the job to end")
    assert final["progress"]["current"] == 8  # type: ignore[index]
    shown = run_bot(env, "status", job_id).stdout
    assert "progress     8/8" in shown and "attempts     1" in shown


def test_own_job_id_is_an_idempotency_key(
    env: dict[str, str], workers: Callable[..., WorkerProcess], redis_server: Any
) -> None:
    workers("w1")

    first = run_bot(env, "submit", "sum", "a=2", "b=3", "--id", "order-42", "--wait")
    again = run_bot(env, "submit", "sum", "a=2", "b=3", "--id", "order-42", "--wait")

    assert first.stdout.strip() == again.stdout.strip() == "5"
    assert "already known; not enqueued again" in again.stderr
    assert len(outbox_reports(redis_server)) == 1


def test_unknown_op_sent_raw_is_rejected_with_a_report(
    make_settings: Callable[..., Any], workers: Callable[..., WorkerProcess], redis_server: Any
) -> None:
    workers("w1")
    app = create_app(make_settings())

    result = app.send_task("ops.nope", kwargs={"a": 1})

    with pytest.raises(Exception, match="nope"):
        result.get(timeout=30)
    report = wait_for(lambda: outbox_reports(redis_server), 10, "the rejection report")
    assert report[0]["status"] == "rejected"  # type: ignore[index]
    assert report[0]["error"]["type"] == "UnknownOp"  # type: ignore[index]


@pytest.mark.parametrize("command", ["worker", "cli"])
def test_bad_setting_stops_start_up_with_one_line_and_exit_2(
    env: dict[str, str], command: str
) -> None:
    bad_env = {**env, "BOT_HEARTBEAT_INTERVAL": "soon"}
    args = (
        [sys.executable, "-m", "celery", "-A", "bot", "worker"]
        if command == "worker"
        else [BOT, "ops"]
    )

    done = run_to_end(args, bad_env, REPO_ROOT, 60)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "bot: invalid configuration: BOT_HEARTBEAT_INTERVAL: "
        "Input should be a valid number, unable to parse string as a number"
    ]


def test_readme_plain_celery_example_works_without_importing_bot(
    env: dict[str, str], redis_url: str, workers: Callable[..., WorkerProcess], tmp_path: Any
) -> None:
    workers("w1")
    readme = (REPO_ROOT / "README.md").read_text()
    example = readme.split("(no `bot` import needed on its side):", 1)[1].split("```python", 1)[1]
    code = example.split("```", 1)[0].replace("redis://localhost:6379/0", redis_url)
    assert "import bot" not in code and "from bot" not in code

    done = run_python(code, env, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


KWARGS = '{"a": 4, "b": 5}'


def test_celery_call_command_enqueues_an_op(
    env: dict[str, str], make_settings: Callable[..., Any], workers: Callable[..., WorkerProcess]
) -> None:
    workers("w1")

    done = run_to_end(
        [*(sys.executable, "-m", "celery", "-A", "bot", "call", "ops.sum"), "--kwargs", KWARGS],
        env,
        REPO_ROOT,
        60,
    )

    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    assert create_app(make_settings()).AsyncResult(job_id).get(timeout=30) == 9


def test_cli_refuses_a_job_id_of_the_wrong_form_escaped_and_enqueues_nothing(
    env: dict[str, str], redis_server: Any
) -> None:
    done = run_bot(env, "submit", "sum", "a=1", "b=2", "--id", "bad\nid")

    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0].startswith("bot: invalid job id: job id must match")
    assert lines[1] == "  job_id: job id must match ^[A-Za-z0-9._:@-]{1,200}$ (got bad\\x0aid)"
    assert redis_server.client().dbsize() == 0
