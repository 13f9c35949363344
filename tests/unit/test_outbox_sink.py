"""The HTTP sink on httpx's MockTransport: headers, what counts as delivered, and that the
bearer token never appears in an error or repr."""

from __future__ import annotations

import httpx
import pytest

from bot.sinks import DeliveryFailed, HttpSink, redact_http_url

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
    "status", [500, 404, 301, httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
)
def test_anything_but_2xx_is_a_failed_attempt(status: int | Exception) -> None:
    with pytest.raises(DeliveryFailed) as raised:
        sink_answering(status, []).deliver("job-1", "{}")
    assert TOKEN not in str(raised.value)


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
