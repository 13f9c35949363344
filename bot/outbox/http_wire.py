"""The HTTP sink's own HTTP/1.1 client: POSTs to one URL over kept-alive sockets, one per
delivery thread, each exchange bounded by one wall-clock deadline.

Why not httpx for this: measured here, httpx spends ~500 µs of CPU per POST (its Request and
Response objects, h11's state machine, the pool's locks), which capped one relay near 2,000
reports/s whatever the concurrency; the relay's POSTs are all alike (one URL, a few headers
checked at start, a small JSON body, an answer judged by its status) and one such exchange
costs ~13 µs over a bare socket, ~45 µs through this client (docs/benchmarks.md, "Report
delivery"). httpx stays for what this does not do: a proxy named by the environment
(bot/outbox/sinks.py picks).

What it does: http:// and https:// (TLS with httpx's own SSL context: the same trust store and
SSL_CERT_FILE / SSL_CERT_DIR handling), Basic auth from the URL's user:password, one request
at a time per connection, `Content-Length` bodies, answers framed by Content-Length, chunked
transfer coding or the connection's end, 1xx interim answers skipped. Every socket operation
(connect, TLS handshake, the send, each receive) gets min(its own timeout, the time left before
the deadline), so a receiver trickling its answer is cut off at the deadline (`WireTimeout`). At
most `limit` bytes of a body are kept; a body not read to its end, an answer that asks for it
(`Connection: close`, HTTP/1.0) or any error closes the connection instead of reusing it. A
kept-alive connection the receiver closed while idle fails before any answer byte: the POST is
sent again once on a new connection (the receiver dedupes on Idempotency-Key if the first one
did arrive). Name resolution has no timeout (getaddrinfo takes none), as with httpx.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

#: The longest status line plus headers read from an answer.
MAX_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 65536
_NO_BODY = frozenset({204, 304})
#: Characters of a URL's path and query sent as they are (the others percent-encoded).
_SAFE = "/?=&;:@!$'()*+,~%-._"


class WireError(Exception):
    """The exchange failed: no answer, a broken connection or a malformed answer."""


class WireTimeout(WireError):
    """A socket operation, or the whole exchange, ran out of time."""


class StaleConnection(WireError):
    """A kept-alive connection ended before any byte of the answer (closed while idle)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes  # at most `limit` bytes
    encoded: bool  # a Content-Encoding other than identity


@dataclass(frozen=True)
class Target:
    """Where the POSTs go, from the sink's URL."""

    host: str
    port: int
    tls: bool
    path: bytes
    host_header: bytes
    basic_auth: bytes | None

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        tls = parts.scheme.lower() == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        try:
            shown = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("the report URL's host is not a valid host name") from None
        if not host:
            raise ValueError("the report URL names no host")
        if parts.port:
            shown = f"{shown}:{parts.port}"
        path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), _SAFE)
        auth = None
        if parts.username is not None or parts.password is not None:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            auth = b"Basic " + base64.b64encode(pair.encode("utf-8"))
        return cls(host, port, tls, path.encode("ascii"), shown.encode("ascii"), auth)


