"""A real HTTP receiver for webhook tests (stdlib http.server on 127.0.0.1, a free port).

``Receiver.statuses`` scripts the answers: each POST takes the next status from
the list and, once it runs out, gets ``default`` (200).  Every POST is recorded
with its body, whatever the answer, so tests can count attempts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=list)
    default: int = 200
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    url: str = ""
    _cv: threading.Condition = field(default_factory=threading.Condition)

    def answer(self) -> int:
        with self._cv:
            return self.statuses.pop(0) if self.statuses else self.default

    def record(self, hit: Hit) -> None:
        with self._cv:
            self.hits.append(hit)
            self._cv.notify_all()

    def wait_for(self, count: int, timeout: float = 15) -> list[Hit]:
        """Block until ``count`` POSTs arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.hits) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"got {len(self.hits)} webhook calls, wanted {count}")
                self._cv.wait(left)
            return list(self.hits)

    def delivered(self) -> list[Any]:
        """Bodies (as JSON) of the POSTs that were answered with success."""
        with self._cv:
            return [h.json() for h in self.hits if 200 <= h.status < 300]


def start_receiver(**kwargs: Any) -> tuple[Receiver, ThreadingHTTPServer]:
    receiver = Receiver(**kwargs)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if receiver.delay:
                time.sleep(receiver.delay)
            status = receiver.answer()
            receiver.record(Hit(self.path, dict(self.headers), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec, server = start_receiver()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
