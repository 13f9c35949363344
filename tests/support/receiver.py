"""A real HTTP report receiver on loopback for relay tests: records every POST (job id from the
body, Idempotency-Key, Authorization) and can answer 200, answer 500, be slow, or be down
(its listening socket closed, so connections are refused)."""

from __future__ import annotations

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
        self.delay_s = 0.0
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
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                receiver._record(self.headers, body)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

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

    def _record(self, headers: Any, body: bytes) -> None:
        report = json.loads(body)
        with self._lock:
            self.requests.append(
                Received(
                    report.get("job_id", ""),
                    headers.get("Idempotency-Key"),
                    headers.get("Authorization"),
                    self.status,
                    report,
                )
            )

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
