"""Outgoing webhooks: tell people and chat rooms that a request needs them or was decided.

``Webhooks.notify(event, payload)`` only renders the body and puts it on a heap;
one background thread posts it.  A failed delivery (an error status, a refused
connection, a timeout) is retried with exponential backoff up to ``attempts``
times and then dropped with a log line.  Nothing here ever blocks or fails the
decision that caused the notification: the audit log is the record, webhooks
are the doorbell.

Two body formats: ``json`` (``{"event": ..., **payload}``) for programs, and
``slack`` (``{"text": ...}`` in Slack's mrkdwn, which Mattermost and others
accept too).  Every piece of user-provided text that goes into mrkdwn has
``&``, ``<`` and ``>`` escaped, so a reason cannot ping ``<!channel>`` or forge
a link.  Payloads are built by the caller from what the audit log records and
never hold secrets.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

EVENTS = (
    "request.created",
    "request.approved",
    "request.denied",
    "request.expired",
    "request.cancelled",
    "request.revoked",
    "session.break_glass",
)
DEFAULT_EVENTS = frozenset(
    {
        "request.created",
        "request.approved",
        "request.denied",
        "request.expired",
        "session.break_glass",
    }
)
FORMATS = ("json", "slack")


@dataclass(frozen=True)
class WebhookConfig:
    """Where to post which events, in which body format."""

    url: str
    format: str = "json"
    events: frozenset[str] = field(default=DEFAULT_EVENTS)


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    event: str = field(compare=False)
    attempt: int = field(default=1, compare=False)


def slack_escape(text: object) -> str:
    """Make text inert in Slack mrkdwn: ``&``, ``<`` and ``>`` become entities."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(event: str, payload: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """The JSON body posted for ``event`` in format ``fmt`` (``json`` or ``slack``)."""
    if fmt == "slack":
        return {"text": slack_text(event, payload)}
    return {"event": event, **payload}


def slack_text(event: str, payload: Mapping[str, Any]) -> str:
    e = slack_escape
    actor = e(payload.get("actor") or "someone")
    if event == "session.break_glass":
        s = payload.get("session") or {}
        return (
            f":rotating_light: *break-glass*: {e(s.get('identity'))} opened scope "
            f"*{e(s.get('scope'))}* on *{e(s.get('target'))}* without approval "
            f"(session {e(s.get('id'))}, until {e(s.get('expires_at'))}). "
            f"Reason: {e(s.get('reason') or '-')}"
        )
    r = payload.get("request") or {}
    what = (
        f"{e(r.get('requester'))} → scope *{e(r.get('scope'))}* on *{e(r.get('target'))}* "
        f"for {e(r.get('ttl'))} (request `{e(r.get('id'))}`)"
    )
    reason = f"Reason: {e(r.get('reason') or '-')}"
    if event == "request.created":
        return (
            f":key: Access request: {what}. {reason}. "
            f"Needs {e(r.get('min_approvals'))} approval(s). "
            f"Review with `dbaccess approve {e(r.get('id'))}`"
        )
    if event == "request.approved":
        got, need = e(r.get("approvals_count")), e(r.get("min_approvals"))
        state = "granted" if r.get("status") == "approved" else f"{got} of {need} approvals"
        return f":white_check_mark: {actor} approved: {what}: {state}"
    if event == "request.denied":
        return f":no_entry: {actor} denied: {what}. Why: {e(r.get('note') or '-')}"
    if event == "request.expired":
        return f":hourglass: Expired: {what}"
    if event == "request.cancelled":
        return f":wastebasket: {actor} cancelled: {what}"
    if event == "request.revoked":
        return f":no_entry_sign: {actor} revoked: {what}"
    return f"{e(event)}: {what}"


class Webhooks:
    """Delivers notifications on a background thread; ``notify`` never blocks for long."""

    def __init__(
        self,
        hooks: Sequence[WebhookConfig],
        *,
        attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 5.0,
        max_queued: int = 10_000,
    ) -> None:
        self.hooks = tuple(hooks)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.max_queued = max_queued
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closing = False
        self._drain_until = 0.0
        self._thread: threading.Thread | None = None

    def notify(self, event: str, payload: Mapping[str, Any]) -> None:
        deliveries = []
        for hook in self.hooks:
            if event not in hook.events:
                continue
            try:
                body = json.dumps(render(event, payload, hook.format), default=str).encode()
            except (TypeError, ValueError):
                log.exception("webhook %s: cannot render %s", hook.url, event)
                continue
            deliveries.append((hook.url, body))
        if not deliveries:
            return
        with self._cv:
            if self._closing:
                return
            for url, body in deliveries:
                if len(self._heap) >= self.max_queued:
                    log.error("webhook queue full: dropping %s for %s", event, url)
                    continue
                heapq.heappush(
                    self._heap, _Delivery(time.monotonic(), next(self._seq), url, body, event)
                )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dbaccess-webhooks", daemon=True
                )
                self._thread.start()
            self._cv.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is due within ``timeout`` seconds, then stop; later retries are dropped."""
        with self._cv:
            self._closing = True
            self._drain_until = time.monotonic() + timeout
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout + self.timeout)

    def _next(self) -> _Delivery | None:
        with self._cv:
            while True:
                now = time.monotonic()
                if self._closing and (
                    not self._heap or self._heap[0].due > now or now > self._drain_until
                ):
                    if self._heap:
                        log.warning("webhooks: %d notifications not delivered", len(self._heap))
                    return None
                if self._heap and self._heap[0].due <= now:
                    return heapq.heappop(self._heap)
                self._cv.wait(self._heap[0].due - now if self._heap else None)

    def _run(self) -> None:
        while (delivery := self._next()) is not None:
            error = self._post(delivery)
            if error is None:
                continue
            if delivery.attempt >= self.attempts:
                log.error(
                    "webhook %s: giving up on %s after %d attempts: %s",
                    delivery.url,
                    delivery.event,
                    delivery.attempt,
                    error,
                )
                continue
            delay = min(self.backoff * 2 ** (delivery.attempt - 1), self.max_backoff)
            log.warning(
                "webhook %s: %s failed (%s); retry %d in %.1fs",
                delivery.url,
                delivery.event,
                error,
                delivery.attempt + 1,
                delay,
            )
            with self._cv:
                delivery.due = time.monotonic() + delay
                delivery.attempt += 1
                delivery.seq = next(self._seq)
                heapq.heappush(self._heap, delivery)

    def _post(self, delivery: _Delivery) -> str | None:
        request = urllib.request.Request(  # noqa: S310 (the URL's scheme is checked at config time)
            delivery.url,
            data=delivery.body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "dbaccess-broker"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                resp.read()
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(getattr(exc, "reason", exc))
        return None


def check_url(text: str) -> str:
    """A webhook URL as config accepts it: http(s) with a host; ValueError otherwise."""
    from urllib.parse import urlsplit

    url = urlsplit(text.strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL")
    return text.strip()
