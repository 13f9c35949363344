"""Flower for e2e tests: a real `celery -A bot flower` with basic auth (`running_flower`, the
`flower` fixture of tests/conftest.py), and calls to its HTTP API."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.processes import REPO_ROOT, wait_for
from tests.support.redis_server import free_port

#: The credentials the `flower` fixture runs Flower with.
FLOWER_AUTH = "tester:flower-test-password"


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def json_request(
    url: str,
    body: dict[str, Any] | None,
    auth: str | None,
    headers: dict[str, str] | None = None,
) -> urllib.request.Request:
    """A request (a POST when there is a body) with basic auth when `auth` is given."""
    data = json.dumps(body).encode() if body is not None else None
    sent = {"Content-Type": "application/json", **(basic(auth) if auth else {}), **(headers or {})}
    return urllib.request.Request(url, data=data, headers=sent)


def http(
    url: str,
    body: dict[str, Any] | None = None,
    auth: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request: status, headers, body; an error status is an answer too."""
    try:
        with urllib.request.urlopen(json_request(url, body, auth, headers), timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def http_json(url: str, body: dict[str, Any] | None = None, auth: str | None = FLOWER_AUTH) -> Any:
    """A JSON call to Flower's API, by default with the fixture's credentials; HTTPError
    unless it succeeds."""
    with urllib.request.urlopen(json_request(url, body, auth), timeout=10) as response:
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


@contextmanager
def running_flower(env: Mapping[str, str], log_dir: Path) -> Iterator[str]:
    """Flower on a free loopback port with FLOWER_AUTH; yields its base URL."""
    port = free_port()
    log = (log_dir / "flower.log").open("wb")
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
        env={**env, "FLOWER_BASIC_AUTH": FLOWER_AUTH},
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/healthcheck"), 30, "Flower to answer")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()
