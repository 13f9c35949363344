"""Identity: fingerprint, bot_id derivation, instance rotation, private persistence, and a
corrupt or foreign identity file replaced with a warning instead of a crash."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import socket
import stat
from pathlib import Path

import pytest

from bot.fleet.identity import (
    IDENTITY_FILE,
    derive_bot_id,
    local_identities,
    machine_fingerprint,
    resolve_identity,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fingerprint_is_sha256_of_hostname_and_platform() -> None:
    expected = hashlib.sha256(f"{socket.gethostname()}|{platform.platform()}".encode()).hexdigest()

    assert machine_fingerprint() == expected
    assert machine_fingerprint("h1", "p") != machine_fingerprint("h2", "p")


def test_state_dir_is_0700_and_file_0600(tmp_path: Path) -> None:
    state_dir = tmp_path / "new" / "state"

    resolve_identity(state_dir, "w1@host")

    assert mode(state_dir) == 0o700
    assert mode(state_dir / IDENTITY_FILE) == 0o600


def test_an_existing_lax_state_dir_is_tightened(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)

    resolve_identity(state_dir, "w1@host")

    assert mode(state_dir) == 0o700


def test_instance_id_rotates_on_every_start_and_bot_id_does_not(tmp_path: Path) -> None:
    first = resolve_identity(tmp_path, "w1@host")
    second = resolve_identity(tmp_path, "w1@host")

    assert first.instance_id != second.instance_id
    assert first.bot_id == second.bot_id
    stored = local_identities(tmp_path)["w1@host"]
    assert stored["instance_id"] == second.instance_id


def test_workers_with_other_node_names_are_distinct_and_share_the_file(tmp_path: Path) -> None:
    one = resolve_identity(tmp_path, "w1@host")
    two = resolve_identity(tmp_path, "w2@host")

    assert one.bot_id != two.bot_id
    assert set(local_identities(tmp_path)) == {"w1@host", "w2@host"}
    assert one.bot_id == derive_bot_id(one.fingerprint, "w1@host")


def test_bot_id_setting_wins(tmp_path: Path) -> None:
    assert resolve_identity(tmp_path, "w1@host", "edge-7").bot_id == "edge-7"


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'{"workers": {"w": 3}}', b""],
    ids=["bad-json", "not-utf8", "a-list", "bad-layout", "empty"],
)
def test_a_corrupt_file_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    (tmp_path / IDENTITY_FILE).write_bytes(content)

    with caplog.at_level(logging.WARNING, logger="bot.fleet.identity"):
        identity = resolve_identity(tmp_path, "w1@host")

    assert "replacing it" in caplog.text
    data = json.loads((tmp_path / IDENTITY_FILE).read_text())
    assert data["workers"]["w1@host"]["instance_id"] == identity.instance_id
    assert mode(tmp_path / IDENTITY_FILE) == 0o600


def test_an_unreadable_file_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / IDENTITY_FILE).write_text("{}")
    real_read = Path.read_text

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == IDENTITY_FILE:
            raise PermissionError(13, "Permission denied")
        return real_read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", denied)
    with caplog.at_level(logging.WARNING, logger="bot.fleet.identity"):
        resolve_identity(tmp_path, "w1@host")

    assert "unreadable" in caplog.text
    monkeypatch.undo()
    assert "w1@host" in local_identities(tmp_path)


def test_no_temp_files_are_left_behind(tmp_path: Path) -> None:
    for _ in range(3):
        resolve_identity(tmp_path, "w1@host")

    assert sorted(p.name for p in tmp_path.iterdir()) == [".identity.lock", IDENTITY_FILE]
