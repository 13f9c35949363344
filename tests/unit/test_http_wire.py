"""The sink's HTTP/1.1 client (bot/outbox/http_wire.py) against a scripted server on loopback
that answers each request with given bytes: the request it writes, answers framed by
Content-Length, chunked coding or the connection's end, interim 1xx answers, keep-alive reuse
and when a connection is not reused, a kept-alive connection closed while idle (sent again once),
the body cap, malformed answers, and the overall deadline."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bot.outbox.http_wire import Target, WireClient, WireError, WireTimeout

Script = Callable[[socket.socket, bytes], bool]  # answer one request; False: close after


class ScriptedServer:
    """Accepts connections; for each request (head + Content-Length body) calls `script`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the client hung up: fine
            self._requests(conn)

    def _requests(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(buffer) < length:
                buffer += conn.recv(65536)
            request, buffer = head + b"\r\n\r\n" + buffer[:length], buffer[length:]
            self.requests.append(request)
            if not self.script(conn, request):
                return

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def answering(raw: bytes, keep: bool = True) -> Script:
    def script(conn: socket.socket, request: bytes) -> bool:
        conn.sendall(raw)
        return keep

    return script


def client_for(server: ScriptedServer, path: str = "/reports?x=1") -> WireClient:
    return WireClient(
        f"http://127.0.0.1:{server.port}{path}",
        {"Content-Type": "application/json", "Authorization": "Bearer tok"},
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
    )


def post(client: WireClient, body: bytes = b'{"a":1}', limit: int = 1024, deadline_s: float = 3):
    return client.post(body, {"Idempotency-Key": "job-1"}, time.monotonic() + deadline_s, limit)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_the_request_carries_the_headers_and_body_and_the_connection_is_kept(serve) -> None:
    server = serve(answering(OK))
    client = client_for(server)

    first, second = post(client), post(client)

    assert (first.status, first.body, first.encoded) == (200, b"ok", False)
    assert second.status == 200 and server.connections == 1
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /reports?x=1 HTTP/1.1"
    assert set(lines[1:]) == {
        f"Host: 127.0.0.1:{server.port}".encode(),
        b"Content-Type: application/json",
        b"Authorization: Bearer tok",
        b"Accept-Encoding: identity",
        b"Idempotency-Key: job-1",
        b"Content-Length: 7",
    }
    assert body == b'{"a":1}'
    client.close()


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"abcde",
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
            b"new",
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
)
def test_answers_framed_every_way_keep_the_connection(serve, raw: bytes, body: bytes) -> None:
    server = serve(answering(raw))
    client = client_for(server)
    assert post(client).body == body
    assert post(client).body == body
    assert server.connections == 1
    client.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_an_answer_that_ends_the_connection_is_not_reused(serve, raw: bytes) -> None:
    server = serve(answering(raw, keep=False))
    client = client_for(server)
    assert post(client).body == b"ok" and post(client).body == b"ok"
    assert server.connections == 2
    client.close()


def test_a_body_framed_by_the_connections_end_is_read_to_it(serve) -> None:
    server = serve(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", keep=False))
    client = client_for(server)
    assert post(client).body == b"until the end"
    assert post(client).status == 200 and server.connections == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n186a0\r\n" + b"x" * 100_000,
    ],
)
def test_a_body_past_the_limit_is_cut_there_and_the_connection_dropped(serve, raw) -> None:
    server = serve(answering(raw))
    client = client_for(server)
    assert post(client, limit=1000).body == b"x" * 1000
    post(client, limit=1000)
    assert server.connections == 2
    client.close()


def test_a_kept_alive_connection_closed_while_idle_is_replaced_and_the_post_sent_again(
    serve,
) -> None:
    answers = iter([True, False, True, True])  # keep, then close without answering, ...

    def script(conn: socket.socket, request: bytes) -> bool:
        if next(answers):
            conn.sendall(OK)
            return True
        return False  # hang up on this request: as if it had closed while idle

    server = serve(script)
    client = client_for(server)
    post(client)
    assert post(client).status == 200  # sent on the old connection, then again on a new one
    assert server.connections == 2 and len(server.requests) == 3
    client.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n",
    ],
)
def test_a_malformed_answer_is_an_error(serve, raw: bytes) -> None:
    client = client_for(serve(answering(raw, keep=False)))
    with pytest.raises(WireError):
        post(client)


def test_a_new_connection_closed_before_an_answer_is_an_error_not_sent_twice(serve) -> None:
    server = serve(lambda conn, request: False)
    with pytest.raises(WireError, match="closed"):
        post(client_for(server))
    assert len(server.requests) == 1


def test_an_answer_trickled_past_the_deadline_ends_there(serve) -> None:
    def trickle(conn: socket.socket, request: bytes) -> bool:
        for byte in OK:
            conn.sendall(bytes([byte]))
            time.sleep(0.2)
        return True

    client = client_for(serve(trickle))
    started = time.monotonic()
    with pytest.raises(WireTimeout):
        post(client, deadline_s=0.6)
    assert 0.5 <= time.monotonic() - started < 1.5


def test_a_body_cut_short_by_the_deadline_keeps_the_status(serve) -> None:
    def slow_body(conn: socket.socket, request: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        time.sleep(2)
        return False

    answer = post(client_for(serve(slow_body)), deadline_s=0.3)
    assert (answer.status, answer.body) == (200, b"ab")


def test_nothing_listening_is_an_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = WireClient(f"http://127.0.0.1:{port}/", {}, connect_timeout_s=1, read_timeout_s=1)
    with pytest.raises(WireError, match="connect"):
        post(client)


def test_the_target_of_a_url() -> None:
    target = Target.parse("https://user:p%40ss@example.test:8443/a b/r?q=1")
    assert (target.host, target.port, target.tls) == ("example.test", 8443, True)
    assert (target.path, target.host_header) == (b"/a%20b/r?q=1", b"example.test:8443")
    assert target.basic_auth == b"Basic dXNlcjpwQHNz"  # user:p@ss
    plain = Target.parse("http://[::1]/")
    assert (plain.host, plain.port, plain.host_header, plain.basic_auth) == (
        "::1",
        80,
        b"[::1]",
        None,
    )
    with pytest.raises(ValueError, match="SSL context"):
        WireClient("https://example.test/", {}, connect_timeout_s=1, read_timeout_s=1)


def test_a_silent_receiver_is_left_at_the_deadline_not_the_longer_read_timeout(serve) -> None:
    def silent(conn: socket.socket, request: bytes) -> bool:
        time.sleep(3)
        return False

    client = client_for(serve(silent))  # read timeout 2 s
    started = time.monotonic()
    with pytest.raises(WireTimeout):
        post(client, deadline_s=0.4)
    assert time.monotonic() - started < 1.0
