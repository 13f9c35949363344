"""`bot up`: run a local fleet — a worker with --autoscale, celery beat (the schedules) and
Flower — against BOT_REDIS_URL. The command and the supervisor behind it (`LocalFleet`, `run`).

When nothing answers at a loopback BOT_REDIS_URL and `redis-server` is on PATH, a private one is
started with AOF under the state dir. Ctrl-C (or SIGTERM) stops everything this started, worker
(a warm shutdown), beat and Flower first, then the private Redis.

The beat is safe beside the beats of other hosts: it fires schedules only while it holds
celery-redbeat's lock (bot/flows/beat.py).

Flower always runs with HTTP basic auth: `FLOWER_BASIC_AUTH` when the user set it, otherwise
credentials generated at start and printed once. Flower 2.2 with basic auth refuses an API call
without credentials (401) and a browser's cross-site POST (403, by Sec-Fetch-Site / Origin), and
sends no `Access-Control-Allow-Origin`; `curl -u user:password` needs no XSRF cookie. Its
unauthenticated mode (FLOWER_UNAUTHENTICATED_API) would let any web page submit jobs.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import click
import redis

from bot import app
from bot.store.connect import UNREACHABLE, ping_url
from config.logging_setup import configure_logging
from config.settings import Settings

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Seconds a child gets to stop after SIGTERM before it is killed.
STOP_GRACE_S = 30.0
#: The user of the Flower credentials `bot up` generates.
FLOWER_USER = "bot"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if not self.alive():
            return
        self.terminate()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs; killing it", self.name, grace_s)
            self.process.kill()
            self.process.wait(timeout=10)


def redis_answers(url: str, timeout_s: float = 1.0, sentinel_master: str | None = None) -> bool:
    """Whether the Redis at `url` (the master a sentinel:// URL names) answers PING."""
    try:
        ping_url(url, sentinel_master, timeout_s)
        return True
    except (*UNREACHABLE, OSError):
        return False
    except redis.ResponseError:  # it answers, but e.g. wants AUTH: not ours to replace
        return True


def private_redis_command(settings: Settings) -> list[str] | None:
    """The redis-server command for a private server at BOT_REDIS_URL, or None when that URL
    is not on this host or redis-server is not on PATH."""
    parts = urlsplit(settings.redis_url)
    server = shutil.which("redis-server")
    if parts.scheme != "redis" or parts.hostname not in LOOPBACK_HOSTS or server is None:
        return None
    data_dir = Path(settings.state_dir, "redis").resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return [
        server,
        "--port",
        str(parts.port or 6379),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
    ]


@dataclass(frozen=True)
class FlowerAuth:
    """Flower's basic-auth credentials, as Flower reads FLOWER_BASIC_AUTH
    (`user:password`, several separated by commas)."""

    credentials: str
    #: True when `bot up` made them (they are printed), False when the user gave them.
    generated: bool

    @property
    def user(self) -> str:
        return self.credentials.split(",", 1)[0].split(":", 1)[0]


def flower_auth(environ: Mapping[str, str]) -> FlowerAuth:
    """The user's FLOWER_BASIC_AUTH, or new credentials with a random password. The password
    is URL-safe base64: no `,` (Flower splits the variable on commas) and no `:`."""
    given = environ.get("FLOWER_BASIC_AUTH", "").strip()
    if given:
        return FlowerAuth(given, generated=False)
    return FlowerAuth(f"{FLOWER_USER}:{secrets.token_urlsafe(24)}", generated=True)


def flower_env(auth: FlowerAuth) -> dict[str, str]:
    """Flower's environment: basic auth on, the unauthenticated API off. The credentials go
    through the environment, not the command line, which `ps` shows to every user."""
    env = dict(os.environ)
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    env["FLOWER_BASIC_AUTH"] = auth.credentials
    return env


def flower_url(address: str, port: int) -> str:
    """Where a local client reaches Flower listening on `address`."""
    host = "127.0.0.1" if address in ("", "0.0.0.0") else address
    host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def flower_banner(auth: FlowerAuth, url: str) -> str:
    """What `bot up` prints once at start: where Flower is, how to log in, a curl example."""
    if auth.generated:
        login, secret = f"user:password  {auth.credentials}", auth.credentials
    else:
        login, secret = f"user {auth.user}, password from FLOWER_BASIC_AUTH", f"{auth.user}:..."
    return "\n".join(
        [
            f"Flower: {url} (basic auth)",
            f"  {login}",
            f"  curl -u '{secret}' -X POST -H 'Content-Type: application/json' \\",
            f'       -d \'{{"kwargs": {{"a": 1, "b": 2}}}}\' {url}/api/task/async-apply/ops.sum',
        ]
    )


@dataclass
class LocalFleet:
    settings: Settings
    autoscale: str = "4,1"
    flower: bool = True
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    beat: bool = True
    children: list[Child] = field(default_factory=list)

    def start(self) -> None:
        if not redis_answers(
            self.settings.redis_url, sentinel_master=self.settings.redis_sentinel_master
        ):
            self._start_private_redis()
        celery = [sys.executable, "-m", "celery", "-A", "bot"]
        self._spawn("worker", [*celery, "worker", f"--autoscale={self.autoscale}", "-l", "info"])
        if self.beat:
            self._spawn("beat", [*celery, "beat", "-l", "info"])
        if self.flower:
            auth = flower_auth(os.environ)
            self._spawn(
                "flower",
                [
                    *celery,
                    "flower",
                    f"--address={self.flower_address}",
                    f"--port={self.flower_port}",
                ],
                flower_env(auth),
            )
            # Printed, not logged: the password must not end up in a log collector.
            print(
                flower_banner(auth, flower_url(self.flower_address, self.flower_port)), flush=True
            )

    def _start_private_redis(self) -> None:
        command = private_redis_command(self.settings)
        if command is None:
            raise RuntimeError(
                f"nothing answers at {self.settings.redacted_redis_url()} and no private "
                "redis-server can be started there "
                "(not a loopback URL, or redis-server not on PATH)"
            )
        self._spawn("redis", command)
        deadline = time.monotonic() + 10
        while not redis_answers(
            self.settings.redis_url, sentinel_master=self.settings.redis_sentinel_master
        ):
            if time.monotonic() > deadline or not self.children[-1].alive():
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.1)
        logger.info(
            "started a private redis-server (AOF under %s)", command[command.index("--dir") + 1]
        )

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        logger.info("starting %s: %s", name, " ".join(command))
        # Own process group: Ctrl-C in the terminal reaches only `bot up`, which then stops the
        # children in order (worker before Redis), instead of everything at once.
        process = subprocess.Popen(command, start_new_session=True, env=env)
        self.children.append(Child(name, process))

    def wait(self) -> int:
        """Block until a child exits unexpectedly (returns 1)."""
        while True:
            for child in self.children:
                if not child.alive():
                    logger.error(
                        "%s exited with code %s; stopping the fleet",
                        child.name,
                        child.process.returncode,
                    )
                    return 1
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to Flower, the beat and the worker at once (each stops on its own; the
        worker drains its jobs, the beat releases its lock), wait for them, and only then stop
        Redis, which they need to do so."""
        users = [child for child in self.children if child.name != "redis"]
        for child in users:
            child.terminate()
        for child in [*users, *(c for c in self.children if c.name == "redis")]:
            child.stop()
        self.children.clear()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(fleet: LocalFleet) -> int:
    """Start the fleet, wait for Ctrl-C/SIGTERM or a child's death, stop everything."""
    # Both set here: a process started in the background of a script inherits SIGINT ignored,
    # and Python then leaves it so; `bot up` must still stop on Ctrl-C / SIGINT.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        fleet.start()
        code = fleet.wait()
    except KeyboardInterrupt:
        logger.info("stopping the fleet")
    except RuntimeError as exc:
        logger.error("%s", exc)
        code = 1
    finally:
        fleet.stop()
    return code


@click.command()
@click.option("--autoscale", default="4,1", show_default=True, help="MAX,MIN pool processes.")
@click.option("--flower/--no-flower", default=True, show_default=True, help="Also run Flower.")
@click.option("--flower-address", default="127.0.0.1", show_default=True)
@click.option("--flower-port", default=5555, show_default=True, type=int)
@click.option(
    "--beat/--no-beat", default=True, show_default=True, help="Also run celery beat (schedules)."
)
def up(autoscale: str, flower: bool, flower_address: str, flower_port: int, beat: bool) -> None:
    """Run a local fleet until Ctrl-C: a worker, celery beat, Flower, and a private Redis when
    needed."""
    configure_logging(app.settings)
    fleet = LocalFleet(app.settings, autoscale, flower, flower_address, flower_port, beat=beat)
    sys.exit(run(fleet))


COMMANDS: list[click.Command] = [up]
