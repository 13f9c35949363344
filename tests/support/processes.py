"""Real `celery -A bot worker` (and Flower, and `bot` CLI) subprocesses for e2e tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
BOT = str(BIN_DIR / "bot")
#: The test-only ops (`touch`, `crash`), loaded through BOT_OPS_MODULES; named, not imported,
#: so importing this module registers nothing.
FAULT_OPS = "tests.support.fault_ops"
#: The test-only ops and pipelines of pipeline-run tests (they use `crash` too).
PIPELINE_OPS = "tests.support.pipeline_ops"


#: Settings that make a worker's heartbeat, retries and sink breaker fast enough for e2e tests
#: of delivery and recovery (seconds, as BOT_* strings).
FAST_FLEET = {
    "BOT_HEARTBEAT_INTERVAL": "0.5",
    "BOT_RETRY_BASE_DELAY": "0.05",
    "BOT_RETRY_MAX_DELAY": "0.2",
    "BOT_BREAKER_THRESHOLD": "3",
    "BOT_BREAKER_TIMEOUT": "1",
}


def bot_env(
    redis_url: str, state_dir: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a bot process: this one's, minus any BOT_*, plus the test-only ops
    (importable from the checkout: console scripts do not put their working directory on
    sys.path) and the given values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env.update(
        BOT_REDIS_URL=redis_url,
        BOT_STATE_DIR=str(state_dir),
        BOT_OPS_MODULES=FAULT_OPS,
        PYTHONUNBUFFERED="1",
        PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH")))),
    )
    env.update(extra or {})
    return env


def run_bot(
    env: Mapping[str, str], *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the `bot` console script to completion."""
    return run_to_end([BOT, *args], env, REPO_ROOT, timeout_s)


def run_python(
    code: str, env: Mapping[str, str], cwd: Path = REPO_ROOT, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh Python process (this venv's) to completion."""
    return run_to_end([sys.executable, "-c", code], env, cwd, timeout_s)


def run_to_end(
    argv: list[str], env: Mapping[str, str], cwd: Path, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output as text."""
    return subprocess.run(
        argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout_s
    )


def wait_for(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1
) -> object:
    """Poll `predicate` until it returns something truthy; fail the test naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class ManagedProcess:
    """A subprocess in its own process group, logging to a file; stopped with SIGTERM, or
    with SIGKILL of the whole group (pool children included)."""

    kind = "process"

    def __init__(self, name: str, env: Mapping[str, str], log_path: Path, args: list[str]) -> None:
        self.name = name
        self.env = dict(env)
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Self:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_until(self, ready: Callable[[], bool], timeout_s: float) -> Self:
        """Wait for `ready()`; fail with the log's tail if the process exits first."""

        def check() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.kind} {self.name} exited early:\n{self.log()[-3000:]}")
            return ready()

        wait_for(check, timeout_s, f"{self.kind} {self.name} to be ready")
        return self

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20) -> int | None:
        """SIGTERM, then SIGKILL of the whole process group if it hangs; the exit code."""
        if not self.alive():
            return self.process.returncode if self.process else None
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


class WorkerProcess(ManagedProcess):
    """One `celery -A bot worker` process with its own log file."""

    kind = "worker"

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        concurrency: int = 2,
        extra_args: tuple[str, ...] = (),
        app: str = "bot",
        queues: str | None = None,
    ) -> None:
        autoscaled = any(arg.startswith("--autoscale") for arg in extra_args)
        args = [
            *(sys.executable, "-m", "celery", "-A", app, "worker", "-n", f"{name}@%h"),
            *("-l", "info", "--without-gossip", "--without-mingle"),
            *(() if autoscaled else ("-c", str(concurrency))),
            *(("-Q", queues) if queues else ()),
            *extra_args,
        ]
        super().__init__(name, env, log_dir / f"worker-{name}.log", args)

    def wait_ready(self, timeout_s: float = 40) -> WorkerProcess:
        return self.wait_until(lambda: " ready." in self.log(), timeout_s)

    def children(self) -> list[int]:
        """Pids of the pool processes (direct children of the worker)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []
