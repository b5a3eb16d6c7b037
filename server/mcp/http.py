"""``/mcp`` on the broker's API listener: the agents' tools over streamable HTTP.

Each request carries a broker bearer token (``Authorization: Bearer dba_…``),
checked as every API call's is; only a token of kind ``agent`` is served (401
without a live token, 403 for any other kind), so the tools always act as an
agent, under the policy's ``agents`` rules.  The MCP SDK's session manager
runs stateless (every POST stands alone, answered as JSON); what lasts between
calls is each token's :class:`~common.mcp.tools.Tools` with its pool of open
database sessions.

:class:`ServiceBackend` gives the tools the broker's own services instead of
its HTTP API: sessions are started by the session service for the token's
identity (policy, approvals, recording) and reached through the broker's own
gateway with the session ticket, exactly as a client from outside would, so
the guardrails, masking, limits and recording apply unchanged.  Nothing here
opens a connection to a target other than through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.mcp.tools import DbSession, ToolError, Tools
from server.api.auth_routes import authenticate
from server.api.common import is_admin, target_listing
from server.approvals.service import request_json
from server.errors import DbaccessError
from server.policy.evaluate import Identity

if TYPE_CHECKING:
    import psycopg
    from fastapi import FastAPI
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.types import Receive, Scope, Send

    from server.sessions.service import SessionService

PATH = "/mcp"
_IDENTITY = "dbaccess.identity"
_TOKEN_ID = "dbaccess.token_id"  # noqa: S105 - a key of the ASGI scope


@dataclass(frozen=True)
class LocalGateway:
    """Where the broker's own gateway listens, and how to reach it (TLS or not)."""

    host: str
    port: int
    tls: bool
    ca_file: str | None = None


def _tool_error(exc: DbaccessError) -> ToolError:
    body = exc.to_json()
    extra = {k: v for k, v in body.items() if k not in ("message", "hint")}
    kind = extra.pop("error", None)
    if kind:
        extra["kind"] = kind
    return ToolError(exc.message, hint=exc.hint, **extra)


class ServiceBackend:
    """The tools' backend inside the broker: its services and its gateway."""

    def __init__(self, service: SessionService, who: Identity, gateway: LocalGateway) -> None:
        self.service = service
        self.who = who
        self.gateway = gateway

    def targets(self) -> list[dict[str, Any]]:
        return target_listing(self.service.policy, self.who)

    def start_session(self, target: str, scope: str | None, reason: str | None) -> DbSession:
        client = {"command": "mcp", "transport": "streamable-http"}
        try:
            record, ticket = self.service.start(self.who, target, scope, None, reason, client)
        except DbaccessError as exc:
            raise _tool_error(exc) from None
        database = self.service.database_of(record)
        return DbSession(
            id=record.id,
            target=record.target,
            scope=record.scope,
            expires_at=record.expires_at,
            handle=(record.identity, ticket, database),
        )

    def connect(self, session: DbSession) -> psycopg.Connection[Any]:
        import psycopg
        from psycopg.conninfo import make_conninfo

        identity, ticket, database = session.handle
        gw = self.gateway
        tls: dict[str, str] = {"sslmode": "disable"}
        if gw.tls:
            # The broker's own gateway, over loopback: its certificate names the
            # public host, so the CA is checked and not the name.
            tls = {"sslmode": "verify-ca", "sslrootcert": gw.ca_file} if gw.ca_file else {}
            tls.setdefault("sslmode", "require")
        conninfo = make_conninfo(
            host=gw.host,
            port=gw.port,
            user=identity,
            password=ticket,
            dbname=database,
            application_name="dbaccess mcp",
            connect_timeout=15,
            **tls,
        )
        return psycopg.connect(conninfo, autocommit=True)

    def end_session(self, session: DbSession) -> None:
        record = self.service.store.get_session(session.id)
        if record is None or record.status != "active":
            return
        try:
            self.service.end(session.id, actor=self.who.name)
        except DbaccessError as exc:
            raise _tool_error(exc) from None

    def why_ended(self, session: DbSession) -> str | None:
        record = self.service.store.get_session(session.id)
        if record is None or record.status == "active":
            return None
        return f"{record.status}: {record.end_reason}"

    def request_review(
        self, target: str, scope: str | None, statement: str, reason: str | None
    ) -> dict[str, Any]:
        from server.api.requests_routes import open_review

        try:
            request, created = open_review(self.service, self.who, target, scope, reason, statement)
        except DbaccessError as exc:
            raise _tool_error(exc) from None
        return {"request": request_json(request), "created": created}

    def request(self, request_id: str) -> dict[str, Any]:
        try:
            found = self.service.approvals.get(request_id, self.who, admin=is_admin(self.who))
        except DbaccessError as exc:
            raise _tool_error(exc) from None
        return request_json(found)


