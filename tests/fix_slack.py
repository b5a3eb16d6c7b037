"""A loopback stand-in for Slack's Web API, and Slack's way of signing requests.

No Slack is reachable from the tests, so ``SlackStandIn`` plays it: a threaded
stdlib HTTP server on ``127.0.0.1`` answering the Web API methods the broker's
Slack app calls (``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``,
``views.open``, ``users.info``) the way Slack does — ``POST /api/<method>`` with
a bearer token and a JSON or form body (``GET`` with a query for ``users.info``),
answered with ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}`` — and
records every call for the tests to read (:meth:`SlackStandIn.calls`,
:meth:`SlackStandIn.wait_for`).  ``users`` holds what ``users.info`` tells
about each user id.

:func:`signed_headers` signs an interaction body as Slack does (v0 HMAC-SHA256
of ``v0:<timestamp>:<body>`` under the app's signing secret);
:func:`block_actions` and :func:`view_submission` build the payloads Slack
sends when someone clicks a button or submits a modal.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

BOT_TOKEN = "xoxb-test-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0REVIEWS"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    authorization: str | None
    reply: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlackStandIn:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    _calls: list[Call] = field(default_factory=list)
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _ts: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _server: ThreadingHTTPServer | None = None

    def start(self) -> SlackStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in._dispatch(self, dict(parse_qs(urlsplit(self.path).query)))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    args = json.loads(raw or "{}")
                else:
                    args = {k: v[0] for k, v in parse_qs(raw).items()}
                stand_in._dispatch(self, args)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def api_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def calls(self, method: str | None = None) -> list[Call]:
        with self._cv:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 10) -> list[Call]:
        """The first ``count`` calls of ``method``, waiting (bounded) until there are as many."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                found = [c for c in self._calls if c.method == method]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{method} was called {len(found)} times, not {count}")
                self._cv.wait(left)

    def _dispatch(self, req: BaseHTTPRequestHandler, args: dict[str, Any]) -> None:
        method = urlsplit(req.path).path.removeprefix("/api/")
        for key in ("blocks", "view"):
            if isinstance(args.get(key), str):
                args[key] = json.loads(args[key])
        args = {
            k: v[0] if isinstance(v, list) and k not in ("blocks",) else v for k, v in args.items()
        }
        auth = req.headers.get("Authorization")
        body = self._answer(method, args, auth)
        with self._cv:
            self._calls.append(Call(method, args, auth, body))
            self._cv.notify_all()
        payload = json.dumps(body).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json; charset=utf-8")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def _answer(self, method: str, args: dict[str, Any], auth: str | None) -> dict[str, Any]:
        if auth != f"Bearer {BOT_TOKEN}":
            return {"ok": False, "error": "invalid_auth"}
        if method in ("chat.postMessage", "chat.update"):
            ts = args.get("ts") or f"1700000000.{next(self._ts):06d}"
            return {"ok": True, "channel": args.get("channel"), "ts": ts}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"1700000001.{next(self._ts):06d}"}
        if method == "views.open":
            return {"ok": True, "view": {"id": "V0MODAL", **(args.get("view") or {})}}
        if method == "users.info":
            user = self.users.get(str(args.get("user")))
            return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}
        return {"ok": False, "error": "unknown_method"}


@pytest.fixture(scope="module")
def slack_stand_in() -> Iterator[SlackStandIn]:
    stand_in = SlackStandIn().start()
    try:
        yield stand_in
    finally:
        stand_in.stop()


def signed_headers(
    body: bytes, *, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + ts.encode() + b":" + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


def form(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def block_actions(user: str, action_id: str, request_id: str, *, ts: str = "1.000001") -> bytes:
    return form(
        {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "team_id": "T0TEAM"},
            "trigger_id": f"trigger-{user}-{time.monotonic_ns()}",
            "container": {"type": "message", "channel_id": CHANNEL, "message_ts": ts},
            "channel": {"id": CHANNEL},
            "actions": [{"action_id": action_id, "value": request_id, "type": "button"}],
        }
    )


def view_submission(user: str, private_metadata: str, reason: str | None) -> bytes:
    return form(
        {
            "type": "view_submission",
            "user": {"id": user},
            "view": {
                "callback_id": "dbaccess_deny_reason",
                "private_metadata": private_metadata,
                "state": {
                    "values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}
                },
            },
        }
    )
