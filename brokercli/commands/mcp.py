"""dbaccess mcp: the agents' tools as an MCP server over stdio, for agent hosts to spawn.

The server speaks MCP on stdin/stdout (logs go to stderr) and serves the tools
of :mod:`server.mcp.tools`.  It acts with the profile's broker token (an
``agent`` token, made with ``dbaccess-server token create --kind agent``) and
reaches databases exactly as ``dbaccess exec`` does: a session started by the
broker, the local tunnel to the gateway, the session ticket as password.

Its controls are not the agent's to change: it reads its settings (the
profile, the token, the CA) once, at start, and refuses to start when one of
those files, or the configuration directory, is writable by other users; it
has no tool that touches policy, profiles or tokens; the broker decides every
rule.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brokercli import config, tokens
from brokercli.commands.common import ServerOpt, client_info
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

if TYPE_CHECKING:
    import psycopg

    from brokercli.client import BrokerClient
    from common.mcp.tools import DbSession


def _changeable_by_others(path: Path) -> bool:
    """Whether someone else than this user (or root) could change ``path``: it is
    theirs, or writable by its group or everyone (a sticky directory aside)."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid not in (os.getuid(), 0):
        return True
    sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) and not sticky_dir


def check_config_files(extra: list[Path]) -> None:
    """Refuse settings anyone but their owner could change under the server's feet."""
    profile = config.profile_path()
    paths = [config.config_dir(), profile.parent, profile, *extra]
    loose = sorted({str(p) for p in paths if _changeable_by_others(p)})
    if loose:
        raise CliError(
            f"refusing to start: {', '.join(loose)} can be changed by other users",
            code=ExitCode.USAGE,
            hint="make them yours and writable by you only (chown, chmod go-w), so that "
            "nothing but you changes what the MCP server acts with",
        )


def _tool_error(err: CliError) -> Any:
    from common.mcp.tools import ToolError

    extra = {}
    if err.details.get("request_id"):
        extra["request_id"] = err.details["request_id"]
    if err.details.get("error"):
        extra["kind"] = err.details["error"]
    return ToolError(err.message, hint=err.hint, **extra)


class BrokerBackend:
    """The tools' backend through the broker's HTTP API and the CLI's tunnel."""

    def __init__(self, client: BrokerClient) -> None:
        self.client = client

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CliError as err:
            raise _tool_error(err) from None

    def targets(self) -> list[dict[str, Any]]:
        return list(self._call(self.client.targets))

    def start_session(self, target: str, scope: str | None, reason: str | None) -> DbSession:
        from brokercli.tunnel import Tunnel, TunnelTarget
        from common.mcp.tools import DbSession

        started = self._call(
            self.client.start_session, target, scope, None, reason, client_info("mcp")
        )
        gateway = started.gateway
        tunnel = Tunnel(
            TunnelTarget(gateway.host, gateway.port, gateway.tls, self.client.cfg.ca_file)
        )
        session = DbSession(
            id=started.id,
            target=started.target,
            scope=started.scope,
            expires_at=datetime.fromisoformat(started.expires_at),
            handle=(started, tunnel),
        )
        try:
            tunnel.start()
        except OSError as exc:
            self.end_session(session)
            raise _tool_error(CliError(f"cannot open the local tunnel: {exc}")) from None
        return session

    def connect(self, session: DbSession) -> psycopg.Connection[Any]:
        import psycopg

        started, tunnel = session.handle
        return psycopg.connect(
            host="127.0.0.1",
            port=tunnel.port,
            user=started.identity,
            password=started.ticket,
            dbname=started.database,
            sslmode="disable",
            application_name="dbaccess mcp",
            connect_timeout=15,
            autocommit=True,
        )

    def end_session(self, session: DbSession) -> None:
        _started, tunnel = session.handle
        try:
            self._call(self.client.end_session, session.id)
        finally:
            tunnel.stop()

    def why_ended(self, session: DbSession) -> str | None:
        try:
            record = self.client.session(session.id)
        except CliError:
            return None
        if record.get("status") == "active":
            return None
        return f"{record.get('status')}: {record.get('end_reason')}"

    def request_review(
        self, target: str, scope: str | None, statement: str, reason: str | None
    ) -> dict[str, Any]:
        return dict(self._call(self.client.request_review, target, scope, statement, reason))

    def request(self, request_id: str) -> dict[str, Any]:
        return dict(self._call(self.client.access_request, request_id))


def mcp(server: ServerOpt = None) -> None:
    """Serve the agents' tools over MCP on stdin/stdout (for agent hosts to spawn).

    Tools: list_targets, describe, query, propose_change, review_status,
    wait_for_review, run_approved; each runs through the gateway in a session of
    the profile's identity (an agent token: dbaccess-server token create --kind
    agent), under the broker's policy. See docs/agents.md.

    Example (an agent host's configuration): {"command": "dbaccess", "args": ["mcp"]}
    """
    from brokercli.client import BrokerClient

    client = BrokerClient.from_env(server)
    extra = [Path(p) for p in (client.cfg.ca_file, os.environ.get("DBACCESS_CA_FILE")) if p]
    check_config_files([*extra, tokens.file_path()])
    identity = client.whoami()
    if identity.get("kind") != "agent":
        client.close()
        raise CliError(
            f"{identity.get('identity')} is not an agent identity "
            f"(its token is of kind {identity.get('kind')!r})",
            code=ExitCode.FORBIDDEN,
            hint="give the MCP server an agent's token: dbaccess-server token create "
            "--kind agent --owner YOU --identity NAME",
        )
    # The SDK loads here, once the settings and the token are known to be usable.
    import anyio

    from common.mcp.protocol import mcp_server
    from common.mcp.tools import Tools

    tools = Tools(BrokerBackend(client))
    mcp_app = mcp_server(lambda _ctx: tools)

    async def serve() -> None:
        from mcp.server.stdio import stdio_server

        async with stdio_server() as (read, write):
            await mcp_app.run(read, write, mcp_app.create_initialization_options())

    try:
        anyio.run(serve)
    finally:
        tools.close()
        client.close()
