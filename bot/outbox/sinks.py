"""The built-in report sink: HTTP (`BOT_REPORT_URL`). What a sink is (the `Sink` protocol,
`DeliveryFailed`, `DeliveryRejected`, its breaker's name): bot/outbox/delivery.py.

This module imports httpx (and through it httpcore, h11, anyio and httpx's own CLI's rich and
pygments): only a process that delivers reports imports it (bot/fleet/services.py, when
BOT_REPORT_URL is set; `python -m bot.cli.relay`).

The HTTP sink POSTs the report JSON with `Authorization: Bearer <BOT_REPORT_TOKEN>` and
`Idempotency-Key: <job_id>`, so a receiver can drop the duplicates at-least-once delivery may
produce (a relay killed between the POST and its XACK). Its answer is judged by status alone:
2xx is delivered; a 4xx about the report (400, 409, 413, 422, 431 ...) rejects it; anything
else (a 5xx, a 4xx about the sink itself such as 401 or 404, a transport error, the overall
deadline: one wall-clock limit on the whole request) is a failed attempt. At most
`MAX_RESPONSE_BYTES` of a response body are read, and only to quote the start of a rejection
in its reason. The token is never logged nor put in an error message; sending it over plain
http:// is warned about once, at start.

The POSTs go through bot/outbox/http_wire.py, a lean HTTP/1.1 client over kept-alive sockets
(httpx costs ten times its CPU per POST, which was one relay's limit), or through httpx when the
environment names a proxy for the URL (or a test injects an httpx transport), with the overall
deadline of bot/outbox/http_deadline.py. The sink is used from several threads at once (the
relay keeps BOT_REPORT_CONCURRENCY POSTs in flight, bot/outbox/window.py): either client keeps
one connection per thread alive, and the deadline of each POST belongs to the thread making
it. With BOT_REPORT_BATCH, `deliver_batch` POSTs a JSON array of reports and reads which of
them the sink took from its answer (bot/outbox/batch.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

from bot.jobs.envelope import printable
from bot.outbox.batch import encode_batch, read_answer
from bot.outbox.delivery import BatchAnswer, DeliveryFailed, DeliveryRejected
from bot.outbox.http_deadline import DeadlineTransport
from bot.outbox.http_wire import WireClient, WireError, WireTimeout
from bot.outbox.stream import HTTP_GROUP
from config.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds to connect to the receiver / to wait for each read of its answer. Their sum is the
#: default overall deadline of one POST.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
#: At most this much of a response body is read; the rest is never pulled off the socket
#: (httpcore reads 64 KiB at a time, so the socket may give up to one read more).
MAX_RESPONSE_BYTES = 64 * 1024
#: A batch's answer may be longer by this much per report (its `accepted` list names keys of
#: up to MAX_KEY_CHARS characters, and `rejected` a reason each).
BATCH_ANSWER_BYTES_PER_REPORT = 2 * 1024
#: A rejection's reason quotes at most this many characters of the receiver's answer.
REASON_BODY_CHARS = 200
#: Longest Idempotency-Key sent. A longer job id is rejected here rather than left to the
#: receiver, which may answer 431 or reset the connection mid-send (read as transient).
MAX_KEY_CHARS = 1024
#: A header value h11 sends: visible ASCII, single spaces/tabs inside, none at the ends.
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")
#: 4xx answers about the sink, its configuration or the moment, not the report: retried like
#: a 5xx, so that a wrong token or URL opens the breaker and holds every report (none is lost)
#: instead of dead-lettering them all: 401/403/407 (credentials), 404/405/421 (the URL),
#: 408/429 (the moment).
_TRANSIENT_4XX = frozenset({401, 403, 404, 405, 407, 408, 421, 429})


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


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP(S)_PROXY / ALL_PROXY unless NO_PROXY
    covers its host): httpx ignores the environment once it is given a transport."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def encode_request(job_id: str, report_json: str) -> bytes:
    """The report's body, or `DeliveryRejected` when the job id is no valid Idempotency-Key
    or the report does not encode (a lone surrogate)."""
    if len(job_id) > MAX_KEY_CHARS:
        raise DeliveryRejected(f"job id of {len(job_id)} characters (> {MAX_KEY_CHARS})")
    if not _HEADER_VALUE.fullmatch(job_id):
        raise DeliveryRejected(f"job id is not a valid header value: {printable(job_id, 100)}")
    try:
        return report_json.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DeliveryRejected(f"report is not valid UTF-8 text: {exc.reason}") from None


def judge(status: int, body: bytes, encoded: bool) -> None:
    """Raise for anything but 2xx: `DeliveryRejected` for a 4xx about the report, quoting the
    start of the answer (unless it is content-encoded), `DeliveryFailed` otherwise."""
    if 200 <= status < 300:
        return
    if 400 <= status < 500 and status not in _TRANSIENT_4XX:
        text = "" if encoded else body.decode("utf-8", "replace").strip()
        quoted = printable(text, REASON_BODY_CHARS)
        raise DeliveryRejected(f"HTTP {status}: {quoted}" if quoted else f"HTTP {status}")
    raise DeliveryFailed(f"HTTP {status}")


def read_capped(response: httpx.Response, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """At most `limit` bytes of the (raw) body; stops reading there. The status is the answer:
    a body cut short by an error or the deadline yields what had arrived."""
    if response.is_stream_consumed:  # read already (httpx's MockTransport does)
        return response.content[:limit]
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_raw():
            chunks.append(chunk[: limit - size])
            size += len(chunks[-1])
            if size >= limit:
                break
    except httpx.HTTPError as exc:
        logger.debug("sink answer %d cut short: %s", response.status_code, type(exc).__name__)
    return b"".join(chunks)


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
        deadline_s: float | None = None,
        transport: httpx.BaseTransport | None = None,
        connections: int = 1,
    ) -> None:
        self.name = name
        if token is not None and not _HEADER_VALUE.fullmatch(token):
            # Else every request would fail to be written (each report dead-lettered as if
            # it were at fault) and h11's error would quote the header, token included.
            raise ValueError(
                "BOT_REPORT_TOKEN is not a valid HTTP header value (a control or non-ASCII "
                "character, or whitespace at either end)"
            )
        # httpx logs every request at INFO; a relay would log one line per report.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # A bearer token wins over user:password in the URL (httpx would send Basic instead);
        # without a token, URL credentials give Basic auth.
        self.url = _strip_userinfo(url) if token else url
        #: The longest one delivery takes: the relay's claim idle time is based on it.
        self.timeout_s = (
            deadline_s if deadline_s is not None else connect_timeout_s + read_timeout_s
        )
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        proxy = env_proxy(url)
        self._wire = None
        if transport is None and proxy is None:
            tls = httpx.create_ssl_context() if urlsplit(url).scheme == "https" else None
            self._wire = WireClient(
                self.url,
                headers,
                connect_timeout_s=connect_timeout_s,
                read_timeout_s=read_timeout_s,
                ssl_context=tls,
            )
        # As many kept-alive connections as POSTs in flight: none waits for a pool slot.
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._deadline = (
            DeadlineTransport(proxy=proxy, limits=limits) if transport is None else None
        )
        self._client = httpx.Client(
            headers={**headers, "Accept-Encoding": "identity"},
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            transport=transport or self._deadline,
        )
        _warn_if_plaintext(url, token)

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpSink:
        if not settings.report_url:
            raise ValueError("BOT_REPORT_URL is not set")
        token = settings.report_token.get_secret_value() if settings.report_token else None
        return cls(settings.report_url, token, connections=settings.report_concurrency)

    def check(self, job_id: str, report_json: str) -> None:
        encode_request(job_id, report_json)

    def deliver(self, job_id: str, report_json: str) -> None:
        body = encode_request(job_id, report_json)
        status, answer, encoded = self._exchange(body, {"Idempotency-Key": job_id})
        judge(status, answer, encoded)

    def deliver_batch(self, items: Sequence[tuple[str, str]]) -> BatchAnswer:
        """POST the reports as one JSON array; which of them the 2xx answer accepted."""
        for job_id, report_json in items:  # the same reports a single POST could carry
            encode_request(job_id, report_json)
        body = encode_batch([report_json for _, report_json in items])
        limit = MAX_RESPONSE_BYTES + BATCH_ANSWER_BYTES_PER_REPORT * len(items)
        status, answer, encoded = self._exchange(body, {}, limit)
        judge(status, answer, encoded)
        if encoded and answer.strip():
            raise DeliveryFailed("a content-encoded batch answer (asked for identity)")
        return read_answer(answer)

    def _exchange(
        self, body: bytes, headers: dict[str, str], limit: int = MAX_RESPONSE_BYTES
    ) -> tuple[int, bytes, bool]:
        """POST `body`; status, answer and whether it is encoded, or the delivery error."""
        deadline = time.monotonic() + self.timeout_s
        if self._wire is not None:
            return self._exchange_wire(self._wire, body, headers, deadline, limit)
        try:
            return self._post(body, headers, deadline, limit)
        except httpx.LocalProtocolError:
            # h11 refused to write the request (nothing was sent): about this report, the only
            # part not checked at start. Its message may quote headers: not repeated.
            raise DeliveryRejected(
                "the request could not be written (LocalProtocolError)"
            ) from None
        except httpx.TimeoutException as exc:
            if time.monotonic() >= deadline:
                raise DeliveryFailed(f"deadline of {self.timeout_s:g}s passed") from None
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
        except httpx.HTTPError as exc:
            # str(exc) of httpx names the URL at most, never the request headers (the token).
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None

    def _exchange_wire(
        self, wire: WireClient, body: bytes, headers: dict[str, str], deadline: float, limit: int
    ) -> tuple[int, bytes, bool]:
        try:
            answer = wire.post(body, headers, deadline, limit)
        except WireTimeout as exc:
            if time.monotonic() >= deadline:
                raise DeliveryFailed(f"deadline of {self.timeout_s:g}s passed") from None
            raise DeliveryFailed(f"timeout: {exc}") from None
        except (WireError, OSError) as exc:  # never quotes the request (its token)
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
        return answer.status, answer.body, answer.encoded

    def _post(
        self, body: bytes, headers: dict[str, str], deadline: float, limit: int
    ) -> tuple[int, bytes, bool]:
        """Status, at most `limit` bytes of the body, and whether it is content-encoded;
        every socket operation ends by `deadline`."""
        with (
            self._until(deadline),
            self._client.stream("POST", self.url, content=body, headers=headers) as response,
        ):
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            return response.status_code, read_capped(response, limit), encoded

    def _until(self, deadline: float) -> contextlib.AbstractContextManager[None]:
        if self._deadline is None:  # an injected transport (tests): no deadline to clamp to
            return contextlib.nullcontext()
        return self._deadline.backend.until(deadline)

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
        self._client.close()

    def __repr__(self) -> str:
        return f"HttpSink({redact_http_url(self.url)!r})"


def _warn_if_plaintext(url: str, token: str | None) -> None:
    """One warning when credentials (a bearer token, or user:password in the URL) would go
    over plain http://, readable by anyone on the path. Never logs the credentials."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "http" and (token or parts.password):
        what = "BOT_REPORT_TOKEN" if token else "the password in BOT_REPORT_URL"
        logger.warning(
            "report sink %s: %s is sent over plain http:// (unencrypted); use https://",
            redact_http_url(url),
            what,
        )
