"""The Slack app both ways: request messages with buttons out, signed interactions in.

No Slack is reachable from the tests: Slack's Web API is played by a loopback
stand-in that speaks its protocol (``tests/fix_slack.py``) and records the
``chat.postMessage``/``chat.update``/``chat.postEphemeral``/``views.open`` calls
the broker makes through ``slack_sdk``'s ``WebClient``; the interaction
requests are signed here as Slack signs them, or forged.  The interaction
endpoint is the broker's own route on a FastAPI app, over the real approvals
service and a real store; a fake clock moves the requests' expiry.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.approvals.machine import Status
from server.approvals.service import Approvals, request_json
from server.audit import chain
from server.config import SlackConfig
from server.integrations.slack import (
    APPROVE,
    DENY,
    NOT_A_REVIEWER,
    BadPayload,
    SlackApp,
    message,
    parse_interaction,
    register,
)
from server.policy import Identity, parse_policy
from server.store.db import Store
from tests.fix_slack import (
    BOT_TOKEN,
    CHANNEL,
    SIGNING_SECRET,
    SlackStandIn,
    block_actions,
    signed_headers,
    view_submission,
)

POLICY = parse_policy(
    textwrap.dedent(
        """\
        version: 1
        groups:
          dba: [bob, carol, dave@example.com]
        slack_users:
          U0ALICE: alice
          U0BOB: bob
          U0CAROL: carol
        targets:
          demo:
            database: demo
            admin_dsn_env: DEMO_DSN
            scopes:
              write:
                grants: [demo_write]
                max_ttl: 1h
                allow: {groups: [dev]}
                approval:
                  approvers: {groups: [dba]}
              schema:
                grants: [demo_owner]
                max_ttl: 1h
                allow: {groups: [dev]}
                approval:
                  approvers: {groups: [dba]}
                  min_approvals: 2
        """
    ),
    "policy.yaml",
)
ALICE = Identity("alice", frozenset({"dev"}))


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    approvals: Approvals
    app: SlackApp
    http: TestClient
    stand_in: SlackStandIn
    clock: Clock
    store: Store

    def click(self, user: str, action: str, request_id: str, ts: str = "1.000001") -> Any:
        return self.post(block_actions(user, action, request_id, ts=ts))

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> Any:
        return self.http.post(
            "/integrations/slack/interactions",
            content=body,
            headers=signed_headers(body) if headers is None else headers,
        )

    def request(self, scope: str = "write") -> str:
        created, _ = self.approvals.create(ALICE, "demo", scope, None, "INC-42")
        return created.id

    def status(self, request_id: str) -> Status:
        r = self.approvals.repo.get(request_id)
        assert r is not None
        return r.status

    def ephemerals(self, user: str) -> list[str]:
        return [
            c.args["text"]
            for c in self.stand_in.calls("chat.postEphemeral")
            if c.args["user"] == user
        ]

    def updated(self, request_id: str, saying: str) -> dict[str, Any]:
        """The first update of ``request_id``'s message whose text says ``saying`` (waiting)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for call in self.stand_in.calls("chat.update"):
                if request_id in call.args["text"] and saying in call.args["text"]:
                    return call.args
            time.sleep(0.02)
        raise AssertionError(f"{request_id}'s message was not updated to say {saying!r}")


@pytest.fixture
def world(tmp_path: Path, slack_stand_in: SlackStandIn) -> Iterator[World]:
    slack_stand_in.users.update(
        {
            "U0DAVE": {
                "id": "U0DAVE",
                "is_email_confirmed": True,
                "profile": {"email": "dave@example.com"},
            },
            "U0EVE": {
                "id": "U0EVE",
                "is_email_confirmed": False,
                "profile": {"email": "bob@example.com"},
            },
        }
    )
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    clock = Clock()
    approvals = Approvals(store, lambda: POLICY, clock=clock)
    config = SlackConfig(
        signing_secret=SIGNING_SECRET,
        bot_token=BOT_TOKEN,
        channel=CHANNEL,
        api_url=slack_stand_in.api_url,
    )
    app = SlackApp(config, approvals, lambda: POLICY, ui_url="https://broker.example.com")
    approvals.notifier = app
    api = FastAPI()
    register(api, app)
    try:
        with TestClient(api) as http:
            yield World(approvals, app, http, slack_stand_in, clock, store)
    finally:
        app.close()
        store.close()
        slack_stand_in._calls.clear()


def _buttons(blocks: list[dict[str, Any]]) -> list[str]:
    return [e.get("action_id") for b in blocks if b["type"] == "actions" for e in b["elements"]]


def _text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks)


