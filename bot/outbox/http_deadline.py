"""One wall-clock deadline for a whole httpx request: connect, TLS, send, headers and body.

httpx's timeouts apply to each socket operation: a server that trickles its answer one byte
every few seconds never trips a 5 s read timeout and holds a POST open for as long as it likes.
`DeadlineTransport` is httpx's own `HTTPTransport` whose httpcore pool opens its connections
through `DeadlineBackend`: every socket operation (connect, TLS handshake, each send, each recv)
gets min(its own timeout, the time left before the deadline of the request this thread is
making), and an operation that starts after the deadline raises httpcore's timeout at once,
which httpx maps to its `TimeoutException`. Outside `until()` nothing is clamped.

Not covered: name resolution (getaddrinfo takes no timeout) and waiting for a pool slot
(httpx's `pool` timeout; the sink makes one request at a time).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

#: A write is split into pieces this big, each clamped anew, so a receiver that reads slowly
#: cannot stretch one `write` (httpcore loops on send() with a fixed timeout) past the deadline.
WRITE_PIECE_BYTES = 16 * 1024


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with each operation clamped to the current deadline."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()
        self._local = threading.local()  # the deadline is per thread: one request each

    @contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        """Clamp every socket operation of this thread to end by `deadline` (monotonic)."""
        previous = getattr(self._local, "deadline", None)
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = previous

    def clamp(self, timeout: float | None, expired: type[Exception]) -> float | None:
        """`timeout` shortened to the time left; `expired` raised when none is left."""
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise expired("the request's overall deadline has passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = self.clamp(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return DeadlineStream(stream, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = self.clamp(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes are clamped by its backend's current deadline."""

    def __init__(self, inner: httpcore.NetworkStream, backend: DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        for start in range(0, len(view), WRITE_PIECE_BYTES):
            piece = bytes(view[start : start + WRITE_PIECE_BYTES])
            self._inner.write(piece, self._backend.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = self._backend.clamp(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), self._backend
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's HTTP transport (same arguments) whose connections honour `backend.until()`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # HTTPTransport takes no network backend; its pool (a ConnectionPool, or a proxy pool
        # deriving from it) reads `_network_backend` each time it opens a connection.
        # tests/unit/test_http_deadline.py fails if a new httpx/httpcore stops doing so.
        pool: Any = self._pool
        self.backend = DeadlineBackend(pool._network_backend)
        pool._network_backend = self.backend
