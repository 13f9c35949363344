"""A real HTTP report receiver on loopback for relay tests: records every POST (job id from the
body, Idempotency-Key, Authorization) and can answer 200, answer 500, be slow, or be down
(its listening socket closed, so connections are refused). Hostile answers: a status per job
id (`statuses`), a body with the answer (`body`), a huge streamed body (`stream_bytes`, what
was really sent counted in `sent_bytes`), or the whole answer trickled one byte every
`trickle_s` seconds (from the status line, or from the body with `trickle_body_only`).

For concurrent relays: a delay per request (`latency`, a function) and a status per job id
(`status_for`, a function), a hook called just before a status is answered (`before_answer`),
requests held open until `hold` is set (counting `in_flight`, the most at once in
`max_in_flight`), and batches: a JSON array body is recorded report by report, and
`batch_accept` (job ids -> those accepted; default all) makes the answer
`{"accepted": [...]}`; the others are recorded with status 503 (not taken)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.redis_server import free_port


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a relay opens up to BOT_REPORT_CONCURRENCY connections at once


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
        self.latency: Callable[[], float] | None = None
        self.status_for: Callable[[str], int] | None = None
        self.before_answer: Callable[[str, int], None] | None = None
        self.hold: threading.Event | None = None
        self.in_flight = 0
        self.arrivals: list[str] = []  # job ids as requests arrive, before any wait
        self.max_in_flight = 0
        self.batch_accept: Callable[[list[str]], list[str]] | None = None
        self.batches: list[list[str]] = []
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
                data = json.loads(body)
                receiver._arrive(data)
                try:
                    status, answer = receiver._decide(self.headers, data)
                finally:
                    receiver._leave()
                try:
                    receiver._answer(self, status, answer)
                except OSError:  # the client hung up (it stopped reading or gave up): fine
                    self.close_connection = True

            def log_message(self, *_: Any) -> None:  # quiet
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        if self.hold is not None:
            self.hold.set()  # let held requests end
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def _arrive(self, data: Any) -> None:
        """Count a request in, then wait out its latency and the hold."""
        reports = data if isinstance(data, list) else [data]
        with self._lock:
            self.arrivals.extend(str(report.get("job_id", "")) for report in reports)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        delay = self.latency() if self.latency else self.delay_s
        if delay:
            time.sleep(delay)
        if self.hold is not None:
            self.hold.wait(60)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _decide(self, headers: Any, data: Any) -> tuple[int, bytes | None]:
        """Record the request; its status, and the answer's body when not `self.body`."""
        if isinstance(data, list):
            return 200, self._record_batch(headers, data)
        status = self._record(headers, data)
        if self.before_answer is not None:
            self.before_answer(data.get("job_id", ""), status)
        return status, None

    def _record_batch(self, headers: Any, reports: list[dict[str, Any]]) -> bytes:
        ids = [str(report.get("job_id", "")) for report in reports]
        accepted = set(self.batch_accept(ids) if self.batch_accept else ids)
        with self._lock:
            self.batches.append(ids)
            for job_id, report in zip(ids, reports, strict=True):
                status = 200 if job_id in accepted else 503
                self.requests.append(
                    Received(job_id, None, headers.get("Authorization"), status, report)
                )
        return json.dumps({"accepted": sorted(accepted)}).encode()

    def _record(self, headers: Any, report: dict[str, Any]) -> int:
        job_id = report.get("job_id", "")
        status = self.statuses.get(job_id, self.status)
        if self.status_for is not None:
            status = self.status_for(job_id)
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

    def _answer(self, handler: BaseHTTPRequestHandler, status: int, body: bytes | None) -> None:
        # HTTP/1.0 as before: one request per connection, closed after the answer.
        if body is not None:
            handler.wfile.write(
                f"HTTP/1.0 {status} Answer\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: application/json\r\n\r\n".encode()
                + body
            )
            handler.wfile.flush()
            return
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