# -- out and back: approve, N-of-M, deny with a modal ---------------------------------------
def test_message_has_buttons_and_link_and_is_updated_with_each_approval(world: World) -> None:
    rid = world.request("schema")  # two approvals needed
    posted = world.stand_in.wait_for("chat.postMessage")[0]
    assert posted.authorization == f"Bearer {BOT_TOKEN}"
    assert posted.args["channel"] == CHANNEL
    assert _buttons(posted.args["blocks"]) == [APPROVE, DENY, "dbaccess_open"]
    assert f"https://broker.example.com/ui/requests/{rid}" in _text(posted.args["blocks"])
    assert "alice" in posted.args["text"] and "INC-42" in _text(posted.args["blocks"])

    ts = posted.reply["ts"]

    assert world.click("U0BOB", APPROVE, rid, ts).status_code == 200
    first = world.updated(rid, "1 of 2 approvals (bob)")
    assert (first["channel"], first["ts"]) == (CHANNEL, ts)
    assert _buttons(first["blocks"])[:2] == [APPROVE, DENY]
    assert world.status(rid) is Status.PENDING

    # Found by the e-mail Slack has confirmed: dave@example.com is in the dba group.
    assert world.click("U0DAVE", APPROVE, rid, ts).status_code == 200
    final = world.updated(rid, "Approved: 2 of 2 approvals (bob, dave@example.com)")
    assert _buttons(final["blocks"]) == ["dbaccess_open"] and final["ts"] == ts
    assert world.status(rid) is Status.APPROVED


def test_deny_opens_a_modal_and_its_reason_denies(world: World) -> None:
    rid = world.request()
    world.stand_in.wait_for("chat.postMessage")
    assert world.click("U0BOB", DENY, rid).status_code == 200
    opened = world.stand_in.wait_for("views.open")[-1]
    assert opened.args["trigger_id"].startswith("trigger-U0BOB")
    view = opened.args["view"]
    assert view["type"] == "modal" and rid in view["private_metadata"]
    assert world.status(rid) is Status.PENDING  # the button alone decides nothing

    # No reason: the modal says why, the request stays as it was.
    empty = world.post(view_submission("U0BOB", view["private_metadata"], None))
    assert empty.json()["response_action"] == "errors"
    assert "reason is required" in empty.json()["errors"]["reason"]
    assert world.status(rid) is Status.PENDING

    done = world.post(view_submission("U0BOB", view["private_metadata"], "not during the freeze"))
    assert done.status_code == 200 and not done.content  # closes the modal
    assert world.status(rid) is Status.DENIED
    update = world.updated(rid, "Denied by bob: not during the freeze")
    assert _buttons(update["blocks"]) == ["dbaccess_open"]


# -- who may click ------------------------------------------------------------------------
def test_self_approval_is_refused_with_an_ephemeral_message(world: World) -> None:
    rid = world.request()
    world.click("U0ALICE", APPROVE, rid)
    assert any("own request" in t for t in world.ephemerals("U0ALICE"))
    assert world.status(rid) is Status.PENDING
    assert world.approvals.repo.get(rid).approvals == ()  # type: ignore[union-attr]


@pytest.mark.parametrize("user", ["U0NOBODY", "U0EVE"])  # unknown to Slack; e-mail unconfirmed
def test_unmapped_user_is_told_and_nothing_changes(world: World, user: str) -> None:
    rid = world.request()
    world.click(user, APPROVE, rid)
    assert world.ephemerals(user) == [NOT_A_REVIEWER]
    world.click(user, DENY, rid)
    assert world.stand_in.calls("views.open") == []
    assert world.status(rid) is Status.PENDING


def test_mapped_identity_that_may_not_review_is_told_so(world: World) -> None:
    rid = world.request()
    world.stand_in.users["U0OSCAR"] = {
        "is_email_confirmed": True,
        "profile": {"email": "oscar@example.com"},
    }
    world.click("U0OSCAR", APPROVE, rid)
    world.click("U0OSCAR", DENY, rid)
    told = f"You are not a reviewer here: oscar@example.com may not decide request {rid}."
    assert world.ephemerals("U0OSCAR") == [told, told]
    assert world.stand_in.calls("views.open") == []
    assert world.status(rid) is Status.PENDING


