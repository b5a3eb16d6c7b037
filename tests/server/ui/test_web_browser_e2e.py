"""The web inbox in a real browser, against a real dev broker, with Slack both ways.

Headless Chromium (``tests/fix_browser.py``) logs in
through the loopback OIDC provider (``tests/fix_oidc.py``: authorization code +
PKCE), sees the inbox, approves a request while the requester's
``dbaccess connect`` waits for it (and then runs), denies one with a reason,
and, as an admin, kills the live session and reads its recording and the audit
chain's verification.  The browser trusts nothing it should not: only the dev
broker's self-signed certificate is accepted (``--ignore-certificate-errors``,
loopback only).

Screenshots of the inbox and of two detail pages are saved under
``test-artifacts/ui/`` at the top of the repository (git ignores the folder; each
run replaces them).

The broker also runs its Slack app against a loopback stand-in for Slack's Web
API (no Slack is reachable here; ``tests/fix_slack.py``): a request made here
is posted there with its buttons, and a click signed as Slack signs it decides
a request through the broker's real endpoint.
"""

from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.demo.provision import DemoTarget
from tests import fix_browser
from tests.fix_broker import Broker, Waiting, new_broker
from tests.fix_oidc import CLIENT_ID, OidcProvider
from tests.fix_slack import (
    BOT_TOKEN,
    CHANNEL,
    SIGNING_SECRET,
    SlackStandIn,
    block_actions,
    signed_headers,
)

pytestmark = pytest.mark.slow

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = fix_browser.ARTIFACTS / "ui"
POLICY = """\
version: 1
groups:
  dba: [bob@example.com]
slack_users:
  U0BOB: bob@example.com
targets:
  demo:
    database: demo
    issuer: postgres
    admin_dsn_file: admin.dsn
    scopes:
      write:
        grants: [demo_write]
        default_ttl: 15m
        max_ttl: 1h
        allow: {groups: [dev]}
        approval:
          approvers: {groups: [dba]}
"""
BOB = {"sub": "u-bob", "email": "bob@example.com", "groups": ["dev"]}
ROOT = {"sub": "u-root", "email": "root@example.com", "groups": ["admin"]}


@dataclass
class World:
    broker: Broker
    provider: OidcProvider
    slack: SlackStandIn
    driver: webdriver.Chrome

    def url(self, path: str) -> str:
        return self.broker.api_url + path

    def wait(self, condition: object, timeout: float = 20) -> object:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition)  # type: ignore[arg-type]

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def log_in_as(self, user: dict[str, object]) -> None:
        """Log in through the identity provider as ``user`` (a fresh browser session)."""
        self.driver.delete_all_cookies()
        self.provider.user = dict(user)
        self.driver.get(self.url("/ui/"))
        self.wait(lambda d: "/ui/login" in d.current_url)
        self.driver.find_element(By.ID, "login-oidc").click()
        self.wait(
            lambda d: d.current_url.rstrip("/").endswith("/ui") and d.find_elements(By.ID, "whoami")
        )
        assert self.text("whoami") == user["email"]

    def waiting_connect(self, person: str) -> tuple[Waiting, str]:
        token = self.broker.token(person, "dev")
        job = Waiting(
            self.broker.spawn(
                "connect", "demo", "--scope", "write", "--reason", f"INC-7 for {person}",
                "--no-launch", "--wait-timeout", "2m", token=token,
            )
        )  # fmt: skip
        request_id = job.expect(r"waiting for approval of request (r-[0-9a-f]+)").group(1)
        return job, request_id

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(ARTIFACTS / name))


