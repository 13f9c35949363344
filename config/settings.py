"""The `BOT_*` settings: one frozen pydantic-settings object, read once at start-up.

Every variable DESIGN.md names is a field here. A bad or unknown `BOT_*` variable is an error
(`ConfigError`) whose message names the variable, so start-up can stop with one readable line.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

ENV_PREFIX = "BOT_"

#: Schemes redis-py and kombu accept for a Redis connection, plus kombu's Sentinel form.
REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
#: kombu's and Celery's scheme for Redis Sentinel: `sentinel://h1:26379;sentinel://h2:26379/0`.
SENTINEL_SCHEME = "sentinel"
SENTINEL_SEPARATOR = ";"
SENTINEL_DEFAULT_PORT = 26379
#: `ssl_cert_reqs` values that redis-py, kombu and Celery's result backend all accept.
SSL_CERT_REQS = ("required", "optional", "none")
#: What a rediss:// URL must say, shown when it does not (kombu would otherwise connect without
#: checking the server's certificate, and Celery's result backend refuses to start).
TLS_HINT = (
    "a rediss:// URL must say how to check the server's certificate: add "
    "?ssl_cert_reqs=required&ssl_ca_certs=/path/to/ca.pem "
    "(ssl_cert_reqs: required, optional or none)"
)
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

CommaList = Annotated[list[str], NoDecode]

#: Outbox retention defaults (BOT_OUTBOX_MAX_AGE, BOT_OUTBOX_MAX_LEN). A report entry takes
#: about 515 bytes of Redis memory (measured, Redis 7.0, a ~450-byte report), so the length
#: bound caps the acked history at ~0.5 GB whatever the job rate: at 500 jobs/s it is reached in
#: ~33 minutes (a day there would be 43 M entries, ~22 GB); a fleet of under ~11 jobs/s keeps a
#: whole day. Entries a consumer group still owes are kept past both (README, "Outbox retention").
OUTBOX_MAX_AGE_S = 24 * 3600.0
OUTBOX_MAX_LEN = 1_000_000
#: BOT_REPORT_CONCURRENCY's default and BOT_REPORT_BATCH's upper bound (a batch's answer names
#: what it accepted: a thousand keys fit the answer size the sink reads).
REPORT_CONCURRENCY = 32
REPORT_BATCH_MAX = 1000
#: BOT_OUTBOX_DEAD_MAX_LEN's default: dead letters are kept (by count only, never by age) until
#: replayed; beyond this many the oldest are dropped with a warning (tens of MB of reports).
OUTBOX_DEAD_MAX_LEN = 100_000


class ConfigError(SystemExit):
    """A bad configuration. Exits with code 2 when it reaches the top of the process."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Settings(BaseSettings):
    """Every `BOT_*` variable. Times are seconds (floats) unless the name says otherwise."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    redis_url: str = Field("redis://localhost:6379/0", repr=False)
    result_url: str | None = Field(None, repr=False)
    #: The master name Sentinel monitors (`sentinel monitor <name> ...`); required when
    #: BOT_REDIS_URL or BOT_RESULT_URL is a `sentinel://` URL (docs/failover.md).
    redis_sentinel_master: str | None = Field(None, min_length=1)
    #: After the script that ends a job: WAIT for this many replicas to acknowledge it (0: do
    #: not wait). Fewer in time is logged and counted, never a failed job (docs/failover.md).
    redis_min_replicas: int = Field(0, ge=0)
    #: Seconds that WAIT may take.
    redis_wait_timeout: float = Field(0.5, gt=0)
    id: str | None = None
    state_dir: Path = Path(".state")
    heartbeat_interval: float = Field(5.0, gt=0)
    lease_ttl: float | None = Field(None, gt=0)
    reaper_interval: float = Field(5.0, gt=0)
    max_recoveries: int = Field(3, ge=0)
    #: A pipeline run whose current stage has had no job running and no change for this long
    #: is ended `failed` as stalled (a lost message): bot/flows/run_audit.py.
    pipeline_stall_timeout: float = Field(3600.0, gt=0)
    visibility_timeout: int = Field(3600, gt=0)
    broker_transport_options: dict[str, Any] = Field(default_factory=dict)
    max_startup_attempts: int = Field(20, ge=1)
    retry_base_delay: float = Field(1.0, ge=0)
    retry_max_delay: float = Field(60.0, ge=0)
    breaker_threshold: int = Field(5, ge=1)
    breaker_timeout: float = Field(30.0, gt=0)
    report_url: str | None = None
    report_token: SecretStr | None = None
    #: POSTs each relay keeps in flight to BOT_REPORT_URL (one kept-alive connection each).
    #: One relay delivers up to 32 / latency reports/s (until its CPU is the limit): a fleet
    #: at 500 jobs/s is kept up with by one relay even from a 50 ms sink (640/s), ~3,800/s
    #: were measured from a 5 ms one (16: 2,400/s, docs/benchmarks.md). The price: a relay
    #: killed re-sends at most 32 (+ 50 not yet acked), a sink sees 32 connections per worker.
    report_concurrency: int = Field(REPORT_CONCURRENCY, ge=1, le=256)
    #: Reports per POST, as one JSON array (0: one report per POST, the report as the body).
    #: Only for a sink that takes arrays; README "Batch delivery" says the answer it gives.
    report_batch: int = Field(0, ge=0, le=REPORT_BATCH_MAX)
    outbox_max_deliveries: int = Field(10, ge=1)
    #: Seconds an acked report is kept in `bot:outbox` (and the replay streams).
    outbox_max_age: float = Field(OUTBOX_MAX_AGE_S, gt=0)
    #: Entries kept in `bot:outbox` (and each replay stream) once no group owes the older ones.
    outbox_max_len: int = Field(OUTBOX_MAX_LEN, ge=1)
    #: Dead letters kept in `bot:outbox:dead`; the oldest beyond are dropped (0: keep all).
    outbox_dead_max_len: int = Field(OUTBOX_DEAD_MAX_LEN, ge=0)
    #: Seconds between two retention passes (one worker of the fleet per interval).
    outbox_trim_interval: float = Field(60.0, gt=0)
    #: A worker is DEGRADED while Redis's used_memory is at least this share of its maxmemory
    #: (and until it is 2 points below); no maxmemory set (0) turns the guard off.
    redis_memory_limit_share: float = Field(0.9, gt=0, le=1)
    #: Seconds a finished job's record lives (its state, outcome and payload digest): what
    #: `bot status` reads, and what makes a resubmission of the same job id, or a copy of its
    #: message delivered again, a no-op within that time. A day: a caller retrying a
    #: submission the same day is still deduplicated (README "Redis memory").
    job_ttl: int = Field(86400, gt=0)
    #: Seconds Celery's result meta of a job lives (`result_expires`, and the expiry the job
    #: scripts give it): what `AsyncResult` and Flower's result API read. An hour, not Celery's
    #: day: its callers wait for the result as the job ends (`get()` wakes on its publish),
    #: `bot status` reads the record for BOT_JOB_TTL, and a busy fleet pays for every second
    #: of it (500 jobs/s x 424 B: 0.76 GB an hour held, 18 GB a day; README "Redis memory").
    result_ttl: int = Field(3600, gt=0)
    max_payload_bytes: int = Field(1_048_576, gt=0)
    ops_modules: CommaList = Field(default_factory=list)
    queues: CommaList = Field(default_factory=lambda: ["celery"])
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_addr: str = "127.0.0.1"
    key_prefix: str = Field("bot", min_length=1)
    #: The longest a beat sleeps between ticks, and how often a waiting beat tries for the
    #: lock; a dead beat's lock expires after five of these (bot/flows/beat.py).
    beat_max_interval: float = Field(5.0, gt=0, le=300)
    #: Celery task events (what Flower shows): off for a fleet that runs no Flower.
    task_events: bool = True
    #: `task-sent` events from producers, so Flower lists a job before a worker receives it.
    #: Off by default: they cost each producer one more publish per job, a third of its rate
    #: (docs/benchmarks.md); `bot fleet`, the queue metrics and Flower's broker page show the
    #: backlog without them.
    task_sent_events: bool = False
    #: Run the trigger consumer (bot/flows/triggers.py) in every worker that has triggers.
    triggers: bool = True
    #: Seconds a report pending on a trigger consumer waits before another consumer claims it
    #: (its consumer died); default: one lease TTL plus 10 s (bot.flows.triggers.TRIGGER_TIMEOUT_S).
    trigger_claim_idle: float | None = Field(None, gt=0)

    @field_validator("redis_url", "result_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in REDIS_SCHEMES:
            schemes = ", ".join(f"{scheme}://" for scheme in REDIS_SCHEMES)
            raise ValueError(f"must be a URL starting with one of {schemes}")
        if value is not None and is_sentinel_url(value):
            parse_sentinel_url(value)
        elif value is not None:
            check_tls_options(value)
        return value

    @field_validator("metrics_addr")
    @classmethod
    def _ip_or_host(cls, value: str) -> str:
        value = value.strip()
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOST_NAME.match(value):
                raise ValueError(
                    "must be an IP address or host name to listen on (e.g. 127.0.0.1 or 0.0.0.0)"
                ) from None
        return value

    @field_validator("report_url")
    @classmethod
    def _http_scheme(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if value and not urlsplit(value).hostname:
            raise ValueError("must name a host (http://host[:port]/path)")
        return value or None

    @field_validator("ops_modules", "queues", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("queues")
    @classmethod
    def _at_least_one_queue(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one queue")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _lease_outlives_heartbeat(self) -> Settings:
        if self.lease_ttl is not None and self.lease_ttl <= self.heartbeat_interval:
            raise ValueError(
                f"BOT_LEASE_TTL ({self.lease_ttl}) must be longer than "
                f"BOT_HEARTBEAT_INTERVAL ({self.heartbeat_interval})"
            )
        return self

    @model_validator(mode="after")
    def _sentinel_has_master(self) -> Settings:
        uses_sentinel = is_sentinel_url(self.redis_url) or is_sentinel_url(self.result_url)
        if uses_sentinel and not self.redis_sentinel_master:
            raise ValueError(
                f"{ENV_PREFIX}REDIS_SENTINEL_MASTER: must name the master Sentinel monitors "
                "(its `sentinel monitor <name>`) when a Redis URL is sentinel://"
            )
        return self

    # -- derived values ----------------------------------------------------------------------

    @property
    def lease_ttl_s(self) -> float:
        """The liveness lease's TTL: `BOT_LEASE_TTL`, or three heartbeats."""
        return self.lease_ttl if self.lease_ttl is not None else 3 * self.heartbeat_interval

    @property
    def result_backend_url(self) -> str:
        return self.result_url or self.redis_url

    @property
    def results_in_job_store(self) -> bool:
        """Whether Celery's results live in the Redis database of the job records, so that
        bot's scripts can write them in the same step (bot/jobs/celery_meta.py)."""
        return self.result_url is None or self.result_url == self.redis_url

    @property
    def default_queue(self) -> str:
        return self.queues[0]

    def redacted_redis_url(self) -> str:
        return redact_url(self.redis_url)


