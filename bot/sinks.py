"""Report sinks the relay delivers to. Built in: the HTTP sink (`BOT_REPORT_URL`).

A sink has a `name` (its consumer group on the outbox) and `deliver(job_id, report_json)`,
which returns on success and raises `DeliveryFailed` otherwise. The HTTP sink POSTs the report
JSON with `Authorization: Bearer <BOT_REPORT_TOKEN>` and `Idempotency-Key: <job_id>`, so a
receiver can drop the duplicates at-least-once delivery may produce (a relay killed between
the POST and its XACK). 2xx is delivered; any other status or a transport error is a failed
attempt. The token is never logged nor put in an error message.
"""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from bot.outbox import HTTP_GROUP
from config.settings import Settings

#: Seconds to connect to the receiver / to wait for its answer.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0


class DeliveryFailed(Exception):
    """A failed attempt; the entry stays pending and is retried with backoff."""


class Sink(Protocol):
    name: str

    def deliver(self, job_id: str, report_json: str) -> None: ...

    def close(self) -> None: ...


def redact_http_url(url: str) -> str:
    """The URL without user:password and query string, fit for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host, query=""))


def _strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class HttpSink:
    """POST each report to one URL over a kept-alive connection pool."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        name: str = HTTP_GROUP,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        # httpx logs every request at INFO; a relay would log one line per report.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # A bearer token wins over user:password in the URL (httpx would send Basic instead);
        # without a token, URL credentials give Basic auth.
        self.url = _strip_userinfo(url) if token else url
        self.timeout_s = connect_timeout_s + read_timeout_s
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpSink:
        if not settings.report_url:
            raise ValueError("BOT_REPORT_URL is not set")
        token = settings.report_token.get_secret_value() if settings.report_token else None
        return cls(settings.report_url, token)

    def deliver(self, job_id: str, report_json: str) -> None:
        try:
            response = self._client.post(
                self.url, content=report_json, headers={"Idempotency-Key": job_id}
            )
        except httpx.HTTPError as exc:
            # str(exc) of httpx names the URL at most, never the request headers (the token).
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"HTTP {response.status_code}")

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"HttpSink({redact_http_url(self.url)!r})"