@pytest.fixture(scope="module")
def world(
    demo_target: DemoTarget, oidc_provider: OidcProvider, slack_stand_in: SlackStandIn
) -> Iterator[World]:
    broker = new_broker(demo_target)
    broker.server_env.update(
        DBACCESS_SERVER_SLACK_SIGNING_SECRET=SIGNING_SECRET,
        DBACCESS_SERVER_SLACK_BOT_TOKEN=BOT_TOKEN,
        DBACCESS_SERVER_SLACK_CHANNEL=CHANNEL,
        DBACCESS_SERVER_SLACK_API_URL=slack_stand_in.api_url,
    )
    broker.start(
        "--oidc-issuer", oidc_provider.issuer, "--oidc-client-id", CLIENT_ID, policy=POLICY
    )
    home = Path(tempfile.mkdtemp(prefix="dbaccess-chromium-"))
    try:
        driver = fix_browser.chrome(home)
        try:
            yield World(broker, oidc_provider, slack_stand_in, driver)
        finally:
            driver.quit()
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_approve_in_the_browser_then_kill_the_session(world: World) -> None:
    job, request_id = world.waiting_connect("alice")
    world.log_in_as(BOB)
    assert request_id in world.text("to-review")
    assert "alice" in world.text("to-review") and "0 of 1" in world.text("to-review")

    # The inbox updates itself: a request made now shows up without a reload.
    world.driver.execute_script("window.dbaccessNoReload = true;")
    other, other_id = world.waiting_connect("amy")
    world.wait(lambda d: other_id in d.find_element(By.ID, "inbox").text, timeout=15)
    assert world.driver.execute_script("return window.dbaccessNoReload === true;")
    world.screenshot("inbox.png")

    world.driver.find_element(By.LINK_TEXT, request_id).click()
    world.wait(lambda d: d.find_elements(By.ID, "approve"))
    assert world.text("requester") == "alice" and "INC-7" in world.text("reason")
    world.screenshot("detail.png")
    world.driver.find_element(By.NAME, "comment").send_keys("ok for INC-7")
    world.driver.find_element(By.ID, "approve").click()
    world.wait(lambda d: d.find_elements(By.ID, "done"))
    assert world.text("status") == "approved" and "bob@example.com approved" in world.text(
        "decisions"
    )

    job.expect(rf"request {request_id} approved by bob@example.com")
    job.expect(r"Ctrl-C")  # the session is open: connect proceeded

    # An admin kills it from the sessions page; the waiting connect learns at once.
    world.log_in_as(ROOT)
    world.driver.get(world.url("/ui/sessions"))
    row = world.driver.find_element(By.CSS_SELECTOR, "tr[data-session]")
    session_id = row.get_attribute("data-session")
    assert "alice" in row.text
    world.driver.find_element(By.ID, f"kill-{session_id}").click()
    world.wait(lambda d: d.find_elements(By.ID, "done"))
    rc, _out, err = job.finish(timeout=30)
    assert rc == 8, err

    world.driver.get(world.url(f"/ui/sessions/{session_id}/recording"))
    assert "killed by root@example.com" in world.driver.page_source
    assert world.driver.find_elements(By.ID, "timeline")
    world.driver.get(world.url("/ui/audit"))
    assert world.text("audit-result").startswith("Verified")

    # The other request is left to Slack: the stand-in got it with its buttons, and
    # bob's click, signed as Slack signs it, decides it through the broker.
    posted = world.slack.wait_for("chat.postMessage", 2)
    assert any(other_id in c.args["text"] for c in posted)
    body = block_actions("U0BOB", "dbaccess_approve", other_id)
    ca_file = json.loads((world.broker.config_dir / "profile.json").read_text())["ca_file"]
    ca = ssl.create_default_context(cafile=ca_file)
    url = world.url("/integrations/slack/interactions")
    headers = signed_headers(body)
    assert httpx.post(url, content=body, headers=headers, verify=ca).status_code == 200
    other.expect(rf"request {other_id} approved by bob@example.com")
    assert httpx.post(url, content=body, headers=headers, verify=ca).status_code == 401  # replay
    stale = signed_headers(body, timestamp=int(time.time()) - 400)
    assert httpx.post(url, content=body, headers=stale, verify=ca).status_code == 401
    other.proc.terminate()
    other.finish(timeout=30)


def test_deny_with_a_reason_in_the_browser(world: World) -> None:
    job, request_id = world.waiting_connect("alex")
    world.log_in_as(BOB)
    world.driver.get(world.url(f"/ui/requests/{request_id}"))
    world.driver.find_element(By.ID, "deny-reason").send_keys("use the read scope")
    world.driver.find_element(By.ID, "deny").click()
    world.wait(lambda d: d.find_elements(By.ID, "done"))
    assert world.text("status") == "denied" and "use the read scope" in world.text("decisions")
    rc, _out, err = job.finish(timeout=30)
    assert rc == 10 and "use the read scope" in err, err


def test_statement_review_shows_the_exact_statement_and_its_hash(world: World) -> None:
    statement = "UPDATE customers SET city = 'Paris' WHERE id = 7;\nDELETE FROM orders WHERE id < 3"
    client = world.broker.client(world.broker.token("ada", "dev"))
    made = client.request(
        "POST", "/v1/reviews", json={"target": "demo", "scope": "write", "statement": statement}
    )["request"]
    world.log_in_as(BOB)
    world.driver.get(world.url(f"/ui/requests/{made['id']}"))
    assert world.text("statement") == statement
    assert world.text("sha256") == made["statement_sha256"]
    assert world.driver.find_elements(By.CSS_SELECTOR, "#statement .sql-kw")
    analysis = world.text("analysis")
    assert "public.customers" in analysis and "public.orders" in analysis
    world.screenshot("detail-statement.png")


def teardown_module() -> None:
    # Only the screenshots are kept; a half-written folder from a failed run is not.
    if ARTIFACTS.exists() and not any(ARTIFACTS.iterdir()):
        shutil.rmtree(ARTIFACTS)
