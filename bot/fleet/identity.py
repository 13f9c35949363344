"""Who this worker is: machine fingerprint, `bot_id`, per-start `instance_id`, and the private
file that remembers them (`BOT_STATE_DIR/identity.json`).

- `machine_fingerprint` = sha256(hostname|platform).
- `bot_id` = `BOT_ID`, or derived from the fingerprint and the Celery node name, so several
  workers on one host are distinct and a worker keeps its `bot_id` across restarts.
- `instance_id` = a new uuid4 on every start (it names the lease and the worker record).

Several workers may share one state dir (one per node name on a host), so the file maps node
name -> that node's identity; `bot health` reads it to find "the local worker". The directory
is 0700 and the file 0600; writes are atomic (temp file + rename) under an flock, so two
workers starting together do not lose each other's entry. A corrupt or unreadable file is
replaced with a warning: an identity file is a cache of derivable facts, never worth a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bot.base.clock import now_ms

logger = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
_LOCK_FILE = ".identity.lock"
_FORMAT = 1
_DIR_MODE = 0o700
_FILE_MODE = 0o600


@dataclass(frozen=True)
class Identity:
    """One worker process's identity."""

    bot_id: str
    instance_id: str
    fingerprint: str
    node_name: str
    hostname: str
    started_at_ms: int
    pid: int


def machine_fingerprint(hostname: str | None = None, plat: str | None = None) -> str:
    """sha256 of `hostname|platform` (hex)."""
    host = hostname if hostname is not None else socket.gethostname()
    system = plat if plat is not None else platform.platform()
    return hashlib.sha256(f"{host}|{system}".encode()).hexdigest()


def derive_bot_id(fingerprint: str, node_name: str) -> str:
    """A stable, readable id for (machine, node name): `bot-` + 16 hex digits."""
    digest = hashlib.sha256(f"{fingerprint}|{node_name}".encode()).hexdigest()
    return f"bot-{digest[:16]}"


def resolve_identity(
    state_dir: Path,
    node_name: str,
    configured_bot_id: str | None = None,
    *,
    new_instance_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    hostname: str | None = None,
) -> Identity:
    """This start's identity, persisted in `state_dir/identity.json` (rotating `instance_id`)."""
    host = hostname if hostname is not None else socket.gethostname()
    fingerprint = machine_fingerprint(host)
    identity = Identity(
        bot_id=configured_bot_id or derive_bot_id(fingerprint, node_name),
        instance_id=new_instance_id(),
        fingerprint=fingerprint,
        node_name=node_name,
        hostname=host,
        started_at_ms=now_ms(),
        pid=os.getpid(),
    )
    with _locked(state_dir):
        workers = _read_workers(state_dir / IDENTITY_FILE)
        workers[node_name] = asdict(identity)
        _write_atomic(state_dir / IDENTITY_FILE, {"format": _FORMAT, "workers": workers})
    return identity


def local_identities(state_dir: Path) -> dict[str, dict[str, Any]]:
    """node name -> identity of every worker that started with this state dir (may be empty)."""
    return _read_workers(state_dir / IDENTITY_FILE, quiet=True)


def ensure_private_dir(path: Path) -> None:
    """Create `path` (0700), or tighten an existing one to 0700."""
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != _DIR_MODE:
        path.chmod(_DIR_MODE)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    ensure_private_dir(state_dir)
    fd = os.open(state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _read_workers(path: Path, *, quiet: bool = False) -> dict[str, dict[str, Any]]:
    """The `workers` map of the file; {} (with a warning) when it is missing, unreadable or
    not what this module writes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if not quiet:
            logger.warning("identity file %s is unreadable (%s); replacing it", path, exc)
        return {}
    workers = data.get("workers") if isinstance(data, dict) else None
    if not isinstance(workers, dict) or not all(isinstance(v, dict) for v in workers.values()):
        if not quiet:
            logger.warning("identity file %s has an unknown layout; replacing it", path)
        return {}
    return workers


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a 0600 temp file in the same dir, fsync, rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=".identity.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), _FILE_MODE)
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
