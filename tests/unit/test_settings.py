"""Settings: defaults from DESIGN.md, one readable error naming the variable for bad values."""

from __future__ import annotations

import pytest

from config.settings import ConfigError, Settings, load_settings, redact_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BOT_"):
            monkeypatch.delenv(name)


def test_defaults_match_design() -> None:
    settings = load_settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.result_backend_url == settings.redis_url
    assert settings.heartbeat_interval == 5.0
    assert settings.lease_ttl_s == 15.0  # 3 x heartbeat
    assert settings.visibility_timeout == 3600
    assert settings.max_startup_attempts == 20
    assert (settings.retry_base_delay, settings.retry_max_delay) == (1.0, 60.0)
    assert (settings.breaker_threshold, settings.breaker_timeout) == (5, 30.0)
    assert settings.max_recoveries == 3
    assert (settings.job_ttl, settings.result_ttl) == (86400, 3600)
    assert settings.key_prefix == "bot"
    assert settings.log_format == "console"
    assert settings.metrics_addr == "127.0.0.1"  # /metrics is not open to the network


def test_values_come_from_bot_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_HEARTBEAT_INTERVAL", "0.5")
    monkeypatch.setenv("BOT_QUEUES", "high, low")
    monkeypatch.setenv("BOT_OPS_MODULES", "a.ops,b.ops")
    monkeypatch.setenv("BOT_BROKER_TRANSPORT_OPTIONS", '{"unacked_restore_interval": 1}')
    monkeypatch.setenv("BOT_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.heartbeat_interval == 0.5
    assert settings.lease_ttl_s == 1.5
    assert settings.queues == ["high", "low"]
    assert settings.default_queue == "high"
    assert settings.ops_modules == ["a.ops", "b.ops"]
    assert settings.broker_transport_options == {"unacked_restore_interval": 1}
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("BOT_HEARTBEAT_INTERVAL", "abc", "BOT_HEARTBEAT_INTERVAL: Input should be a valid number"),
        ("BOT_HEARTBEAT_INTERVAL", "-1", "BOT_HEARTBEAT_INTERVAL: Input should be greater than 0"),
        ("BOT_REDIS_URL", "http://x", "BOT_REDIS_URL: must be a URL starting with one of redis://"),
        (
            "BOT_BROKER_TRANSPORT_OPTIONS",
            "{bad",
            "BOT_BROKER_TRANSPORT_OPTIONS: must be valid JSON",
        ),
        ("BOT_LOG_FORMAT", "xml", "BOT_LOG_FORMAT: Input should be 'console' or 'json'"),
        ("BOT_REPORT_URL", "ftp://x", "BOT_REPORT_URL: must be an http:// or https:// URL"),
        ("BOT_QUEUES", " , ", "BOT_QUEUES: must name at least one queue"),
        ("BOT_RESULT_TTL", "0", "BOT_RESULT_TTL: Input should be greater than 0"),
        ("BOT_RESULT_TTL", "1h", "BOT_RESULT_TTL: Input should be a valid integer"),
        ("BOT_JOB_TTL", "-5", "BOT_JOB_TTL: Input should be greater than 0"),
        ("BOT_HEARTBAET_INTERVAL", "5", "unknown setting BOT_HEARTBAET_INTERVAL"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message
    assert raised.value.code == 2


def test_lease_must_outlive_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_HEARTBEAT_INTERVAL", "5")
    monkeypatch.setenv("BOT_LEASE_TTL", "4")
    with pytest.raises(
        ConfigError, match=r"BOT_LEASE_TTL .* must be longer than BOT_HEARTBEAT_INTERVAL"
    ):
        load_settings()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.heartbeat_interval = 1  # type: ignore[misc]


def test_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_REDIS_URL", "redis://user:hunter2@redis.example:6380/1")
    monkeypatch.setenv("BOT_REPORT_TOKEN", "tok-secret")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert "tok-secret" not in repr(settings)
    assert settings.redacted_redis_url() == "redis://user:***@redis.example:6380/1"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("rediss://:pw@h:1/0", "rediss://***@h:1/0"),
        ("redis://u:pw@h/0", "redis://u:***@h/0"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize("value", ["0.0.0.0", "::", "10.1.2.3", "metrics.internal", "localhost"])
def test_metrics_addr_takes_an_ip_address_or_host(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("BOT_METRICS_ADDR", value)
    assert load_settings().metrics_addr == value


@pytest.mark.parametrize("value", ["", "0.0.0.0:9100", "http://x", "a b", "-bad-"])
def test_metrics_addr_refuses_anything_else(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BOT_METRICS_ADDR", value)
    with pytest.raises(ConfigError, match="BOT_METRICS_ADDR: must be an IP address or host name"):
        load_settings()


@pytest.mark.parametrize("name", ["BOT_REDIS_URL", "BOT_RESULT_URL"])
@pytest.mark.parametrize(
    "url",
    [
        "rediss://:secret@redis.example:6380/0",
        "rediss://redis.example:6380/0?ssl_ca_certs=/etc/ca.pem",
        "rediss://redis.example:6380/0?ssl_cert_reqs=CERT_REQUIRED",  # redis-py refuses it
        "rediss://redis.example:6380/0?ssl_cert_reqs=maybe",
    ],
)
def test_rediss_without_certificate_options_is_one_line_naming_what_to_add(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str
) -> None:
    monkeypatch.setenv(name, url)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(f"invalid configuration: {name}: a rediss:// URL must say")
    assert "ssl_cert_reqs=required&ssl_ca_certs=" in message
    assert "\n" not in message and "secret" not in message
    assert raised.value.code == 2


@pytest.mark.parametrize("reqs", ["required", "optional", "none"])
def test_rediss_with_ssl_cert_reqs_is_accepted(monkeypatch: pytest.MonkeyPatch, reqs: str) -> None:
    url = f"rediss://:pw@redis.example:6380/0?ssl_cert_reqs={reqs}&ssl_ca_certs=/etc/ca.pem"
    monkeypatch.setenv("BOT_REDIS_URL", url)
    monkeypatch.setenv("BOT_RESULT_URL", url)
    settings = load_settings()
    assert settings.redis_url == settings.result_backend_url == url


def test_retention_and_memory_guard_defaults() -> None:
    settings = load_settings()
    assert settings.outbox_max_age == 86400.0  # a day of history ...
    assert settings.outbox_max_len == 1_000_000  # ... or the last million reports (~0.5 GB)
    assert settings.outbox_dead_max_len == 100_000
    assert settings.outbox_trim_interval == 60.0
    assert settings.redis_memory_limit_share == 0.9


def test_retention_and_memory_guard_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_OUTBOX_MAX_AGE", "3600")
    monkeypatch.setenv("BOT_OUTBOX_MAX_LEN", "5000")
    monkeypatch.setenv("BOT_OUTBOX_DEAD_MAX_LEN", "0")  # keep every dead letter
    monkeypatch.setenv("BOT_OUTBOX_TRIM_INTERVAL", "0.5")
    monkeypatch.setenv("BOT_REDIS_MEMORY_LIMIT_SHARE", "1")
    settings = load_settings()
    assert (settings.outbox_max_age, settings.outbox_max_len) == (3600.0, 5000)
    assert (settings.outbox_dead_max_len, settings.outbox_trim_interval) == (0, 0.5)
    assert settings.redis_memory_limit_share == 1.0


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("BOT_OUTBOX_MAX_AGE", "0", "BOT_OUTBOX_MAX_AGE: Input should be greater than 0"),
        ("BOT_OUTBOX_MAX_AGE", "a day", "BOT_OUTBOX_MAX_AGE: Input should be a valid number"),
        ("BOT_OUTBOX_MAX_LEN", "0", "BOT_OUTBOX_MAX_LEN: Input should be greater than or equal"),
        ("BOT_OUTBOX_MAX_LEN", "1e6", "BOT_OUTBOX_MAX_LEN: Input should be a valid integer"),
        ("BOT_OUTBOX_DEAD_MAX_LEN", "-1", "BOT_OUTBOX_DEAD_MAX_LEN: Input should be greater"),
        ("BOT_OUTBOX_TRIM_INTERVAL", "0", "BOT_OUTBOX_TRIM_INTERVAL: Input should be greater"),
        ("BOT_REDIS_MEMORY_LIMIT_SHARE", "0", "BOT_REDIS_MEMORY_LIMIT_SHARE: Input should be"),
        ("BOT_REDIS_MEMORY_LIMIT_SHARE", "1.5", "BOT_REDIS_MEMORY_LIMIT_SHARE: Input should be"),
        ("BOT_REDIS_MEMORY_LIMIT_SHARE", "90%", "BOT_REDIS_MEMORY_LIMIT_SHARE: Input should be"),
        ("BOT_REPORT_CONCURRENCY", "0", "BOT_REPORT_CONCURRENCY: Input should be greater than"),
        ("BOT_REPORT_CONCURRENCY", "257", "BOT_REPORT_CONCURRENCY: Input should be less than"),
        ("BOT_REPORT_CONCURRENCY", "many", "BOT_REPORT_CONCURRENCY: Input should be a valid"),
        ("BOT_REPORT_CONCURRENCY", "2.5", "BOT_REPORT_CONCURRENCY: Input should be a valid"),
        ("BOT_REPORT_BATCH", "-1", "BOT_REPORT_BATCH: Input should be greater than or equal"),
        ("BOT_REPORT_BATCH", "1001", "BOT_REPORT_BATCH: Input should be less than or equal"),
        ("BOT_REPORT_BATCH", "yes", "BOT_REPORT_BATCH: Input should be a valid integer"),
        ("BOT_REPORT_URL", "http:///reports", "BOT_REPORT_URL: must name a host"),
    ],
)
def test_bad_retention_memory_guard_or_delivery_value_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)
    assert raised.value.code == 2


def test_report_delivery_defaults_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert (settings.report_concurrency, settings.report_batch) == (32, 0)  # batches: opt-in
    monkeypatch.setenv("BOT_REPORT_CONCURRENCY", "1")  # one POST at a time, as before
    monkeypatch.setenv("BOT_REPORT_BATCH", "100")
    settings = load_settings()
    assert (settings.report_concurrency, settings.report_batch) == (1, 100)