# -- bad input loses nothing -----------------------------------------------------------------
def test_forged_stale_and_replayed_requests_are_refused(world: World) -> None:
    rid = world.request()
    body = block_actions("U0BOB", APPROVE, rid)
    forged = signed_headers(body, secret="not-the-signing-secret")
    assert world.post(body, forged).status_code == 401
    stale = signed_headers(body, timestamp=int(time.time()) - 6 * 60)
    assert world.post(body, stale).status_code == 401
    assert (
        world.post(body, {"Content-Type": "application/x-www-form-urlencoded"}).status_code == 401
    )
    garbled = signed_headers(body)
    garbled["X-Slack-Request-Timestamp"] = "soon"
    assert world.post(body, garbled).status_code == 401
    # A valid body altered after signing.
    other = block_actions("U0CAROL", APPROVE, rid)
    assert world.post(other, signed_headers(body)).status_code == 401
    assert world.status(rid) is Status.PENDING

    headers = signed_headers(body)
    assert world.post(body, headers).status_code == 200
    assert world.post(body, headers).status_code == 401  # the same request again: a replay
    request = world.approvals.repo.get(rid)
    assert request is not None and request.status is Status.APPROVED and len(request.approvals) == 1
    reasons = [e.data["reason"] for e in chain.events(world.store) if e.kind == "slack.rejected"]
    assert reasons == ["bad or stale signature"] * 5 + ["replayed request"]


def test_double_click_counts_once(world: World) -> None:
    rid = world.request("schema")
    world.click("U0BOB", APPROVE, rid)
    world.click("U0BOB", APPROVE, rid)
    assert any("already approved" in t for t in world.ephemerals("U0BOB"))
    request = world.approvals.repo.get(rid)
    assert request is not None and len(request.approvals) == 1 and request.status is Status.PENDING


def test_two_reviewers_at_once_grant_once(world: World) -> None:
    rid = world.request()  # one approval needed
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def click(user: str) -> None:
        body = block_actions(user, APPROVE, rid)
        headers = signed_headers(body)
        barrier.wait()
        codes.append(world.post(body, headers).status_code)

    threads = [threading.Thread(target=click, args=(u,)) for u in ("U0BOB", "U0CAROL")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [200, 200]
    request = world.approvals.repo.get(rid)
    assert request is not None and request.status is Status.APPROVED and len(request.approvals) == 1
    told = world.ephemerals("U0BOB") + world.ephemerals("U0CAROL")
    assert len(told) == 1 and "approved" in told[0]


def test_a_click_a_second_after_expiry_is_refused_and_the_message_says_expired(
    world: World,
) -> None:
    rid = world.request()
    request = world.approvals.repo.get(rid)
    assert request is not None
    world.clock.now = request.expires_at + timedelta(seconds=1)
    world.click("U0BOB", APPROVE, rid)
    assert world.status(rid) is Status.EXPIRED
    assert any("expired" in t for t in world.ephemerals("U0BOB"))
    world.updated(rid, "Expired")


# -- pure pieces ---------------------------------------------------------------------------
def test_message_escapes_what_people_typed() -> None:
    request = {
        "id": "r-1", "requester": "alice", "scope": "write", "target": "demo", "ttl": "15m",
        "reason": "<!channel> see <https://evil.example|here>", "status": "pending",
        "approvals": [], "approvals_count": 0, "min_approvals": 1,
        "statement": "select 1 ``` <@U0BOB>", "statement_sha256": "ab" * 32,
    }  # fmt: skip
    text, blocks = message(request, None)
    assert "alice" in text
    shown = json.dumps(blocks)
    assert "<!channel>" not in shown and "&lt;!channel&gt;" in shown
    assert "<@U0BOB>" not in shown and "ab" * 32 in shown
    assert _buttons(blocks) == [APPROVE, DENY]


def test_message_shows_invisible_and_reordering_characters_of_the_statement() -> None:
    request = {
        "id": "r-1", "requester": "alice", "scope": "write", "target": "demo", "ttl": "15m",
        "reason": "fix", "status": "pending", "approvals": [], "approvals_count": 0,
        "min_approvals": 1, "statement_sha256": "ab" * 32,
        "statement": "delete from t where id = 1 /*\u202e ,2 = di */ or\u200b true",
    }  # fmt: skip
    _text, blocks = message(request, None)
    code = next(b["text"]["text"] for b in blocks if "```" in b.get("text", {}).get("text", ""))
    assert "\u202e" not in code and "\u200b" not in code.replace("`\u200b``", "")
    assert "[U+202E]" in code and "[U+200B]" in code


@pytest.mark.parametrize(
    "body",
    [b"", b"payload=not-json", b"payload=%7B%7D", b"a=1&b=2", b"\xff\xfe", b"payload=%5B%5D"],
)
def test_payloads_that_are_not_interactions_are_refused(body: bytes) -> None:
    with pytest.raises(BadPayload):
        parse_interaction(body)


def test_a_signed_bad_payload_is_a_400_and_changes_nothing(world: World) -> None:
    rid = world.request()
    assert world.post(b"payload=%7B%7D").status_code == 400
    assert world.status(rid) is Status.PENDING
    assert request_json(world.approvals.repo.get(rid))["approvals_count"] == 0  # type: ignore[arg-type]
