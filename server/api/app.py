"""The broker's HTTP JSON API (ASGI, FastAPI).

Routes are thin: they authenticate the bearer token, call the session service
or the audit log, and translate ``DbaccessError`` into a JSON error body with
the matching HTTP status.  Endpoints are synchronous on purpose: the issuers use
blocking database drivers, and FastAPI runs sync endpoints in its thread pool,
off the event loop the gateway shares.
"""

from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from common.validation import validation_message
from server.api import (
    access_routes,
    auth_routes,
    ops_routes,
    recordings_routes,
    requests_routes,
)
from server.api.common import is_admin, may_audit, parse_ttl, parse_when, target_listing
from server.audit import chain
from server.errors import (
    Conflict,
    DbaccessError,
    Forbidden,
    InvalidInput,
    NotFound,
)
from server.policy.evaluate import Identity
from server.sessions.service import SessionService


@dataclass(frozen=True)
class GatewayInfo:
    host: str
    port: int
    tls: bool
    ca_fingerprint: str | None = None


class SessionRequest(BaseModel):
    target: str = Field(min_length=1, max_length=200)
    scope: str | None = Field(default=None, max_length=200)
    ttl: str | None = Field(default=None, max_length=20)
    reason: str | None = Field(default=None, max_length=2000)
    client: dict[str, str] | None = None
    break_glass: bool = False
    request_id: str | None = Field(default=None, max_length=32)


def create_app(
    service: SessionService,
    gateway: GatewayInfo,
    auth: auth_routes.AuthSettings | None = None,
) -> FastAPI:
    app = FastAPI(title="dbaccess broker", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(DbaccessError)
    async def _dbaccess_error(_req: Request, exc: DbaccessError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        # The same one-line error body as every other refusal, not pydantic's list.
        error = InvalidInput(validation_message(exc.errors()))
        return JSONResponse(error.to_json(), status_code=error.http_status)

    def identity(authorization: Annotated[str | None, Header()] = None) -> Identity:
        rec = auth_routes.authenticate(service.store, authorization)
        return Identity(
            name=rec.identity, groups=frozenset(rec.groups), kind=rec.kind, owner=rec.owner
        )

    Caller = Annotated[Identity, Depends(identity)]

    auth_routes.register(app, service, auth)
    requests_routes.register(app, service, identity)
    recordings_routes.register(app, service, identity)
    access_routes.register(app, service, identity)
    ops_routes.register(app, service)

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/targets")
    def targets(who: Caller) -> list[dict[str, Any]]:
        return target_listing(service.policy, who)

    @app.post("/v1/sessions", status_code=201)
    def start_session(body: SessionRequest, who: Caller) -> dict[str, Any]:
        record, ticket = service.start(
            who,
            body.target,
            body.scope,
            parse_ttl(body.ttl),
            body.reason,
            body.client,
            break_glass=body.break_glass,
            request_id=body.request_id,
        )
        return {
            "session": record.to_json(),
            "ticket": ticket,
            "database": service.database_of(record),
            "gateway": asdict(gateway),
        }

    def visible_session(session_id: str, who: Identity) -> Any:
        record = service.store.get_session(session_id)
        if record is None or (record.identity != who.name and not is_admin(who)):
            raise NotFound(f"unknown session {session_id!r}", hint="list yours: dbaccess sessions")
        return record

    @app.get("/v1/sessions")
    def list_sessions(
        who: Caller, active: bool | None = None, all: bool = False, limit: int = 50
    ) -> list[dict[str, Any]]:
        if all and not is_admin(who):
            raise Forbidden("only admins may list every session")
        ident = None if all else who.name
        return [
            r.to_json()
            for r in service.store.list_sessions(identity=ident, active=active, limit=limit)
        ]

    @app.get("/v1/sessions/{session_id}")
    def get_session(session_id: str, who: Caller) -> dict[str, Any]:
        return dict(visible_session(session_id, who).to_json())

    @app.delete("/v1/sessions/{session_id}")
    def end_session(session_id: str, who: Caller) -> dict[str, Any]:
        record = visible_session(session_id, who)
        if record.status != "active":
            # Ending is not repeated: `dbaccess kill` on a session that is over says so.
            ended = f" at {record.ended_at:%Y-%m-%d %H:%M:%S} UTC" if record.ended_at else ""
            why = f": {record.end_reason}" if record.end_reason else ""
            raise Conflict(
                f"session {session_id} has already ended ({record.status}{ended}{why})",
                hint="dbaccess sessions --active lists the running ones",
            )
        own = record.identity == who.name
        status, reason = (
            ("ended", "client ended the session") if own else ("killed", f"killed by {who.name}")
        )
        return dict(service.end(session_id, status=status, reason=reason, actor=who.name).to_json())

    @app.get("/v1/audit")
    def audit_events(
        who: Caller,
        identity: str | None = None,
        target: str | None = None,
        since: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        if not may_audit(who):
            raise Forbidden("reading the audit log needs the admin or auditor group")
        service.audit.flush()  # what the gateway decided is what is read
        return [
            e.to_json()
            for e in chain.events(
                service.store,
                identity=identity,
                target=target,
                since=parse_when(since, "since", direction="ago"),
                limit=limit,
            )
        ]

    @app.get("/v1/audit/verify")
    def audit_verify(who: Caller) -> dict[str, Any]:
        if not may_audit(who):
            raise Forbidden("verifying the audit log needs the admin or auditor group")
        service.audit.flush()
        return recordings_routes.verify_audit(service)

    return app
