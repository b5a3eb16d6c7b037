"""The reviewers' web inbox: server-rendered pages under ``/ui/`` on the API listener.

Pages (Jinja2 templates in ``templates/``, one small script and one style sheet
in ``static/``, nothing from elsewhere):

- ``/ui/login``: log in at the broker's identity provider (``/ui/login/oidc`` →
  the provider → ``/ui/callback``, see :mod:`server.ui.login`), or in the dev
  mode with one click per dev identity (``POST /ui/login/dev``);
- ``/ui/``: the inbox, the requests and statement reviews this person may
  decide (and their own pending ones; everything pending for admins and
  auditors), refreshed in place by ``static/ui.js`` from ``/ui/inbox/rows``;
- ``/ui/requests/{id}``: the request, the exact statement highlighted with its
  SHA-256 and what the analysis says it reads and writes, earlier decisions,
  and the approve/deny forms;
- for admins and auditors: ``/ui/sessions`` (live sessions; admins kill them),
  ``/ui/sessions/{id}/recording`` (a recording as a timeline) and ``/ui/audit``
  (the audit chain's verification).

Decisions go through the same :class:`~server.approvals.service.Approvals` as
the CLI's, so self-approval, N-of-M, single use and expiry hold the same way
and a double submit or two reviewers at once are settled by its
compare-and-set.  A page without a session redirects to the login page; a
state-changing form without the session's CSRF token is refused (403), before
anything is read from it.  The session is a broker token of kind ``web`` held
in an HttpOnly, Secure, SameSite=Strict ``__Host-`` cookie (logout revokes it);
every page carries a strict Content-Security-Policy (no inline script or style,
no framing) and ``Cache-Control: no-store``.  See :mod:`server.ui.security`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from common.durations import format_duration
from server.api.common import is_admin, may_audit
from server.approvals.machine import Request as AccessRequest
from server.approvals.machine import Status, may_review
from server.audit import chain, recording
from server.config import OidcConfig
from server.errors import DbaccessError, NotAuthenticated, NotFound
from server.identity.oidc import Verifier, person_from_claims
from server.policy.evaluate import Identity
from server.sessions.service import SessionService
from server.store.db import hash_secret, utcnow
from server.ui import security
from server.ui.highlight import highlight
from server.ui.login import LOGIN_TTL_SECONDS, OidcLogin, PendingLogin

MAX_FORM_BYTES = 64 * 1024
INBOX_LIMIT = 1000
# A web session without an identity provider's token_ttl (the dev mode's).
UI_SESSION_TTL = timedelta(hours=8)
WEB_TOKEN_KIND = "web"  # noqa: S105 (a kind of token, not one)
_STATIC = {"ui.js": "text/javascript", "ui.css": "text/css"}


@dataclass(frozen=True)
class UiSettings:
    """How people log in to the inbox.

    ``dev_logins`` (identity, groups) pairs get a one-click login button: only
    the dev mode sets them.  ``public_url`` is where browsers reach the broker
    (the OIDC redirect URI is built from it; default: the URL of the request).
    """

    oidc: OidcConfig | None = None
    dev_logins: tuple[tuple[str, tuple[str, ...]], ...] = ()
    public_url: str | None = None
    session_ttl: timedelta = UI_SESSION_TTL
    poll_seconds: float = 2.0
    verifier: Verifier | None = None


@dataclass(frozen=True)
class Viewer:
    identity: Identity
    token_id: str
    csrf: str

    @property
    def admin(self) -> bool:
        return is_admin(self.identity)

    @property
    def auditor(self) -> bool:
        return may_audit(self.identity)


@dataclass(frozen=True, slots=True)
class InboxRow:
    """One line of the inbox (attributes, not a dict: templates read them many times)."""

    id: str
    kind: str
    requester: str
    target: str
    scope: str
    age: str
    progress: str
    reason: str
    preview: str


class _LoginNeeded(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


# -- small pure helpers ----------------------------------------------------------------
def ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def when_text(when: datetime | None) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC" if when else "-"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("server.ui", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when_text
    env.filters["duration"] = format_duration
    return env


def _page_headers(response: Response) -> Response:
    response.headers.update(security.PAGE_HEADERS)
    return response


def _redirect(url: str) -> Response:
    return _page_headers(RedirectResponse(url, status_code=303))


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {key: values[0] for key, values in parsed.items()}


class WebInbox:
    """The pages' logic over the session service; :func:`register` adds the routes."""

    def __init__(self, service: SessionService, settings: UiSettings) -> None:
        self.service = service
        self.settings = settings
        self.store = service.store
        self.approvals = service.approvals
        self.env = _environment()
        self.verifier = settings.verifier or Verifier()
        self.oidc = OidcLogin(settings.oidc, self.verifier) if settings.oidc else None

    # -- sessions ---------------------------------------------------------------------
    def viewer(self, request: Request) -> Viewer | None:
        secret = request.cookies.get(security.SESSION_COOKIE)
        if not secret:
            return None
        rec = self.store.find_token(secret)
        if rec is None or rec.kind != WEB_TOKEN_KIND or rec.revoked_at is not None:
            return None
        if rec.expires_at is not None and rec.expires_at <= utcnow():
            return None
        identity = Identity(rec.identity, frozenset(rec.groups))
        return Viewer(identity, rec.id, security.csrf_token(secret))

    def need(self, request: Request) -> Viewer:
        viewer = self.viewer(request)
        if viewer is None:
            path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise _LoginNeeded(path)
        return viewer

    def open_session(
        self, response: Response, identity: str, groups: tuple[str, ...], login: dict[str, Any]
    ) -> None:
        secret, rec = self.store.create_token(
            identity, groups, WEB_TOKEN_KIND, self.settings.session_ttl
        )
        chain.append(self.store, "login", identity=identity, data={**login, "session": rec.id})
        response.set_cookie(
            security.SESSION_COOKIE,
            secret,
            max_age=int(self.settings.session_ttl.total_seconds()),
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url).rstrip("/")

    # -- rendering --------------------------------------------------------------------
    def render(
        self, name: str, viewer: Viewer | None, status: int = 200, **context: Any
    ) -> Response:
        html = self.env.get_template(name).render(viewer=viewer, **context)
        return _page_headers(HTMLResponse(html, status_code=status))

    def error(
        self, viewer: Viewer | None, status: int, message: str, hint: str | None = None
    ) -> Response:
        return self.render("error.html", viewer, status, message=message, hint=hint)

    # -- the inbox --------------------------------------------------------------------
    def inbox(self, viewer: Viewer) -> dict[str, Any]:
        who = viewer.identity
        now = utcnow()
        review = self.approvals.find(who, admin=viewer.admin, to_review=True, limit=INBOX_LIMIT)
        mine = self.approvals.find(who, mine=True, pending=True, limit=100)
        others: list[AccessRequest] = []
        if viewer.admin or viewer.auditor:
            shown = {r.id for r in review} | {r.id for r in mine}
            everything = self.approvals.find(
                who, admin=viewer.admin, auditor=viewer.auditor, pending=True, limit=INBOX_LIMIT
            )
            others = [r for r in everything if r.id not in shown]
        return {
            "review": [self.row(r, now) for r in review],
            "mine": [self.row(r, now) for r in mine],
            "others": [self.row(r, now) for r in others],
            "poll_ms": int(self.settings.poll_seconds * 1000),
        }

    @staticmethod
    def row(r: AccessRequest, now: datetime) -> InboxRow:
        statement = r.statement or ""
        return InboxRow(
            id=r.id,
            kind="statement" if r.statement is not None else "access",
            requester=r.requester,
            target=r.target,
            scope=r.scope,
            age=ago(r.created_at, now),
            progress=f"{len(r.approvals)} of {r.rule.min_approvals}",
            reason=r.reason or "",
            preview=statement[:80] + ("…" if len(statement) > 80 else ""),
        )

    # -- one request ------------------------------------------------------------------
    def detail(self, viewer: Viewer, request_id: str) -> dict[str, Any]:
        who = viewer.identity
        r = self.approvals.get(request_id, who, admin=viewer.admin, auditor=viewer.auditor)
        actor = self.approvals.actor(who, admin=viewer.admin)
        can_decide = (
            r.status is Status.PENDING
            and r.requester != who.name
            and (actor.admin or may_review(actor, self.approvals.rule_for(r)))
            and all(a.approver != who.name for a in r.approvals)
        )
        return {
            "r": r,
            "progress": f"{len(r.approvals)} of {r.rule.min_approvals}",
            "statement_html": highlight(r.statement) if r.statement is not None else None,
            "analysis": self.analysis(r),
            "filter_columns": self.filter_columns(r),
            "grants": self.grants(r),
            "can_decide": can_decide,
            "is_requester": r.requester == who.name,
        }

    def grants(self, r: AccessRequest) -> tuple[str, ...]:
        target = self.service.policy.targets.get(r.target)
        scope = target.scopes.get(r.scope) if target else None
        return scope.grants if scope else ()

    @staticmethod
    def analysis(r: AccessRequest) -> list[dict[str, Any]] | None:
        """What the gateway's analysis says each statement reads and writes."""
        if r.statement is None:
            return None
        from server.gateway.sqlcheck import analyze

        rows = []
        for s in analyze(r.statement).statements:
            rows.append(
                {
                    "index": s.index + 1,
                    "command": s.command or "?",
                    "kind": s.kind.value,
                    "reads": ", ".join(str(n) for n in s.reads) or "-",
                    "writes": ", ".join(str(n) for n in s.writes) or "-",
                    "where": {True: "yes", False: "no", None: "-"}[s.restricting_where],
                    "note": s.reason,
                }
            )
        return rows

    @staticmethod
    def filter_columns(r: AccessRequest) -> str | None:
        """The columns that decide which rows the statements touch (WHERE, JOIN, ...)."""
        if r.statement is None:
            return None
        from server.gateway.sqlcheck import predicate_columns

        found = predicate_columns(r.statement)
        if found is None:
            return "not known (the analysis could not read them)"
        return ", ".join(sorted(found)) or "none"

    # -- admins and auditors ---------------------------------------------------------
    def sessions(self) -> list[dict[str, Any]]:
        now = utcnow()
        return [
            {**rec.to_json(), "age": ago(rec.created_at, now), "expires": when_text(rec.expires_at)}
            for rec in self.store.list_sessions(active=True, limit=500)
        ]

    def timeline(self, viewer: Viewer, session_id: str) -> dict[str, Any]:
        record = self.store.get_session(session_id)
        if record is None or not (record.identity == viewer.identity.name or viewer.auditor):
            raise NotFound(f"unknown session {session_id!r}")
        info = recording.recording_info(self.store, session_id)
        events = recording.load_events(self.store, session_id, limit=5000)
        verified = None
        if info is not None and info.status != "open":
            verified = recording.verify_recording(self.store, info, events) is None
        start = record.created_at
        return {
            "session": record,
            "info": info,
            "verified": verified,
            "events": [
                {
                    "offset": f"{(e.ts - start).total_seconds():+.3f}s",
                    "kind": e.kind,
                    "text": e.data.get("text") or e.data.get("statement") or "",
                    "data": {k: v for k, v in e.data.items() if k not in ("text", "statement")},
                }
                for e in events
            ],
        }


