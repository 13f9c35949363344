"""What a production process exposes: no test-only ops, and no Redis connection over TLS that
does not check the server's certificate; the README's TLS URL works against a TLS-only Redis."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.processes import (
    BOT,
    REPO_ROOT,
    WorkerProcess,
    bot_env,
    run_bot,
    run_python,
    run_to_end,
    wait_for,
)
from tests.support.redis_server import REDIS_SERVER, free_port

pytestmark = pytest.mark.e2e

#: A TLS URL with nothing to say how to check the certificate: kombu would connect with
#: CERT_NONE (only a log warning), and Celery's result backend raises deep in the worker.
BARE_REDISS = "rediss://:hunter2@127.0.0.1:1/0"


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """bot_env without the test-only ops: what a production worker or CLI sees."""
    env = bot_env("redis://127.0.0.1:1/0", tmp_path / "state", extra)
    del env["BOT_OPS_MODULES"]
    return env


def test_a_production_app_has_no_test_only_ops(tmp_path: Path) -> None:
    code = (
        "import json; from bot.application import create_app; from config.settings import"
        " Settings; app = create_app(Settings(), fleet=False);"
        " print(json.dumps(sorted(n for n in app.tasks if n.startswith('ops.'))))"
    )

    done = run_python(code, production_env(tmp_path), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    ops = json.loads(done.stdout)
    assert "ops.sum" in ops
    assert "ops.crash" not in ops and "ops.touch" not in ops


def test_the_test_environment_loads_the_fault_ops(tmp_path: Path) -> None:
    env = bot_env("redis://127.0.0.1:1/0", tmp_path / "state")

    done = run_to_end([BOT, "ops"], env, REPO_ROOT, 60)

    assert done.returncode == 0, done.stderr
    assert "crash" in done.stdout and "touch" in done.stdout


@pytest.mark.parametrize("variable", ["BOT_REDIS_URL", "BOT_RESULT_URL"])
@pytest.mark.parametrize("command", ["health", "worker"])
def test_rediss_without_certificate_options_stops_with_one_line_and_exit_2(
    tmp_path: Path, variable: str, command: str
) -> None:
    env = production_env(tmp_path, **{variable: BARE_REDISS})
    args = (
        [sys.executable, "-m", "celery", "-A", "bot", "worker"]
        if command == "worker"
        else [BOT, "health"]
    )

    done = run_to_end(args, env, REPO_ROOT, 60)

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"bot: invalid configuration: {variable}: a rediss:// URL must say how to check the"
        " server's certificate: add ?ssl_cert_reqs=required&ssl_ca_certs=/path/to/ca.pem"
        " (ssl_cert_reqs: required, optional or none)"
    ]
    assert "hunter2" not in done.stdout + done.stderr


def make_certificates(directory: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it; the CA's path."""
    ca, key = directory / "ca.pem", directory / "ca.key"
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        f"req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bot-test-ca -keyout {key} -out {ca}",
        f"req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {directory}/server.key"
        f" -out {directory}/server.csr",
        f"x509 -req -days 1 -in {directory}/server.csr -CA {ca} -CAkey {key} -CAcreateserial"
        f" -extfile {directory}/san.ext -out {directory}/server.pem",
    ]
    for step in steps:
        subprocess.run(["openssl", *step.split()], check=True, capture_output=True)
    return ca


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks only TLS on a free loopback port; (port, CA file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = make_certificates(certs)
    port = free_port()
    args = [
        *(REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
        *("--tls-cert-file", str(certs / "server.pem")),
        *("--tls-key-file", str(certs / "server.key")),
        *("--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"),
        *("--dir", str(certs), "--save", "", "--appendonly", "no"),
    ]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(
            host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=2
        )
        wait_for(lambda: answers(client), 10, "the TLS redis-server")
        yield port, ca
    finally:
        server.terminate()
        server.wait(timeout=10)


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_the_readme_tls_url_runs_jobs_over_tls(
    tls_redis: tuple[int, Path], tmp_path: Path, workers: Callable[..., WorkerProcess]
) -> None:
    # the README's form: rediss://HOST:PORT/DB?ssl_cert_reqs=required&ssl_ca_certs=CA
    port, ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    workers("tls", extra_env={"BOT_REDIS_URL": url})
    env = bot_env(url, tmp_path / "state")

    done = run_bot(env, "submit", "sum", "a=1", "b=2", "--wait", "--timeout", "60")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


SUBMITTER_URL = "redis://submitter:SUBMITTER-PASSWORD@{host}:{port}/0"
SUBMIT_AS_SUBMITTER = """
import os, sys
from celery import Celery
from bot.application import create_app
from bot.client import Client
from config.settings import load_settings

url = os.environ["BOT_REDIS_URL"]
plain = Celery(broker=url, backend=url)
plain.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])
print(plain.send_task("ops.sum", kwargs={"a": 1, "b": 2}).get(timeout=30))
client = Client(create_app(load_settings(), fleet=False))
job = client.submit("sum", {"a": 2, "b": 3}, job_id="acl-own-id")
print(client.wait(job.job_id, timeout=30).result)
try:
    redis_client = client.app.redis()
    redis_client.hgetall("bot:workers")
except Exception as exc:
    print(type(exc).__name__)
"""


def test_the_readme_submitter_acl_submits_and_reads_results_and_nothing_more(
    env: dict[str, str],
    redis_server: Any,
    workers: Callable[..., WorkerProcess],
) -> None:
    # Given the README's ACL line for a submitter, on the test's Redis
    readme = (REPO_ROOT / "README.md").read_text()
    (line,) = [ln.strip() for ln in readme.splitlines() if ln.strip().startswith("ACL SETUSER")]
    admin = redis_server.client()
    admin.execute_command(*shlex.split(line))
    try:
        workers("w1")
        url = SUBMITTER_URL.format(host="127.0.0.1", port=redis_server.port)
        # When a service submits under that user, with plain Celery and with the Python client
        done = run_python(SUBMIT_AS_SUBMITTER, {**env, "BOT_REDIS_URL": url})
        # Then both jobs run and their results come back; bot's other keys stay out of reach
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["3", "5", "NoPermissionError"]
    finally:
        admin.execute_command("ACL", "DELUSER", "submitter")
