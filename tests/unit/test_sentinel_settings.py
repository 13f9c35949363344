"""Sentinel addresses: `sentinel://` URLs with BOT_REDIS_SENTINEL_MASTER reach every Redis
user (kombu's transport options, Celery's result backend options, redbeat, bot's own client),
and a missing master name is one line naming the variable (exit 2)."""

from __future__ import annotations

import os

import pytest
import redis.sentinel

from bot.broker.transport import Channel as BotChannel
from bot.broker.transport import SentinelChannel, SentinelTransport, install
from bot.store.connect import client_for_url
from config.celery_config import broker_transport_options, celery_config
from config.settings import ConfigError, Settings, load_settings, parse_sentinel_url, redact_url

SENTINELS = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BOT_"):
            monkeypatch.delenv(name)


def sentinel_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"redis_url": SENTINELS, "redis_sentinel_master": "mymaster"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_sentinel_url_without_master_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOT_REDIS_URL", SENTINELS)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "BOT_REDIS_SENTINEL_MASTER: must name the master" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert raised.value.code == 2


def test_sentinel_result_url_alone_needs_the_master_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_RESULT_URL", "sentinel://127.0.0.1:26379")
    with pytest.raises(ConfigError, match="BOT_REDIS_SENTINEL_MASTER"):
        load_settings()


@pytest.mark.parametrize("url", ["sentinel://", "sentinel://h:1;redis://h:2", "sentinel://h/x"])
def test_malformed_sentinel_url_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("BOT_REDIS_URL", url)
    monkeypatch.setenv("BOT_REDIS_SENTINEL_MASTER", "mymaster")
    with pytest.raises(ConfigError, match="BOT_REDIS_URL: "):
        load_settings()


def test_sentinel_url_parses_sentinels_db_and_master_password() -> None:
    address = parse_sentinel_url(SENTINELS)
    assert address.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert (address.db, address.password, address.username) == (2, "s3cret", None)


def test_sentinel_password_is_redacted_in_every_address() -> None:
    url = "sentinel://:pw1@h1:26379;sentinel://:pw2@h2:26379"
    assert redact_url(url) == "sentinel://***@h1:26379;sentinel://***@h2:26379"


def test_broker_and_result_backend_get_the_master_name() -> None:
    settings = sentinel_settings()
    config = celery_config(settings)
    assert config["broker_url"] == SENTINELS
    assert broker_transport_options(settings)["master_name"] == "mymaster"
    assert config["result_backend"] == SENTINELS
    result_options = config["result_backend_transport_options"]
    assert result_options["master_name"] == "mymaster"
    # Celery hands sentinel_kwargs to redis-py as given ({} when unset: no timeouts at all).
    assert result_options["sentinel_kwargs"]["socket_timeout"] > 0


def test_plain_redis_urls_get_no_sentinel_options() -> None:
    config = celery_config(Settings())
    assert "master_name" not in config["broker_transport_options"]
    assert config["result_backend_transport_options"] == {}
    assert config["redbeat_redis_url"] == "redis://localhost:6379/0"


def test_redbeat_gets_its_own_sentinel_form() -> None:
    config = celery_config(sentinel_settings())
    assert config["redbeat_redis_url"] == "redis-sentinel://"
    options = config["redbeat_redis_options"]
    assert options["sentinels"] == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert (options["service_name"], options["db"], options["password"]) == (
        "mymaster",
        2,
        "s3cret",
    )


def test_bot_client_follows_the_master_through_sentinel() -> None:
    client = client_for_url(SENTINELS, "mymaster", decode_responses=True, socket_timeout=3.0)
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "s3cret"
    assert pool.connection_kwargs["decode_responses"] is True
    sentinel = pool.sentinel_manager
    addresses = [s.connection_pool.connection_kwargs["port"] for s in sentinel.sentinels]
    assert addresses == [26379, 26380, 26379]
    # The sentinels' own connections carry the same socket timeouts (never a hang).
    assert sentinel.sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 3.0


def test_sentinel_scheme_resolves_to_bots_transport() -> None:
    import kombu.transport

    install()
    assert kombu.transport.resolve_transport("sentinel") is SentinelTransport
    assert issubclass(SentinelChannel, BotChannel)
    # bot's repairs come before kombu's Sentinel channel, whose pools follow the master.
    mro = SentinelChannel.__mro__
    assert mro.index(BotChannel) < mro.index(kombu.transport.redis.SentinelChannel)
    assert "master_name" in SentinelChannel.from_transport_options


def test_flowers_broker_page_asks_the_first_sentinel_for_the_master() -> None:
    """Observed (Flower 2.x, kombu 5.7): Flower builds its queue-length client from the
    connection's `as_uri()`, which is the first address only, and the master's name from the
    broker transport options: it follows the master, through one sentinel."""
    from flower.utils.broker import Broker, RedisSentinel
    from kombu import Connection

    settings = sentinel_settings()
    with Connection(SENTINELS) as conn:
        first = conn.as_uri(include_password=True)
    assert first == "sentinel://:s3cret@10.0.0.1:26379/2"
    broker = Broker(first, broker_options=broker_transport_options(settings))
    assert isinstance(broker, RedisSentinel)
    assert broker.master_name == "mymaster"