def register(app: FastAPI, service: SessionService, settings: UiSettings) -> WebInbox:
    """Add the ``/ui/`` routes to ``app``."""
    web = WebInbox(service, settings)

    async def login_needed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _LoginNeeded)
        return _redirect(f"/ui/login?next={quote(exc.next_path, safe='')}")

    app.add_exception_handler(_LoginNeeded, login_needed)

    async def posted(
        request: Request, act: Callable[[Viewer, Mapping[str, str]], Response]
    ) -> Response:
        """A state-changing form: a session and its CSRF token first, then ``act``.
        The session is looked up in the store in a thread, as ``act`` runs: this
        loop serves the gateway's connections too."""
        viewer = await run_in_threadpool(web.viewer, request)
        if viewer is None:
            return _redirect("/ui/login")
        form = await _form(request)
        if not security.same_secret(viewer.csrf, form.get(security.CSRF_FIELD)):
            return web.error(viewer, 403, "this form is missing its CSRF token or it is wrong",
                             "reload the page and try again")  # fmt: skip
        return await run_in_threadpool(act, viewer, form)

    # -- login ---------------------------------------------------------------------
    @app.get("/ui", include_in_schema=False)
    def ui_root() -> Response:
        return _redirect("/ui/")

    @app.get("/ui/login", include_in_schema=False)
    def login_page(request: Request, next: str | None = None) -> Response:
        prelogin = security.new_secret()
        response = web.render(
            "login.html",
            None,
            oidc=settings.oidc,
            dev_logins=settings.dev_logins,
            next=security.safe_next(next),
            csrf=prelogin,
        )
        response.set_cookie(
            security.PRELOGIN_CSRF_COOKIE,
            prelogin,
            max_age=LOGIN_TTL_SECONDS,
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        return response

    @app.get("/ui/login/oidc", include_in_schema=False)
    def login_oidc(request: Request, next: str | None = None) -> Response:
        if web.oidc is None:
            return web.error(None, 404, "this broker has no identity provider for people")
        try:
            url, pending = web.oidc.start(
                web.base_url(request) + "/ui/callback", security.safe_next(next)
            )
        except DbaccessError as exc:
            return web.error(None, exc.http_status, exc.message, exc.hint)
        response = _page_headers(RedirectResponse(url, status_code=302))
        # Lax: it must come back with the provider's redirect, a cross-site navigation.
        response.set_cookie(
            security.LOGIN_COOKIE,
            pending.to_cookie(),
            max_age=LOGIN_TTL_SECONDS,
            path="/",
            secure=True,
            httponly=True,
            samesite="lax",
        )
        return response

    @app.get("/ui/callback", include_in_schema=False)
    def login_callback(
        request: Request, code: str | None = None, state: str | None = None
    ) -> Response:
        if web.oidc is None or settings.oidc is None:
            return web.error(None, 404, "this broker has no identity provider for people")
        pending = PendingLogin.from_cookie(request.cookies.get(security.LOGIN_COOKIE))
        address = request.client.host if request.client else None
        try:
            verified = web.oidc.finish(pending, state, code, web.base_url(request) + "/ui/callback")
            identity, groups = person_from_claims(
                verified.claims, settings.oidc.identity_claims, settings.oidc.groups_claim
            )
            key = hash_secret(f"{verified.issuer}\n{verified.jti or verified.subject}\n{code}")
            until = verified.expires_at + timedelta(seconds=web.verifier.leeway)
            if not web.store.use_once(key, kind="oidc", issuer=verified.issuer, expires_at=until):
                raise NotAuthenticated("this login was completed already (a replay)")
        except DbaccessError as exc:
            chain.append(
                web.store,
                "login.rejected",
                data={"method": "web-oidc", "reason": exc.message, "address": address},
            )
            return web.error(None, exc.http_status, exc.message, exc.hint)
        assert pending is not None
        # A page, not a redirect: the session cookie is SameSite=Strict, and a
        # redirect chain that began at the provider would not carry it yet.
        response = web.render("continue.html", None, next=security.safe_next(pending.next))
        response.delete_cookie(security.LOGIN_COOKIE, path="/", secure=True, httponly=True)
        login = {
            "method": "web-oidc",
            "issuer": verified.issuer,
            "subject": verified.subject,
            "address": address,
        }
        try:
            web.open_session(response, identity, groups, login)
        except DbaccessError as exc:  # a name the broker keeps for an agent
            return web.error(None, exc.http_status, exc.message, exc.hint)
        return response

    @app.post("/ui/login/dev", include_in_schema=False)
    async def login_dev(request: Request) -> Response:
        form = await _form(request)
        expected = request.cookies.get(security.PRELOGIN_CSRF_COOKIE)
        if not security.same_secret(expected, form.get(security.CSRF_FIELD)):
            return web.error(None, 403, "this form is missing its CSRF token or it is wrong",
                             "reload the login page and try again")  # fmt: skip
        found = dict(settings.dev_logins).get(form.get("identity", ""))
        if found is None:
            return web.error(None, 403, "no one-click login for that identity here")
        identity = form["identity"]
        response = _redirect(security.safe_next(form.get("next")))
        address = request.client.host if request.client else None
        await run_in_threadpool(
            web.open_session, response, identity, found, {"method": "web-dev", "address": address}
        )
        response.delete_cookie(security.PRELOGIN_CSRF_COOKIE, path="/", secure=True, httponly=True)
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        def act(viewer: Viewer, form: Mapping[str, str]) -> Response:
            web.store.revoke_token(viewer.token_id)
            chain.append(
                web.store, "logout", identity=viewer.identity.name, data={"id": viewer.token_id}
            )
            response = _redirect("/ui/login")
            response.delete_cookie(security.SESSION_COOKIE, path="/", secure=True, httponly=True)
            return response

        return await posted(request, act)

    # -- the inbox and the detail ----------------------------------------------------
    def timed(started: float, response: Response) -> Response:
        # The server's share of the answer (bench/ui_inbox.py reads it).
        spent = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={spent:.1f}"
        return response

    @app.get("/ui/", include_in_schema=False)
    def inbox_page(request: Request) -> Response:
        started = time.perf_counter()
        viewer = web.need(request)
        return timed(started, web.render("inbox.html", viewer, **web.inbox(viewer)))

    @app.get("/ui/inbox/rows", include_in_schema=False)
    def inbox_rows(request: Request) -> Response:
        started = time.perf_counter()
        viewer = web.need(request)
        response = web.render("inbox_rows.html", viewer, **web.inbox(viewer))
        response.headers["X-Dbaccess-Fragment"] = "inbox"
        return timed(started, response)

    @app.get("/ui/requests/{request_id}", include_in_schema=False)
    def detail_page(request: Request, request_id: str, done: str | None = None) -> Response:
        viewer = web.need(request)
        try:
            context = web.detail(viewer, request_id)
        except DbaccessError as exc:
            return web.error(viewer, exc.http_status, exc.message, exc.hint)
        return web.render("detail.html", viewer, done=done, **context)

    def decide(request_id: str, approve: bool) -> Callable[[Viewer, Mapping[str, str]], Response]:
        def act(viewer: Viewer, form: Mapping[str, str]) -> Response:
            who = viewer.identity
            text = (form.get("comment" if approve else "reason") or "").strip() or None
            try:
                if approve:
                    web.approvals.approve(request_id, who, text, admin=viewer.admin)
                else:
                    web.approvals.deny(request_id, who, text, admin=viewer.admin)
            except DbaccessError as exc:
                try:
                    context = web.detail(viewer, request_id)
                except DbaccessError:
                    return web.error(viewer, exc.http_status, exc.message, exc.hint)
                return web.render(
                    "detail.html", viewer, exc.http_status, problem=exc.message, **context
                )
            done = "approved" if approve else "denied"
            return _redirect(f"/ui/requests/{quote(request_id)}?done={done}")

        return act

    @app.post("/ui/requests/{request_id}/approve", include_in_schema=False)
    async def approve(request: Request, request_id: str) -> Response:
        return await posted(request, decide(request_id, True))

    @app.post("/ui/requests/{request_id}/deny", include_in_schema=False)
    async def deny(request: Request, request_id: str) -> Response:
        return await posted(request, decide(request_id, False))

    # -- admins and auditors -----------------------------------------------------------
    @app.get("/ui/sessions", include_in_schema=False)
    def sessions_page(request: Request, done: str | None = None) -> Response:
        viewer = web.need(request)
        if not viewer.auditor:
            return web.error(viewer, 403, "live sessions are for admins and auditors")
        return web.render("sessions.html", viewer, sessions=web.sessions(), done=done)

    @app.post("/ui/sessions/{session_id}/kill", include_in_schema=False)
    async def kill(request: Request, session_id: str) -> Response:
        def act(viewer: Viewer, form: Mapping[str, str]) -> Response:
            if not viewer.admin:
                return web.error(viewer, 403, "only admins may kill sessions")
            record = web.store.get_session(session_id)
            if record is None or record.status != "active":
                return web.error(viewer, 409, f"session {session_id} is not running")
            name = viewer.identity.name
            try:
                web.service.end(session_id, status="killed", reason=f"killed by {name}", actor=name)
            except DbaccessError as exc:
                return web.error(viewer, exc.http_status, exc.message, exc.hint)
            return _redirect(f"/ui/sessions?done={quote(session_id)}")

        return await posted(request, act)

    @app.get("/ui/sessions/{session_id}/recording", include_in_schema=False)
    def recording_page(request: Request, session_id: str) -> Response:
        viewer = web.need(request)
        try:
            context = web.timeline(viewer, session_id)
        except DbaccessError as exc:
            return web.error(viewer, exc.http_status, exc.message, exc.hint)
        return web.render("recording.html", viewer, **context)

    @app.get("/ui/audit", include_in_schema=False)
    def audit_page(request: Request) -> Response:
        viewer = web.need(request)
        if not viewer.auditor:
            return web.error(viewer, 403, "the audit log is for admins and auditors")
        from server.api.recordings_routes import verify_audit

        result = verify_audit(service)
        events = chain.events(web.store, since=utcnow() - timedelta(days=1))[-50:][::-1]
        return web.render("audit.html", viewer, result=result, events=events)

    @app.get("/ui/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        kind = _STATIC.get(name)
        if kind is None:
            return Response(status_code=404)
        body = resources.files("server.ui").joinpath("static", name).read_bytes()
        response = Response(body, media_type=kind)
        response.headers.update(security.PAGE_HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response

    return web