class _Deadline:
    def __init__(self, deadline: float, op_timeout_s: float) -> None:
        self.deadline = deadline
        self.op_timeout_s = op_timeout_s

    def left(self, op_timeout_s: float | None = None) -> float:
        """Seconds the next socket operation may take; `WireTimeout` when none is left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise WireTimeout("the request's overall deadline has passed")
        return min(left, op_timeout_s if op_timeout_s is not None else self.op_timeout_s)


class _Connection:
    """One socket and what was read past the last answer (nothing, for a sound receiver)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.used = False

    def recv(self, clock: _Deadline) -> bytes:
        self.sock.settimeout(clock.left())
        try:
            return self.sock.recv(_RECV_BYTES)
        except TimeoutError:
            raise WireTimeout("no answer within the read timeout") from None

    def fill(self, clock: _Deadline) -> bool:
        """Read more into the buffer; False at the connection's end."""
        chunk = self.recv(clock)
        self.buffer += chunk
        return bool(chunk)

    def find(self, marker: bytes, clock: _Deadline, limit: int) -> int:
        """Where `marker` starts in the buffer, reading until it is there (searching only
        what is new each time: an answer trickled a byte at a time costs linear time);
        `WireError` past `limit` bytes or at the connection's end."""
        start = 0
        while (end := self.buffer.find(marker, start)) < 0:
            if len(self.buffer) > limit:
                raise WireError(f"an answer line or head longer than {limit} bytes")
            start = max(0, len(self.buffer) - len(marker) + 1)
            if not self.fill(clock):
                raise EOFError
        if end > limit:
            raise WireError(f"an answer line or head longer than {limit} bytes")
        return end

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class WireClient:
    """POSTs to one URL; thread safe (each thread keeps its own connection)."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.target = Target.parse(url)
        if self.target.tls and ssl_context is None:
            raise ValueError("an https:// URL needs an SSL context")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._ssl = ssl_context
        self._head = self._fixed_head(headers)
        self._local = threading.local()
        self._open: set[_Connection] = set()
        self._lock = threading.Lock()

    def _fixed_head(self, headers: dict[str, str]) -> bytes:
        lines = [b"POST " + self.target.path + b" HTTP/1.1", b"Host: " + self.target.host_header]
        lines += [f"{name}: {value}".encode("ascii") for name, value in headers.items()]
        if self.target.basic_auth and "Authorization" not in headers:
            lines.append(b"Authorization: " + self.target.basic_auth)
        lines.append(b"Accept-Encoding: identity")
        return b"\r\n".join(lines) + b"\r\n"

    def post(self, body: bytes, headers: dict[str, str], deadline: float, limit: int) -> Answer:
        """POST `body` with `headers` (valid header values: checked by the caller) and read the
        answer, at most `limit` bytes of its body, all by `deadline` (monotonic)."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = b"%s%sContent-Length: %d\r\n\r\n%s" % (
            self._head,
            extra.encode("ascii"),
            len(body),
            body,
        )
        clock = _Deadline(deadline, self.read_timeout_s)
        while True:  # at most twice: a stale kept-alive connection, then a new one
            conn = self._connection(clock)
            try:
                return self._exchange(conn, request, clock, limit)
            except StaleConnection:
                self._drop(conn)  # never raised on a new connection: the next one ends it
            except BaseException:
                self._drop(conn)
                raise

    def _exchange(self, conn: _Connection, request: bytes, clock: _Deadline, limit: int) -> Answer:
        reused, conn.used = conn.used, True
        try:
            conn.sock.settimeout(clock.left())
            conn.sock.sendall(request)
            answer, keep = read_answer(conn, clock, limit, reused)
        except TimeoutError:
            raise WireTimeout("the request could not be sent within the deadline") from None
        except (ConnectionError, ssl.SSLError) as exc:
            if reused and not conn.buffer:
                raise StaleConnection(str(exc)) from None
            raise WireError(f"{type(exc).__name__}: {exc}") from None
        if not keep:
            self._drop(conn)
        return answer

    def _connection(self, clock: _Deadline) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = _Connection(self._open_socket(clock))
        self._local.conn = conn
        with self._lock:
            self._open.add(conn)
        return conn

    def _open_socket(self, clock: _Deadline) -> socket.socket:
        """A connected socket (TLS done, for https://) within the connect timeout."""
        address = (self.target.host, self.target.port)
        try:
            sock = socket.create_connection(address, clock.left(self.connect_timeout_s))
        except TimeoutError:
            raise WireTimeout("could not connect within the connect timeout") from None
        except OSError as exc:
            raise WireError(f"could not connect: {type(exc).__name__}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is None:
                return sock
            sock.settimeout(clock.left(self.connect_timeout_s))
            return self._ssl.wrap_socket(sock, server_hostname=self.target.host)
        except TimeoutError:
            sock.close()
            raise WireTimeout("no TLS handshake within the connect timeout") from None
        except OSError as exc:
            sock.close()
            raise WireError(f"TLS: {type(exc).__name__}: {exc}") from None

    def _drop(self, conn: _Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._open.discard(conn)
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()


# -- reading an answer -----------------------------------------------------------------------


def read_answer(
    conn: _Connection, clock: _Deadline, limit: int, reused: bool = False
) -> tuple[Answer, bool]:
    """The answer on `conn` (interim 1xx ones skipped), and whether the connection can carry
    another request."""
    while True:
        status, headers, keep = _read_head(conn, clock, reused)
        if not 100 <= status < 200:
            break
    encoded = headers.get(b"content-encoding", b"identity").strip().lower() != b"identity"
    if status in _NO_BODY:
        return Answer(status, b"", encoded), keep and not conn.buffer
    try:
        body, complete = _read_body(conn, clock, headers, limit)
    except (WireError, OSError):  # the status is the answer: keep what had arrived
        return Answer(status, bytes(conn.buffer[:limit]), encoded), False
    return Answer(status, body, encoded), keep and complete and not conn.buffer


def _read_head(
    conn: _Connection, clock: _Deadline, reused: bool
) -> tuple[int, dict[bytes, bytes], bool]:
    try:
        end = conn.find(b"\r\n\r\n", clock, MAX_HEAD_BYTES)
    except EOFError:
        if reused and not conn.buffer:
            raise StaleConnection("the kept-alive connection was closed") from None
        raise WireError("the connection closed before the answer's head") from None
    lines = conn.take(end + 4)[:-4].split(b"\r\n")
    version, status = _status_line(lines[0])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise WireError("a malformed answer header line")
        key = name.strip().lower()
        if key in headers and key == b"content-length" and headers[key] != value.strip():
            raise WireError("conflicting Content-Length headers")
        headers[key] = value.strip()
    connection = headers.get(b"connection", b"").lower()
    keep = version == b"HTTP/1.1" and b"close" not in connection
    return status, headers, keep


def _status_line(line: bytes) -> tuple[bytes, int]:
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise WireError("a malformed answer status line")
    return version, int(code)


def _read_body(
    conn: _Connection, clock: _Deadline, headers: dict[bytes, bytes], limit: int
) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether it was read to its end."""
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return _read_chunked(conn, clock, limit)
    if b"content-length" in headers:
        try:
            length = int(headers[b"content-length"])
        except ValueError:
            raise WireError("a malformed Content-Length") from None
        return _read_exactly(conn, clock, min(length, limit)), length <= limit
    return _read_until_closed(conn, clock, limit), False


def _read_exactly(conn: _Connection, clock: _Deadline, size: int) -> bytes:
    while len(conn.buffer) < size:
        if not conn.fill(clock):
            raise WireError("the connection closed in the middle of the answer's body")
    return conn.take(size)


def _read_until_closed(conn: _Connection, clock: _Deadline, limit: int) -> bytes:
    while len(conn.buffer) < limit and conn.fill(clock):
        pass
    return conn.take(limit)


def _read_chunked(conn: _Connection, clock: _Deadline, limit: int) -> tuple[bytes, bool]:
    body = bytearray()
    while True:
        size = _chunk_size(_read_line(conn, clock))
        if size == 0:
            while _read_line(conn, clock):  # trailers, up to the blank line
                pass
            return bytes(body), True
        if len(body) + size > limit:
            body += _read_exactly(conn, clock, min(size, limit - len(body)))
            return bytes(body), False
        body += _read_exactly(conn, clock, size)
        if _read_exactly(conn, clock, 2) != b"\r\n":
            raise WireError("a malformed chunk")


def _read_line(conn: _Connection, clock: _Deadline) -> bytes:
    try:
        end = conn.find(b"\r\n", clock, MAX_HEAD_BYTES)
    except EOFError:
        raise WireError("the connection closed in the middle of a chunked body") from None
    return conn.take(end + 2)[:-2]


def _chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip()
    try:
        return int(text, 16)
    except ValueError:
        raise WireError("a malformed chunk size") from None
