"""`bot up`'s Flower: always behind basic auth, with credentials generated unless given."""

from __future__ import annotations

import pytest

from bot.cli.up import FLOWER_USER, flower_auth, flower_banner, flower_env, flower_url


def test_generated_credentials_are_random_and_safe_for_flower() -> None:
    first, second = flower_auth({}), flower_auth({})
    assert first.generated and first.user == FLOWER_USER
    user, password = first.credentials.split(":")
    assert user == FLOWER_USER and len(password) >= 32
    assert "," not in password  # Flower splits FLOWER_BASIC_AUTH on commas
    assert first.credentials != second.credentials


def test_a_given_flower_basic_auth_is_kept() -> None:
    auth = flower_auth({"FLOWER_BASIC_AUTH": "admin:s3cret"})
    assert (auth.credentials, auth.generated, auth.user) == ("admin:s3cret", False, "admin")


def test_flower_runs_with_basic_auth_and_never_the_unauthenticated_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    auth = flower_auth({})
    env = flower_env(auth)
    assert env["FLOWER_BASIC_AUTH"] == auth.credentials
    assert "FLOWER_UNAUTHENTICATED_API" not in env


def test_banner_shows_generated_credentials_once_with_a_curl_example() -> None:
    auth = flower_auth({})
    banner = flower_banner(auth, flower_url("127.0.0.1", 5555))
    assert banner.count(auth.credentials) == 2  # the login line and the curl example
    assert f"curl -u '{auth.credentials}' -X POST" in banner
    assert "http://127.0.0.1:5555/api/task/async-apply/ops.sum" in banner


def test_banner_does_not_repeat_a_password_the_user_gave() -> None:
    banner = flower_banner(flower_auth({"FLOWER_BASIC_AUTH": "admin:s3cret"}), "http://h:1")
    assert "s3cret" not in banner
    assert "admin" in banner and "FLOWER_BASIC_AUTH" in banner


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:5555"),
        ("0.0.0.0", "http://127.0.0.1:5555"),
        ("::", "http://[::1]:5555"),
        ("::1", "http://[::1]:5555"),
        ("flower.local", "http://flower.local:5555"),
    ],
)
def test_flower_url_is_where_a_local_client_reaches_it(address: str, url: str) -> None:
    assert flower_url(address, 5555) == url
