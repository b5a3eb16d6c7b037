"""Webhooks against a real local HTTP receiver: formats, escaping, retries, and never blocking."""

from __future__ import annotations

import logging
import socket
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from server.config import ConfigError, load_config
from server.notify.webhooks import (
    DEFAULT_EVENTS,
    WebhookConfig,
    Webhooks,
    render,
    slack_escape,
    slack_text,
)
from tests.fix_webhook import Receiver, start_receiver

REQUEST = {
    "id": "r-1",
    "requester": "alice",
    "target": "demo",
    "scope": "write",
    "ttl": "15m",
    "reason": "INC-7 <!channel> & <https://evil.example|click here>",
    "status": "pending",
    "min_approvals": 2,
    "approvals_count": 0,
    "note": None,
}
PAYLOAD: dict[str, Any] = {"request": REQUEST, "actor": "alice", "ts": "2025-06-01T09:00:00+00:00"}


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain", "plain"),
        ("a & b", "a &amp; b"),
        ("<!channel>", "&lt;!channel&gt;"),
        ("<https://x|y>", "&lt;https://x|y&gt;"),
        ("&lt; already", "&amp;lt; already"),
        ("*bold* _it_ `code`", "*bold* _it_ `code`"),
        (42, "42"),
    ],
)
def test_slack_escape(text: object, escaped: str) -> None:
    assert slack_escape(text) == escaped


@pytest.mark.parametrize(
    ("event", "changes", "expected"),
    [
        ("request.created", {}, ["Access request", "*write*", "*demo*", "`dbaccess approve r-1`",
                                 "Needs 2 approval(s)"]),
        ("request.approved", {"approvals_count": 1}, ["alice approved", "1 of 2 approvals"]),
        ("request.approved", {"status": "approved", "approvals_count": 2}, ["granted"]),
        ("request.denied", {"status": "denied", "note": "not <now>"},
         ["denied", "not &lt;now&gt;"]),
        ("request.expired", {"status": "expired"}, ["Expired"]),
        ("request.cancelled", {"status": "cancelled"}, ["cancelled"]),
    ],
)  # fmt: skip
def test_slack_text_per_event(event: str, changes: dict[str, Any], expected: list[str]) -> None:
    text = slack_text(event, {**PAYLOAD, "request": {**REQUEST, **changes}})
    for part in expected:
        assert part in text
    if event == "request.created":
        assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click here&gt;" in text
    assert "<!channel>" not in text and "<https://" not in text


def test_slack_text_for_break_glass_escapes_the_reason() -> None:
    session = {
        "id": "s-1",
        "identity": "alice",
        "target": "demo",
        "scope": "admin",
        "expires_at": "2025-06-01T10:00:00+00:00",
        "reason": "<@U123> db on fire",
    }
    text = slack_text("session.break_glass", {"session": session, "actor": "alice"})
    assert "break-glass" in text and "&lt;@U123&gt; db on fire" in text and "<@" not in text


def test_json_format_keeps_the_payload() -> None:
    body = render("request.created", PAYLOAD, "json")
    assert body == {"event": "request.created", **PAYLOAD}


def test_json_delivery(receiver: Receiver) -> None:
    hooks = Webhooks([WebhookConfig(receiver.url)])
    try:
        hooks.notify("request.created", PAYLOAD)
        [hit] = receiver.wait_for(1)
    finally:
        hooks.close()
    assert hit.path == "/hook"
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.json() == {"event": "request.created", **PAYLOAD}


def test_slack_delivery_is_escaped(receiver: Receiver) -> None:
    hooks = Webhooks([WebhookConfig(receiver.url, "slack")])
    try:
        hooks.notify("request.created", PAYLOAD)
        [hit] = receiver.wait_for(1)
    finally:
        hooks.close()
    assert set(hit.json()) == {"text"}
    assert "&lt;!channel&gt;" in hit.json()["text"]
    assert "<!channel>" not in hit.body.decode()


