"""The HTTP sink on httpx's MockTransport: headers, what counts as delivered, failed or
rejected, the response body cap, the warning for a token over http://, and that the bearer
token never appears in an error, a log line or repr."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from bot.outbox.delivery import DeliveryFailed, DeliveryRejected
from bot.outbox.sinks import MAX_RESPONSE_BYTES, HttpSink, env_proxy, redact_http_url

TOKEN = "s3cret-token"


def sink_answering(status: int | Exception, seen: list[httpx.Request]) -> HttpSink:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(status, Exception):
            raise status
        return httpx.Response(status)

    return HttpSink(
        "http://user:pw@example.test/reports?x=1", TOKEN, transport=httpx.MockTransport(handler)
    )


def test_posts_the_report_with_bearer_and_idempotency_key() -> None:
    seen: list[httpx.Request] = []
    sink_answering(204, seen).deliver("job-1", '{"job_id":"job-1"}')

    (request,) = seen
    assert request.method == "POST"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Idempotency-Key"] == "job-1"
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == b'{"job_id":"job-1"}'


@pytest.mark.parametrize(
    "status",
    [
        500,
        503,
        408,
        429,
        401,
        403,
        404,
        301,
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("server hung up"),
    ],
)
def test_5xx_sink_level_4xx_3xx_and_transport_errors_are_failed_attempts(
    status: int | Exception,
) -> None:
    with pytest.raises(DeliveryFailed) as raised:
        sink_answering(status, []).deliver("job-1", "{}")
    assert TOKEN not in str(raised.value)


@pytest.mark.parametrize("status", [400, 409, 413, 422, 431])
def test_a_4xx_about_the_report_is_a_rejection(status: int) -> None:
    with pytest.raises(DeliveryRejected) as raised:
        sink_answering(status, []).deliver("job-1", "{}")
    assert str(raised.value) == f"HTTP {status}"


@pytest.mark.parametrize(
    "job_id",
    ["a\r\nX-Injected: 1", "caf\u00e9", "nul\x00", "", " leading-space", "x" * 5000],
)
def test_a_job_id_no_header_can_carry_is_rejected_before_anything_is_sent(job_id: str) -> None:
    seen: list[httpx.Request] = []
    sink = sink_answering(200, seen)

    with pytest.raises(DeliveryRejected) as raised:
        sink.check(job_id, "{}")
    with pytest.raises(DeliveryRejected):
        sink.deliver(job_id, "{}")

    assert seen == []
    assert "\r" not in str(raised.value) and "\n" not in str(raised.value)
    assert len(str(raised.value)) < 200


def test_a_report_that_does_not_encode_is_rejected() -> None:
    with pytest.raises(DeliveryRejected):
        sink_answering(200, []).deliver("job-1", '{"x": "\ud800"}')


def streamed(status: int, chunk: bytes, total: int, pulled: list[int]) -> HttpSink:
    """A sink whose receiver answers `status` with a `total`-byte body, produced chunk by chunk
    only as the sink reads it; `pulled[0]` counts the bytes the sink pulled."""
    pulled.append(0)

    def body() -> Iterator[bytes]:
        while pulled[0] < total:
            pulled[0] += len(chunk)
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body())

    return HttpSink("https://example.test/r", TOKEN, transport=httpx.MockTransport(handler))


def test_a_200mb_answer_is_read_no_further_than_the_cap() -> None:
    pulled: list[int] = []
    streamed(200, b"x" * 1024, 200 * 1024 * 1024, pulled).deliver("job-1", "{}")

    assert MAX_RESPONSE_BYTES <= pulled[0] <= MAX_RESPONSE_BYTES + 1024


def test_a_4xx_with_a_huge_hostile_body_quotes_a_short_escaped_start_of_it() -> None:
    pulled: list[int] = []
    chunk = b"bad report\r\nX-Forged: 1\x1b[2J " * 40
    with pytest.raises(DeliveryRejected) as raised:
        streamed(422, chunk, 100 * 1024 * 1024, pulled).deliver("job-1", "{}")

    reason = str(raised.value)
    assert reason.startswith("HTTP 422: bad report\\x0d\\x0aX-Forged: 1\\x1b[2J")
    assert not any(ch in reason for ch in "\r\n\x1b")
    assert len(reason) < 400
    assert pulled[0] <= MAX_RESPONSE_BYTES + len(chunk)


def test_a_bearer_token_over_plain_http_is_warned_about_once_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.outbox.sinks"):
        HttpSink("http://receiver.test/r?sig=abc", TOKEN).close()
        HttpSink("https://receiver.test/r", TOKEN).close()
        HttpSink("http://receiver.test/r", None).close()

    (record,) = caplog.records
    assert "http://" in record.getMessage() and "https://" in record.getMessage()
    assert "receiver.test" in record.getMessage()
    assert TOKEN not in caplog.text and "sig=abc" not in caplog.text


def test_url_password_over_plain_http_is_warned_about_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.outbox.sinks"):
        HttpSink("http://user:pw-secret@receiver.test/r", None).close()

    assert len(caplog.records) == 1 and "pw-secret" not in caplog.text


def test_proxy_from_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "internal.test")

    assert env_proxy("https://receiver.test/r") == "http://proxy.test:3128"
    assert env_proxy("https://internal.test/r") is None
    assert env_proxy("http://receiver.test/r") is None


def test_url_credentials_give_basic_auth_only_without_a_token() -> None:
    seen: list[httpx.Request] = []
    ok = httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200))
    HttpSink("http://user:pw@example.test/", None, transport=ok).deliver("j", "{}")
    assert seen[0].headers["Authorization"].startswith("Basic ")


def test_no_token_no_authorization_header() -> None:
    seen: list[httpx.Request] = []
    HttpSink(
        "http://example.test/",
        None,
        transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200)),
    ).deliver("j", "{}")
    assert "Authorization" not in seen[0].headers


def test_repr_and_redaction_hide_secrets() -> None:
    sink = sink_answering(200, [])
    assert TOKEN not in repr(sink) and "pw" not in repr(sink)
    assert redact_http_url("https://u:p@h:8443/r?token=x") == "https://h:8443/r"


@pytest.mark.parametrize("token", ["s3cret\n", "s3cret\r\nX-Evil: 1", " s3cret", "sécret"])
def test_a_token_no_header_can_carry_is_refused_at_start_without_quoting_it(token: str) -> None:
    with pytest.raises(ValueError) as raised:
        HttpSink("https://receiver.test/r", token)
    assert "cret" not in str(raised.value)


def test_a_request_h11_refuses_to_write_is_a_rejection_that_quotes_no_header() -> None:
    refused = httpx.LocalProtocolError(f"Illegal header value b'Bearer {TOKEN}\\n'")
    with pytest.raises(DeliveryRejected) as raised:
        sink_answering(refused, []).deliver("job-1", "{}")
    assert TOKEN not in str(raised.value)
