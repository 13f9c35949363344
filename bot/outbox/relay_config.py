"""The relay's knobs (`RelayConfig`): delivery bound, backoff, breaker, claim/touch/trim
intervals, retention bounds, batch sizes, deliveries in flight; `from_settings` derives them
from the BOT_* settings (the retention bounds and trim interval are BOT_OUTBOX_MAX_AGE,
BOT_OUTBOX_MAX_LEN and BOT_OUTBOX_TRIM_INTERVAL, the same the fleet's retention service uses).

`concurrency` (deliveries in flight) and `report_batch` (reports per delivery) stay 1 and 0
(one at a time, in the relay's thread) unless given: the HTTP relay sets them from
BOT_REPORT_CONCURRENCY and BOT_REPORT_BATCH (`Relay.from_settings`); a sink that is not thread
safe, such as the trigger consumer's, keeps the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config.settings import OUTBOX_MAX_AGE_S, OUTBOX_MAX_LEN, Settings

#: Seconds between two retention trims by one relay (BOT_OUTBOX_TRIM_INTERVAL's default).
TRIM_INTERVAL_S = 60.0
#: Entries read or retried per stream per pass.
BATCH = 100
#: Longest XREADGROUP BLOCK (ms); below the Redis socket timeout, and bounds stop() latency.
BLOCK_MS = 1000


@dataclass(frozen=True)
class RelayConfig:
    max_deliveries: int = 10
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    breaker_threshold: int = 5
    breaker_timeout_s: float = 30.0
    claim_idle_ms: int = 30_000
    claim_interval_s: float = 5.0
    touch_interval_s: float = 5.0
    trim_interval_s: float = TRIM_INTERVAL_S
    max_age_s: float = OUTBOX_MAX_AGE_S
    max_len: int = OUTBOX_MAX_LEN
    batch: int = BATCH
    block_ms: int = BLOCK_MS
    concurrency: int = 1
    report_batch: int = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, sink_timeout_s: float, **overrides: Any
    ) -> RelayConfig:
        """Intervals from the heartbeat; a pending entry is stale (its relay dead) after one
        lease TTL without a touch, plus the longest a live relay can spend in one delivery."""
        values: dict[str, Any] = {
            "max_deliveries": settings.outbox_max_deliveries,
            "retry_base_s": settings.retry_base_delay,
            "retry_max_s": settings.retry_max_delay,
            "breaker_threshold": settings.breaker_threshold,
            "breaker_timeout_s": settings.breaker_timeout,
            "claim_idle_ms": int((settings.lease_ttl_s + sink_timeout_s) * 1000),
            "claim_interval_s": settings.heartbeat_interval,
            "touch_interval_s": settings.heartbeat_interval,
            "trim_interval_s": settings.outbox_trim_interval,
            "max_age_s": settings.outbox_max_age,
            "max_len": settings.outbox_max_len,
        }
        values.update(overrides)
        return cls(**values)