def test_fails_twice_then_succeeds() -> None:
    rec, server = start_receiver(statuses=[500, 503])
    hooks = Webhooks([WebhookConfig(rec.url)], backoff=0.05)
    try:
        hooks.notify("request.denied", PAYLOAD)
        hits = rec.wait_for(3)
        time.sleep(0.3)  # a fourth attempt would arrive by now
    finally:
        hooks.close()
        server.shutdown()
        server.server_close()
    assert [h.status for h in rec.hits] == [500, 503, 200]
    assert hits[0].body == hits[2].body
    assert rec.delivered() == [{"event": "request.denied", **PAYLOAD}]


def test_gives_up_after_the_last_attempt_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    rec, server = start_receiver(default=500)
    hooks = Webhooks([WebhookConfig(rec.url)], attempts=3, backoff=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="server.notify.webhooks"):
            hooks.notify("request.expired", PAYLOAD)
            rec.wait_for(3)
            deadline = time.monotonic() + 5
            while "giving up" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)
    finally:
        hooks.close()
        server.shutdown()
        server.server_close()
    assert len(rec.hits) == 3
    assert "giving up on request.expired after 3 attempts: HTTP 500" in caplog.text


def test_notify_never_waits_for_a_slow_or_dead_receiver(caplog: pytest.LogCaptureFixture) -> None:
    slow, server = start_receiver(delay=2.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # nothing listens here once closed
    hooks = Webhooks(
        [WebhookConfig(slow.url), WebhookConfig(f"http://127.0.0.1:{dead_port}/x")],
        attempts=2,
        backoff=0.05,
    )
    try:
        started = time.monotonic()
        for _ in range(20):
            hooks.notify("request.created", PAYLOAD)
        assert time.monotonic() - started < 0.5
    finally:
        hooks.close(timeout=0.1)
        server.shutdown()
        server.server_close()


def test_events_filter_what_a_hook_receives(receiver: Receiver) -> None:
    hooks = Webhooks([WebhookConfig(receiver.url, events=frozenset({"request.denied"}))])
    try:
        hooks.notify("request.created", PAYLOAD)
        hooks.notify("request.denied", PAYLOAD)
        [hit] = receiver.wait_for(1)
        time.sleep(0.2)
    finally:
        hooks.close()
    assert hit.json()["event"] == "request.denied"
    assert len(receiver.hits) == 1


def test_config_file_webhooks(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            webhooks:
              - url: https://hooks.slack.example/T1/B2
                format: slack
                events: [request.created, request.approved]
              - url: http://127.0.0.1:9000/dbaccess
            """
        )
    )
    cfg = load_config(path, environ={})
    assert cfg.webhooks == (
        WebhookConfig(
            "https://hooks.slack.example/T1/B2",
            "slack",
            frozenset({"request.created", "request.approved"}),
        ),
        WebhookConfig("http://127.0.0.1:9000/dbaccess", "json", DEFAULT_EVENTS),
    )


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("  - url: ftp://x/y\n",
         "server.yaml:2: webhooks[0].url: 'ftp://x/y' is not an http(s) URL"),
        ("  - format: json\n", "server.yaml:2: webhooks[0].url: required key is missing"),
        ("  - url: https://x/y\n    format: teams\n",
         "server.yaml:3: webhooks[0].format: 'teams' is not a webhook format"),
        ("  - url: https://x/y\n    events: [request.created, session.started]\n",
         "server.yaml:3: webhooks[0].events[1]: 'session.started' is not an event"),
        ("  - url: https://x/y\n    secret: s3\n",
         "server.yaml:3: webhooks[0].secret: unknown key"),
        ("  url: https://x/y\n", "server.yaml:2: webhooks: expected a list, got a mapping"),
    ],
)  # fmt: skip
def test_config_file_webhook_errors(tmp_path: Path, entry: str, problem: str) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("webhooks:\n" + entry)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert any(problem in str(p) for p in caught.value.problems), caught.value.problems
