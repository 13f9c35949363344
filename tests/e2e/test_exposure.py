"""What a production process exposes: no test-only ops, and no Redis connection over TLS that
does not check the server's certificate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support.processes import BOT, REPO_ROOT, bot_env, run_python, run_to_end

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