async def _refuse(send: Send, exc: DbaccessError) -> None:
    body = json.dumps(exc.to_json()).encode()
    headers = [(b"content-type", b"application/json")]
    if exc.http_status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="dbaccess"'))
    await send({"type": "http.response.start", "status": exc.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class McpEndpoint:
    """The ASGI endpoint at ``/mcp``: authenticates, then hands over to the SDK."""

    def __init__(self, service: SessionService, gateway: LocalGateway) -> None:
        from common.mcp.protocol import mcp_server

        self.service = service
        self.gateway = gateway
        self._tools: dict[str, Tools] = {}
        self._lock = threading.Lock()
        self.server = mcp_server(self._tools_for)
        self._manager: StreamableHTTPSessionManager | None = None
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def _tools_for(self, ctx: Any) -> Tools:
        request = ctx.request
        scope = request.scope if request is not None else {}
        who, token_id = scope.get(_IDENTITY), scope.get(_TOKEN_ID)
        if not isinstance(who, Identity) or not isinstance(token_id, str):
            raise ToolError("not authenticated", rule="mcp.not_authenticated")
        with self._lock:
            tools = self._tools.get(token_id)
            if tools is None:
                tools = self._tools[token_id] = Tools(
                    ServiceBackend(self.service, who, self.gateway)
                )
            return tools

    async def start(self) -> None:
        """Run the SDK's session manager (its task group) until :meth:`stop`."""
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        self._manager = StreamableHTTPSessionManager(
            app=self.server, stateless=True, json_response=True
        )
        started = asyncio.Event()

        async def run() -> None:
            assert self._manager is not None
            async with self._manager.run():
                started.set()
                await self._stop.wait()

        self._runner = asyncio.create_task(run())
        await started.wait()

    async def stop(self) -> None:
        self._stop.set()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner, 10)
        with self._lock:
            tools = list(self._tools.values())
            self._tools.clear()
        for t in tools:
            await asyncio.get_running_loop().run_in_executor(None, t.close)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._manager is None:
            await _refuse(send, _unavailable())
            return
        headers = dict(scope.get("headers") or ())
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        try:
            record = await asyncio.get_running_loop().run_in_executor(
                None, authenticate, self.service.store, authorization
            )
        except DbaccessError as exc:
            await _refuse(send, exc)
            return
        if record.kind != "agent":
            await _refuse(send, _not_an_agent(record.identity, record.kind))
            return
        scope[_IDENTITY] = Identity(
            name=record.identity,
            groups=frozenset(record.groups),
            kind=record.kind,
            owner=record.owner,
        )
        scope[_TOKEN_ID] = record.id
        await self._manager.handle_request(scope, receive, send)


def _unavailable() -> DbaccessError:
    from server.errors import Unavailable

    return Unavailable("the MCP endpoint is not running yet", hint="try again in a moment")


def _not_an_agent(identity: str, kind: str) -> DbaccessError:
    from server.errors import Forbidden

    return Forbidden(
        f"{identity} is not an agent identity (its token is of kind {kind!r})",
        hint="the MCP endpoint serves agent tokens: dbaccess-server token create --kind agent "
        "--owner PERSON --identity NAME",
    )


def register(app: FastAPI, service: SessionService, gateway: LocalGateway) -> McpEndpoint:
    """Serve the agents' tools at ``/mcp``; the caller starts and stops the endpoint."""
    from starlette.routing import Route

    endpoint = McpEndpoint(service, gateway)
    app.router.routes.append(Route(PATH, endpoint=endpoint, methods=["GET", "POST", "DELETE"]))
    return endpoint
