"""A real HTTP report receiver on loopback for relay tests: records every POST (job id from the
body, Idempotency-Key, Authorization) and can answer 200, answer 500, be slow, or be down
(its listening socket closed, so connections are refused). Hostile answers: a status per job
id (`statuses`), a body with the answer (`body`), a huge streamed body (`stream_bytes`, what
was really sent counted in `sent_bytes`), or the whole answer trickled one byte every
`trickle_s` seconds (from the status line, or from the body with `trickle_body_only`)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.redis_server import free_port


@dataclass(frozen=True)
class Received:
    job_id: str
    idempotency_key: str | None
    authorization: str | None
    status: int
    report: dict[str, Any]


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.statuses: dict[str, int] = {}  # job id -> status, instead of `status`
        self.body = b""
        self.stream_bytes = 0
        self.sent_bytes = 0
        self.trickle_s = 0.0
        self.trickle_body_only = False
        self.delay_s = 0.0
        self.arrivals: list[str] = []  # job ids as requests arrive, before any wait
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/reports"

    def up(self) -> Receiver:
        if self._server is not None:
            return self
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with contextlib.suppress(ValueError, AttributeError):
                    receiver.arrivals.append(str(json.loads(body).get("job_id")))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                status = receiver._record(self.headers, body)
                try:
                    receiver._answer(self, status)
                except OSError:  # the client hung up (it stopped reading or gave up): fine
                    self.close_connection = True

            def log_message(self, *_: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def _record(self, headers: Any, body: bytes) -> int:
        report = json.loads(body)
        job_id = report.get("job_id", "")
        status = self.statuses.get(job_id, self.status)
        with self._lock:
            self.requests.append(
                Received(
                    job_id,
                    headers.get("Idempotency-Key"),
                    headers.get("Authorization"),
                    status,
                    report,
                )
            )
        return status

    def _answer(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        # HTTP/1.0 as before: one request per connection, closed after the answer.
        length = self.stream_bytes or len(self.body)
        head = (
            f"HTTP/1.0 {status} Answer\r\nContent-Length: {length}\r\n"
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        out = handler.wfile
        if self.trickle_s:
            if self.trickle_body_only:
                out.write(head)
            else:
                self._trickle(out, head)
            self._trickle(out, self.body)
        elif self.stream_bytes:
            out.write(head)
            self._stream(out, self.stream_bytes)
        else:
            out.write(head + self.body)
        out.flush()

    def _trickle(self, out: Any, data: bytes) -> None:
        for i in range(len(data)):
            out.write(data[i : i + 1])
            out.flush()
            time.sleep(self.trickle_s)

    def _stream(self, out: Any, size: int) -> None:
        chunk = b"x" * 65536
        while size > 0:
            piece = chunk[: min(size, len(chunk))]
            out.write(piece)
            size -= len(piece)
            with self._lock:
                self.sent_bytes += len(piece)

    def accepted(self) -> list[Received]:
        """Requests answered 2xx (what a real receiver would have kept)."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def accepted_counts(self) -> Counter[str]:
        """job_id -> how many times it was accepted (a duplicate shows as 2+)."""
        return Counter(r.job_id for r in self.accepted())

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
