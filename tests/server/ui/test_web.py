"""The web inbox's pages over HTTP: login, sessions and CSRF, headers, who may see and
decide what, and bad input (double submits, races, expiry) leaving requests right.

The pages run on the broker's real FastAPI app and session service with a
SQLite store, through Starlette's test client over ``https://`` (the session
cookie is ``Secure``).  People log in with the dev mode's one-click login,
and once through the loopback OIDC provider (``tests/fix_oidc.py``) with the
authorization code flow and PKCE.  The browser itself is tested in
``test_web_browser_e2e.py``.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from server.api.app import GatewayInfo, create_app
from server.approvals.machine import Status
from server.audit import chain
from server.config import OidcConfig
from server.gateway.guardrails import statement_sha256
from server.policy import Identity, parse_policy
from server.sessions.service import SessionService
from server.store.db import Store
from server.ui import security
from server.ui.highlight import highlight, pieces
from server.ui.web import UiSettings, register
from tests.fix_oidc import CLIENT_ID, OidcProvider

POLICY = textwrap.dedent(
    """\
    version: 1
    groups:
      dba: [bob, carol]
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
    """
)
LOGINS = (
    ("alice", ("dev",)),
    ("bob", ("dev",)),
    ("carol", ("dev",)),
    ("audrey", ("auditor",)),
    ("root", ("admin",)),
)
ALICE = Identity("alice", frozenset({"dev"}))
STATEMENT = "UPDATE public.accounts SET balance = 0 WHERE id = 7; -- fix\nSELECT 'a<b>' AS x"


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Site:
    def __init__(self, service: SessionService, settings: UiSettings) -> None:
        self.service = service
        app = create_app(service, GatewayInfo("127.0.0.1", 1, tls=True))
        register(app, service, settings)
        self.app = app

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="https://testserver", follow_redirects=False)

    def login(self, identity: str) -> TestClient:
        http = self.client()
        page = http.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        done = http.post("/ui/login/dev", data={"csrf": csrf, "identity": identity, "next": "/ui/"})
        assert done.status_code == 303 and done.headers["location"] == "/ui/"
        return http

    def request(self, scope: str = "write", statement: str | None = None) -> str:
        approvals = self.service.approvals
        if statement is None:
            return approvals.create(ALICE, "demo", scope, None, "INC-9")[0].id
        rule = self.service.policy.targets["demo"].scopes[scope].approval
        made, _ = approvals.request_statement(
            requester="alice", groups=frozenset({"dev"}), target="demo", scope=scope,
            reason="fix balance", statement=statement, sha256=statement_sha256(statement, ()),
            rule=rule, ttl=timedelta(minutes=15), guardrail="review.requested",
        )  # fmt: skip
        return made.id

    def status(self, request_id: str) -> Status:
        found = self.service.approvals.repo.get(request_id)
        assert found is not None
        return found.status


def csrf_of(page: httpx.Response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    path: Path = tmp_path_factory.mktemp("ui") / "store.db"
    store = Store.open(f"sqlite:///{path}")
    service = SessionService(store, parse_policy(POLICY, "policy.yaml"))
    service.approvals.clock = Clock()
    try:
        yield Site(service, UiSettings(dev_logins=LOGINS))
    finally:
        store.close()


# -- every page needs a session; every form its CSRF token ----------------------------
PAGES = [
    "/ui/",
    "/ui/inbox/rows",
    "/ui/requests/r-000000000000",
    "/ui/sessions",
    "/ui/sessions/s-000000000000/recording",
    "/ui/audit",
]
FORMS = [
    "/ui/requests/{r}/approve",
    "/ui/requests/{r}/deny",
    "/ui/sessions/s-000000000000/kill",
    "/ui/logout",
]


# Reachable without a session on purpose: logging in, and the script and style sheet.
PUBLIC = {
    "/ui",
    "/ui/login",
    "/ui/login/oidc",
    "/ui/callback",
    "/ui/login/dev",
    "/ui/static/{name}",
}


def test_every_ui_route_is_in_one_of_the_lists_below(site: Site) -> None:
    """A new page or form must be added to PAGES or FORMS (and so to the tests below)."""
    placeholders = {"{request_id}": "{r}", "{session_id}": "s-000000000000"}
    listed = {re.sub(r"r-0+", "{r}", p) for p in PAGES} | set(FORMS) | PUBLIC
    for route in site.app.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/ui"):
            continue
        for name, value in placeholders.items():
            path = path.replace(name, value)
        assert re.sub(r"s-0+", "s-000000000000", path) in listed, path


@pytest.mark.parametrize("path", PAGES)
def test_pages_without_a_session_redirect_to_login(site: Site, path: str) -> None:
    answer = site.client().get(path)
    assert answer.status_code == 303
    target = urlsplit(answer.headers["location"])
    assert target.path == "/ui/login" and parse_qs(target.query)["next"] == [path]
    # A cookie that is not a live web session is no session either.
    forged = site.client()
    forged.cookies.set(security.SESSION_COOKIE, "dba_made-up", domain="testserver")
    assert forged.get(path).status_code == 303


@pytest.mark.parametrize("path", FORMS)
def test_forms_without_a_session_redirect_to_login(site: Site, path: str) -> None:
    rid = site.request()
    answer = site.client().post(path.format(r=rid), data={"reason": "x"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert site.status(rid) is Status.PENDING


@pytest.mark.parametrize("path", FORMS)
@pytest.mark.parametrize("csrf", [None, "", "0" * 64, "other-session"])
def test_forms_without_the_sessions_csrf_token_are_refused(
    site: Site, path: str, csrf: str | None
) -> None:
    rid = site.request()
    root = site.login("root")
    form = {"reason": "no", "comment": "ok"}
    if csrf == "other-session":
        form["csrf"] = csrf_of(site.login("bob").get("/ui/"))
    elif csrf is not None:
        form["csrf"] = csrf
    answer = root.post(path.format(r=rid), data=form)
    assert answer.status_code == 403 and "CSRF" in answer.text
    assert site.status(rid) is Status.PENDING
    assert root.get("/ui/").status_code == 200  # not logged out either


def test_dev_login_needs_its_own_csrf_token_and_a_listed_identity(site: Site) -> None:
    http = site.client()
    http.get("/ui/login")
    assert http.post("/ui/login/dev", data={"identity": "root"}).status_code == 403
    page = http.get("/ui/login")
    refused = http.post("/ui/login/dev", data={"csrf": csrf_of(page), "identity": "mallory"})
    assert refused.status_code == 403
    assert security.SESSION_COOKIE not in http.cookies


def test_session_cookie_and_page_headers(site: Site) -> None:
    http = site.client()
    page = http.get("/ui/login")
    csrf = csrf_of(page)
    done = http.post("/ui/login/dev", data={"csrf": csrf, "identity": "bob"})
    cookie = next(
        c for c in done.headers.get_list("set-cookie") if c.startswith(security.SESSION_COOKIE)
    )
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    assert "domain" not in attributes  # a __Host- cookie names no domain

    rid = site.request(statement=STATEMENT + " -- headers")
    detail = http.get(f"/ui/requests/{rid}")
    assert detail.status_code == 200
    csp = detail.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert detail.headers["cache-control"] == "no-store"
    assert detail.headers["x-frame-options"] == "DENY"
    assert detail.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in detail.text and " style=" not in detail.text
    assert http.get("/ui/login").headers["cache-control"] == "no-store"


# -- who sees and decides what ------------------------------------------------------------
def test_reviewer_sees_the_exact_statement_its_hash_and_the_analysis(site: Site) -> None:
    rid = site.request(statement=STATEMENT)
    bob = site.login("bob")
    inbox = bob.get("/ui/")
    assert rid in inbox.text and "alice" in inbox.text and "0 of 1" in inbox.text
    page = bob.get(f"/ui/requests/{rid}")
    assert page.status_code == 200
    assert str(highlight(STATEMENT)) in page.text
    assert statement_sha256(STATEMENT, ()) in page.text
    analysis = page.text.split('id="analysis"')[1].split("</table>")[0]
    assert "public.accounts" in analysis and "UPDATE" in analysis and "SELECT" in analysis
    assert re.search(r'id="filter-columns">id<', page.text)
    assert 'id="approve-form"' in page.text and 'id="deny-form"' in page.text


def test_auditor_sees_but_may_not_decide(site: Site) -> None:
    rid = site.request(statement=STATEMENT + " -- audited")
    audrey = site.login("audrey")
    assert rid in audrey.get("/ui/").text
    page = audrey.get(f"/ui/requests/{rid}")
    assert page.status_code == 200 and "approve-form" not in page.text
    assert "may see this request but not decide" in page.text
    forced = audrey.post(f"/ui/requests/{rid}/approve", data={"csrf": csrf_of(page)})
    assert forced.status_code in (403, 404)
    assert site.status(rid) is Status.PENDING
    assert audrey.get("/ui/sessions").status_code == 200
    assert "Verified" in audrey.get("/ui/audit").text
    killed = audrey.post("/ui/sessions/s-1/kill", data={"csrf": csrf_of(page)})
    assert killed.status_code == 403


def test_people_outside_the_rule_see_nothing(site: Site) -> None:
    rid = site.request(statement=STATEMENT + " -- private")
    mallory = site.login("alice")  # the requester sees theirs, but cannot decide it
    own = mallory.get(f"/ui/requests/{rid}")
    assert own.status_code == 200 and "your own request" in own.text
    refused = mallory.post(f"/ui/requests/{rid}/approve", data={"csrf": csrf_of(own)})
    assert refused.status_code == 403 and "own request" in refused.text
    assert site.status(rid) is Status.PENDING
    assert mallory.get("/ui/sessions").status_code == 403
    assert mallory.get("/ui/audit").status_code == 403


# -- deciding: the approvals service's rules, bad input losing nothing ------------------
def test_approve_then_double_submit_counts_once(site: Site) -> None:
    rid = site.request()
    bob = site.login("bob")
    page = bob.get(f"/ui/requests/{rid}")
    form = {"csrf": csrf_of(page), "comment": "looks fine"}
    first = bob.post(f"/ui/requests/{rid}/approve", data=form)
    assert first.status_code == 303 and first.headers["location"].endswith("?done=approved")
    again = bob.post(f"/ui/requests/{rid}/approve", data=form)
    assert again.status_code == 409 and 'id="problem"' in again.text
    request = site.service.approvals.repo.get(rid)
    assert request is not None and request.status is Status.APPROVED
    assert [a.comment for a in request.approvals] == ["looks fine"]
    shown = bob.get(f"/ui/requests/{rid}?done=approved")
    assert "bob approved" in shown.text and "looks fine" in shown.text


def test_deny_needs_a_reason(site: Site) -> None:
    rid = site.request()
    carol = site.login("carol")
    csrf = csrf_of(carol.get(f"/ui/requests/{rid}"))
    empty = carol.post(f"/ui/requests/{rid}/deny", data={"csrf": csrf, "reason": "  "})
    assert empty.status_code == 400 and "reason is required" in empty.text
    assert site.status(rid) is Status.PENDING
    done = carol.post(f"/ui/requests/{rid}/deny", data={"csrf": csrf, "reason": "use read"})
    assert done.status_code == 303 and site.status(rid) is Status.DENIED
    assert "use read" in carol.get(f"/ui/requests/{rid}").text


def test_two_reviewers_at_once_grant_once(site: Site) -> None:
    rid = site.request()
    people = [site.login(name) for name in ("bob", "carol")]
    forms = [{"csrf": csrf_of(p.get(f"/ui/requests/{rid}"))} for p in people]
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def approve(http: TestClient, form: dict[str, Any]) -> None:
        barrier.wait()
        codes.append(http.post(f"/ui/requests/{rid}/approve", data=form).status_code)

    threads = [
        threading.Thread(target=approve, args=pair) for pair in zip(people, forms, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [303, 409]
    request = site.service.approvals.repo.get(rid)
    assert request is not None and request.status is Status.APPROVED and len(request.approvals) == 1


def test_approval_a_second_after_expiry_is_refused(site: Site) -> None:
    rid = site.request()
    bob = site.login("bob")
    csrf = csrf_of(bob.get(f"/ui/requests/{rid}"))
    request = site.service.approvals.repo.get(rid)
    assert request is not None
    clock = site.service.approvals.clock
    assert isinstance(clock, Clock)
    clock.offset = request.expires_at - datetime.now(UTC) + timedelta(seconds=1)
    try:
        late = bob.post(f"/ui/requests/{rid}/approve", data={"csrf": csrf})
    finally:
        clock.offset = timedelta(0)
    assert late.status_code == 409 and "expired" in late.text
    assert site.status(rid) is Status.EXPIRED


def test_logout_ends_the_session(site: Site) -> None:
    bob = site.login("bob")
    csrf = csrf_of(bob.get("/ui/"))
    assert bob.post("/ui/logout", data={"csrf": csrf}).status_code == 303
    assert bob.get("/ui/").status_code == 303
    kinds = [e.kind for e in chain.events(site.service.store)]
    assert "logout" in kinds


def test_inbox_rows_fragment_is_marked(site: Site) -> None:
    rid = site.request(statement="select 1 -- fragment")
    rows = site.login("bob").get("/ui/inbox/rows")
    assert rows.headers["x-dbaccess-fragment"] == "inbox" and rid in rows.text
    assert "<html" not in rows.text


# -- login at the identity provider: authorization code + PKCE -------------------------
def test_oidc_login_with_pkce(tmp_path: Path, oidc_provider: OidcProvider) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        service = SessionService(store, parse_policy(POLICY, "policy.yaml"))
        oidc = OidcConfig(issuer=oidc_provider.issuer, client_id=CLIENT_ID)
        base = "https://127.0.0.1:8443"
        site = Site(service, UiSettings(oidc=oidc, public_url=base))
        http = site.client()
        assert "login-oidc" in http.get("/ui/login?next=/ui/audit").text
        out = http.get("/ui/login/oidc", params={"next": "/ui/sessions"})
        assert out.status_code == 302
        query = parse_qs(urlsplit(out.headers["location"]).query)
        assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [
            f"{base}/ui/callback"
        ]
        assert "code_verifier" not in out.headers["location"]
        back = httpx.get(out.headers["location"], follow_redirects=False)
        callback = urlsplit(back.headers["location"])
        assert f"{callback.scheme}://{callback.netloc}" == base

        # The state must be this browser's: another one's is refused.
        stranger = site.client()
        stranger.get("/ui/login/oidc")
        assert stranger.get(f"/ui/callback?{callback.query}").status_code == 401

        done = http.get(f"/ui/callback?{callback.query}")
        assert done.status_code == 200 and 'href="/ui/sessions"' in done.text
        inbox = http.get("/ui/")
        assert inbox.status_code == 200 and "alice@example.com" in inbox.text
        # The same code again: no login is in progress any more.
        assert http.get(f"/ui/callback?{callback.query}").status_code == 401
        login = [e for e in chain.events(store) if e.kind == "login"]
        assert login[-1].identity == "alice@example.com" and login[-1].data["method"] == "web-oidc"
    finally:
        store.close()


# -- pure pieces --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql",
    [
        STATEMENT,
        'select $1, $$a\'b$$, $tag$ x $tag$, E\'\\n\', "Quoted""Name" /* c */ from t',
        "unterminated 'string",
        "/* open comment",
        "<script>alert(1)</script>",
        "",
    ],
)
def test_highlight_keeps_the_exact_text(sql: str) -> None:
    assert "".join(text for _, text in pieces(sql)) == sql
    html = str(highlight(sql))
    assert "<script>" not in html
    unescaped = re.sub(r"<[^>]+>", "", html)
    for entity, char in (
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&#34;", '"'),
        ("&#39;", "'"),
        ("&amp;", "&"),
    ):
        unescaped = unescaped.replace(entity, char)
    assert unescaped == sql


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "/ui/"),
        ("/ui/requests/r-1", "/ui/requests/r-1"),
        ("https://evil.example/ui/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/v1/targets", "/ui/"),
        ("/ui/\\evil", "/ui/"),
    ],
)
def test_safe_next(given: str | None, expected: str) -> None:
    assert security.safe_next(given) == expected


# Characters that show nothing or reorder what follows (Trojan Source): a
# reviewer would approve text that reads differently from what runs.
@pytest.mark.parametrize(
    "char", ["\u202e", "\u2066", "\u2069", "\u200b", "\u200d", "\u00ad", "\ufeff", "\x1b", "\u00a0"]
)
@pytest.mark.parametrize("where", ["select 1 /*{}*/", "select '{}'", "select 1{} as x"])
def test_highlight_shows_invisible_and_reordering_characters(char: str, where: str) -> None:
    sql = where.format(char)
    html = str(highlight(sql))
    assert char not in html
    assert f"U+{ord(char):04X}" in html
    assert 'class="sql-invisible"' in html


def test_an_oidc_login_under_an_agents_name_is_refused(
    tmp_path: Path, oidc_provider: OidcProvider
) -> None:
    # The provider says alice@example.com; the broker knows that name as an
    # agent's: a web session under it would decide as a person.
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        store.create_token("alice@example.com", ("dba",), "agent", None, owner="bob")
        service = SessionService(store, parse_policy(POLICY, "policy.yaml"))
        oidc = OidcConfig(issuer=oidc_provider.issuer, client_id=CLIENT_ID)
        site = Site(service, UiSettings(oidc=oidc, public_url="https://127.0.0.1:8443"))
        http = site.client()
        out = http.get("/ui/login/oidc")
        back = httpx.get(out.headers["location"], follow_redirects=False)
        done = http.get(f"/ui/callback?{urlsplit(back.headers['location']).query}")
        assert done.status_code == 409 and "agent" in done.text
        assert "__Host-dbaccess-ui" not in done.headers.get("set-cookie", "")
        assert http.get("/ui/").status_code == 303
        assert [t.kind for t in store.list_tokens()] == ["agent"]
    finally:
        store.close()


def test_a_form_looks_its_session_up_off_the_event_loop(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API shares its event loop with the gateway's connections: the session
    cookie's lookup in the store (across the network on a PostgreSQL store) runs
    in a thread, as every other store call of the web inbox does."""
    bob = site.login("bob")
    csrf = csrf_of(bob.get("/ui/"))
    store = site.service.store
    on_loop: list[bool] = []
    find_token = store.find_token

    def looked_up(secret: str) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return find_token(secret)

    monkeypatch.setattr(store, "find_token", looked_up)
    rid = site.request()
    assert bob.post(f"/ui/requests/{rid}/deny", data={"csrf": csrf}).status_code == 400
    assert on_loop and not any(on_loop)
