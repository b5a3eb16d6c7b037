"""Slack, both ways: request messages with Approve/Deny buttons, and the clicks coming back.

Out: :meth:`SlackApp.notify` is a notifier of the approvals service (next to the
webhooks).  A new request is posted to the configured channel with
``chat.postMessage`` (who asks for what, the statement and its SHA-256 for a
statement review, Approve and Deny buttons, a link to the web inbox's detail
page); every later change of the request (an approval, the final state) edits
that message with ``chat.update``, so the channel shows who approved, the
N-of-M progress and how it ended.  Calls to Slack run on one background thread:
Slack being slow or down never delays or fails a decision.

In: Slack posts each click to ``POST /integrations/slack/interactions``.
:meth:`SlackApp.handle` refuses the request unless ``slack_sdk``'s
``SignatureVerifier`` accepts it (the v0 HMAC-SHA256 of ``v0:timestamp:body``
under the signing secret, the timestamp within five minutes) and its signature
was not seen before (remembered through the store's one-use table, so a replay
is refused on every broker replica).  Then:

- the Slack user is mapped to a dbaccess identity: the policy's ``slack_users``
  first, else (``email_lookup``) the e-mail of a ``users.info`` answer Slack says
  is confirmed.  The identity's groups are the policy's static ``groups`` that
  list it.  Unmapped: an ephemeral "you are not a reviewer here", nothing changes;
- Approve calls the same :class:`~server.approvals.service.Approvals` as the
  CLI (self-approval, N-of-M, expiry and single use are its business); a refusal
  comes back as an ephemeral message naming the reason;
- Deny opens a modal (``views.open``) asking for the reason; its submission
  denies, and a refusal is shown in the modal, next to the reason field.

The message and modal layouts (:func:`message`, :func:`deny_modal`) and the
reading of payloads (:func:`parse_interaction`) are pure functions; only
:class:`SlackApp` does I/O.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from starlette.concurrency import run_in_threadpool

from common.text import reveal
from server.approvals.service import Approvals, request_json
from server.audit import chain
from server.config import SlackConfig
from server.errors import DbaccessError, NotFound
from server.notify.webhooks import slack_escape
from server.policy.evaluate import Identity
from server.policy.model import Policy
from server.store.db import hash_secret, utcnow

log = logging.getLogger(__name__)

APPROVE = "dbaccess_approve"
DENY = "dbaccess_deny"
OPEN = "dbaccess_open"
DENY_MODAL = "dbaccess_deny_reason"
REASON_BLOCK = "reason"
NOT_A_REVIEWER = (
    "You are not a reviewer here: your Slack account is not mapped to a dbaccess identity."
)
# Slack signs with a timestamp it must be within five minutes of; a signature is
# remembered a little longer than it can verify.
_REPLAY_MEMORY = timedelta(minutes=11)
_MAX_STATEMENT_SHOWN = 2500
# Interaction payloads carry the message they came from: a few KiB, far below this.
MAX_BODY = 256 * 1024
_MAX_MESSAGES = 10_000
_FINAL = {
    "approved": ":white_check_mark: Approved",
    "denied": ":no_entry: Denied",
    "expired": ":hourglass: Expired",
    "cancelled": ":wastebasket: Cancelled",
    "revoked": ":no_entry_sign: Revoked",
    "used": ":white_check_mark: Approved and used",
}


# -- pure: layouts ---------------------------------------------------------------------
def progress(request: Mapping[str, Any]) -> str:
    """``2 of 3 approvals (bob, carol)``."""
    names = ", ".join(slack_escape(a["approver"]) for a in request.get("approvals") or ())
    count = f"{request.get('approvals_count', 0)} of {request.get('min_approvals')} approvals"
    return f"{count} ({names})" if names else count


def message(request: Mapping[str, Any], detail_url: str | None) -> tuple[str, list[dict[str, Any]]]:
    """The text (for notifications) and blocks of the channel message for ``request``
    (a :func:`~server.approvals.service.request_json` dict), in its current state."""
    e = slack_escape
    rid = e(request["id"])
    statement = request.get("statement")
    what = "Statement review" if statement is not None else "Access request"
    summary = (
        f"{what} `{rid}`: {e(request['requester'])} → scope *{e(request['scope'])}* "
        f"on *{e(request['target'])}* for {e(request['ttl'])}"
    )
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f":key: {summary}"}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"*Reason:* {e(request.get('reason') or '-')}"},
        },
    ]
    if statement is not None:
        shown = statement if len(statement) <= _MAX_STATEMENT_SHOWN else (
            statement[:_MAX_STATEMENT_SHOWN] + "\n… (cut: see the web page for all of it)"
        )  # fmt: skip
        # Characters that show nothing or reorder the text are shown as code
        # points: the reviewer reads what runs, in the order it runs.
        shown = reveal(shown)
        code = e(shown).replace("```", "`\u200b``")
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"```{code}```\nSHA-256 `{e(request.get('statement_sha256'))}`",
                },
            }
        )
    status = request["status"]
    if status == "pending":
        state = f":hourglass_flowing_sand: Pending: {progress(request)}"
    else:
        state = f"{_FINAL.get(status, e(status))}"
        by = request.get("decided_by")
        if status in ("denied", "cancelled", "revoked") and by:
            state += f" by {e(by)}"
            if request.get("note"):
                state += f": {e(request['note'])}"
        elif request.get("approvals"):
            state += f": {progress(request)}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": state}]})
    buttons: list[dict[str, Any]] = []
    if status == "pending":
        buttons += [
            {
                "type": "button",
                "action_id": APPROVE,
                "style": "primary",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": request["id"],
            },
            {
                "type": "button",
                "action_id": DENY,
                "style": "danger",
                "text": {"type": "plain_text", "text": "Deny"},
                "value": request["id"],
            },
        ]
    if detail_url:
        buttons.append(
            {
                "type": "button",
                "action_id": OPEN,
                "text": {"type": "plain_text", "text": "Open in dbaccess"},
                "url": detail_url,
            }
        )
    if buttons:
        block_id = f"dbaccess:{request['id']}"
        blocks.append({"type": "actions", "block_id": block_id, "elements": buttons})
    return f"{summary}. {state}", blocks


def deny_modal(request_id: str, channel: str | None, ts: str | None) -> dict[str, Any]:
    """The modal asking for the reason of a denial."""
    meta = json.dumps({"request": request_id, "channel": channel, "ts": ts})
    return {
        "type": "modal",
        "callback_id": DENY_MODAL,
        "private_metadata": meta,
        "title": {"type": "plain_text", "text": "Deny request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"Deny request `{slack_escape(request_id)}`"},
            },
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_BLOCK,
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }


# -- pure: reading interactions -------------------------------------------------------
@dataclass(frozen=True)
class Interaction:
    """One click or modal submission, as far as dbaccess cares.

    ``kind`` is ``approve``, ``deny`` (the Deny button), ``deny_submit`` (the
    modal's submission, with ``reason``) or ``ignore`` (anything else, such as
    the link button)."""

    kind: str
    user: str
    request_id: str | None = None
    channel: str | None = None
    ts: str | None = None
    trigger_id: str | None = None
    reason: str | None = None


class BadPayload(ValueError):
    pass


def parse_interaction(body: bytes) -> Interaction:
    """The interaction in a form-encoded Slack request body; BadPayload if it is not one."""
    try:
        form = parse_qs(body.decode(), strict_parsing=True, max_num_fields=10)
        payload = json.loads(form["payload"][0])
        user = payload["user"]["id"]
        if not isinstance(payload, dict) or not isinstance(user, str):
            raise BadPayload("no user")
        kind = payload.get("type")
        if kind == "block_actions":
            action = (payload.get("actions") or [{}])[0]
            which = {APPROVE: "approve", DENY: "deny"}.get(action.get("action_id"), "ignore")
            container = payload.get("container") or {}
            channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
            return Interaction(
                which,
                user,
                request_id=_text(action.get("value")),
                channel=_text(channel),
                ts=_text(container.get("message_ts")),
                trigger_id=_text(payload.get("trigger_id")),
            )
        if kind == "view_submission" and payload["view"].get("callback_id") == DENY_MODAL:
            view = payload["view"]
            meta = json.loads(view.get("private_metadata") or "{}")
            value = view["state"]["values"][REASON_BLOCK][REASON_BLOCK].get("value")
            return Interaction(
                "deny_submit",
                user,
                request_id=_text(meta.get("request")),
                channel=_text(meta.get("channel")),
                ts=_text(meta.get("ts")),
                reason=_text(value),
            )
        return Interaction("ignore", user)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, BadPayload):
            raise
        raise BadPayload(f"not a Slack interaction payload ({type(exc).__name__})") from None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# -- the shell -----------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """What the interaction endpoint answers Slack: an HTTP status and a JSON body (or none)."""

    status: int
    body: dict[str, Any] | None = None


class SlackApp:
    """Posts and updates request messages, and carries out interactions; see the module doc."""

    def __init__(
        self,
        config: SlackConfig,
        approvals: Approvals,
        policy: Callable[[], Policy],
        *,
        ui_url: str | None = None,
        client: WebClient | None = None,
        verifier: SignatureVerifier | None = None,
    ) -> None:
        self.config = config
        self.approvals = approvals
        self.policy = policy
        self.ui_url = ui_url.rstrip("/") if ui_url else None
        self.client = client or WebClient(
            token=config.bot_token, base_url=config.api_url.rstrip("/") + "/", timeout=10
        )
        self.verifier = verifier or SignatureVerifier(config.signing_secret)
        self._messages: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbaccess-slack")

    def detail_url(self, request_id: str) -> str | None:
        return f"{self.ui_url}/ui/requests/{request_id}" if self.ui_url else None

    # -- out --------------------------------------------------------------------------
    def notify(self, event: str, payload: Mapping[str, Any]) -> None:
        request = payload.get("request")
        if not event.startswith("request.") or not isinstance(request, Mapping):
            return
        try:
            self._worker.submit(self._publish, event, dict(request))
        except RuntimeError:  # shut down
            log.warning("slack: not posting %s for %s: closing", event, request.get("id"))

    def close(self, timeout: float = 5.0) -> None:
        del timeout  # the calls in flight have the client's own timeout
        self._worker.shutdown(wait=True, cancel_futures=False)

    def _remember(self, request_id: str, channel: str | None, ts: str | None) -> None:
        if not channel or not ts:
            return
        with self._lock:
            self._messages[request_id] = (channel, ts)
            self._messages.move_to_end(request_id)
            while len(self._messages) > _MAX_MESSAGES:
                self._messages.popitem(last=False)

    def _publish(self, event: str, request: dict[str, Any]) -> None:
        text, blocks = message(request, self.detail_url(request["id"]))
        try:
            if event == "request.created":
                reply = self.client.chat_postMessage(
                    channel=self.config.channel, text=text, blocks=blocks, unfurl_links=False
                )
                self._remember(request["id"], reply.get("channel"), reply.get("ts"))
                return
            with self._lock:
                where = self._messages.get(request["id"])
            if where is None:
                return  # posted before this broker started: the next click updates it
            self.client.chat_update(channel=where[0], ts=where[1], text=text, blocks=blocks)
        except (SlackApiError, OSError) as exc:
            log.warning("slack: %s for %s failed: %s", event, request["id"], exc)

    def _refresh(self, request_id: str, identity: Identity) -> None:
        """Update the message from the request as it is now (after a refused click too)."""
        try:
            request = self.approvals.get(request_id, identity)
        except DbaccessError:
            return
        self.notify("request.refreshed", {"request": request_json(request)})

    # -- in ---------------------------------------------------------------------------
    def handle(self, body: bytes, headers: Mapping[str, str], address: str | None) -> Reply:
        """Verify and carry out one interaction request (see the module doc)."""
        if len(body) > MAX_BODY:
            return self._reject("body too large", address)
        try:
            valid = self.verifier.is_valid_request(body, dict(headers))
        except ValueError:  # a timestamp that is not a number
            valid = False
        if not valid:
            return self._reject("bad or stale signature", address)
        signature = {k.lower(): v for k, v in headers.items()}["x-slack-signature"]
        if not self.approvals.store.use_once(
            hash_secret(f"slack\n{signature}"),
            kind="slack",
            issuer="slack",
            expires_at=utcnow() + _REPLAY_MEMORY,
        ):
            return self._reject("replayed request", address)
        try:
            act = parse_interaction(body)
        except BadPayload as exc:
            return Reply(400, {"error": str(exc)})
        if act.kind == "ignore":
            return Reply(200)
        if act.request_id:
            self._remember(act.request_id, act.channel, act.ts)
        identity = self.identity_for(act.user)
        if identity is None:
            if act.kind == "deny_submit":
                return Reply(200, _modal_error(NOT_A_REVIEWER))
            self._ephemeral(act, NOT_A_REVIEWER)
            return Reply(200)
        if act.request_id is None:
            return Reply(400, {"error": "the interaction names no request"})
        if act.kind == "deny":
            try:  # no form for someone who may not decide it anyway
                self.approvals.get(act.request_id, identity)
            except DbaccessError as exc:
                self._ephemeral(act, _refusal_text(exc, identity, act.request_id))
                return Reply(200)
            self._open_deny(act)
            return Reply(200)
        try:
            if act.kind == "approve":
                self.approvals.approve(act.request_id, identity, None)
            else:
                self.approvals.deny(act.request_id, identity, act.reason)
        except DbaccessError as exc:
            text = _refusal_text(exc, identity, act.request_id)
            self._refresh(act.request_id, identity)
            if act.kind == "deny_submit":
                return Reply(200, _modal_error(text))
            self._ephemeral(act, text)
        return Reply(200)

    def identity_for(self, user_id: str) -> Identity | None:
        """The identity a Slack user reviews as (see the module doc), or None."""
        name = self.policy().slack_users.get(user_id)
        if name is None and self.config.email_lookup:
            try:
                user = self.client.users_info(user=user_id).get("user") or {}
            except (SlackApiError, OSError) as exc:
                log.warning("slack: users.info for %s failed: %s", user_id, exc)
                return None
            email = (user.get("profile") or {}).get("email")
            confirmed = user.get("is_email_confirmed") is True
            if confirmed and not user.get("deleted") and isinstance(email, str) and email:
                name = email
        # Groups come from the policy (Approvals.actor adds the static groups listing it).
        return Identity(name, frozenset()) if name else None

    def _open_deny(self, act: Interaction) -> None:
        assert act.request_id is not None
        try:
            self.client.views_open(
                trigger_id=act.trigger_id or "",
                view=deny_modal(act.request_id, act.channel, act.ts),
            )
        except (SlackApiError, OSError) as exc:
            log.warning("slack: views.open for %s failed: %s", act.request_id, exc)
            self._ephemeral(act, "Could not open the form for a reason; deny from the web inbox.")

    def _ephemeral(self, act: Interaction, text: str) -> None:
        if not act.channel:
            return
        try:
            self.client.chat_postEphemeral(channel=act.channel, user=act.user, text=text)
        except (SlackApiError, OSError) as exc:
            log.warning("slack: chat.postEphemeral failed: %s", exc)

    def _reject(self, why: str, address: str | None) -> Reply:
        log.warning("slack: refused an interaction request from %s: %s", address, why)
        chain.append(
            self.approvals.store,
            "slack.rejected",
            data={"reason": why, "address": address},
        )
        return Reply(401, {"error": why})


def _refusal_text(exc: DbaccessError, identity: Identity, request_id: str) -> str:
    if isinstance(exc, NotFound):
        return f"You are not a reviewer here: {identity.name} may not decide request {request_id}."
    return f"Not done: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")


def _modal_error(text: str) -> dict[str, Any]:
    return {"response_action": "errors", "errors": {REASON_BLOCK: text[:300]}}


def register(app: FastAPI, slack: SlackApp) -> None:
    """Add ``POST /integrations/slack/interactions`` to ``app``."""

    @app.post("/integrations/slack/interactions", include_in_schema=False)
    async def slack_interactions(request: Request) -> Response:
        body = await request.body()
        address = request.client.host if request.client else None
        reply = await run_in_threadpool(slack.handle, body, dict(request.headers), address)
        if reply.body is None:
            return Response(status_code=reply.status)
        return JSONResponse(reply.body, status_code=reply.status)