def check_tls_options(url: str) -> None:
    """ValueError (naming what to add) for a rediss:// URL without a usable `ssl_cert_reqs`.

    Without it kombu's broker connection silently skips certificate checks (CERT_NONE) and
    Celery's result backend refuses to start deep inside the worker; redis-py, kombu and Celery
    all read the option from the query string, but only in lower case do all three accept it."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return
    values = parse_qs(parts.query).get("ssl_cert_reqs", [])
    if len(values) != 1 or values[0] not in SSL_CERT_REQS:
        raise ValueError(TLS_HINT)


@dataclass(frozen=True)
class SentinelAddress:
    """What a `sentinel://` URL says: the sentinels to ask, and the database, user and
    password of the master they name (taken from the first address, as kombu and Celery do)."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel_url(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url)).scheme == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The sentinels of `sentinel://[:password@]h1:26379[/db];sentinel://h2:26379;...`;
    ValueError naming what is wrong."""
    chunks = [chunk for chunk in url.split(SENTINEL_SEPARATOR) if chunk.strip()]
    parts = [urlsplit(chunk.strip()) for chunk in chunks]
    if not parts or any(p.scheme != SENTINEL_SCHEME or not p.hostname for p in parts):
        raise ValueError(
            "a Sentinel URL is sentinel://host:26379 addresses separated by ';' "
            "(e.g. sentinel://s1:26379;sentinel://s2:26379/0)"
        )
    first = parts[0]
    db_text = first.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"the database of a Sentinel URL must be a number, not {db_text!r}")
    return SentinelAddress(
        sentinels=tuple((p.hostname or "", p.port or SENTINEL_DEFAULT_PORT) for p in parts),
        db=int(db_text),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password is not None else None,
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`, fit for logs and CLI output (each address
    of a `sentinel://` URL alike)."""
    if SENTINEL_SEPARATOR in url:
        return SENTINEL_SEPARATOR.join(redact_url(chunk) for chunk in url.split(SENTINEL_SEPARATOR))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}" if user else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        loc = item["loc"]
        problems.append(f"{ENV_PREFIX}{str(loc[0]).upper()}: {message}" if loc else message)
    return "; ".join(problems)


def _unknown_variables() -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)


def load_settings() -> Settings:
    """Read and check every `BOT_*` variable; raise `ConfigError` naming what is wrong."""
    unknown = _unknown_variables()
    if unknown:
        raise ConfigError(f"invalid configuration: unknown setting {', '.join(unknown)}")
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from None
    except SettingsError as exc:  # a complex value (JSON) that does not decode
        field = str(exc).split('"')[1] if '"' in str(exc) else "configuration"
        raise ConfigError(
            f"invalid configuration: {ENV_PREFIX}{field.upper()}: must be valid JSON"
        ) from None
