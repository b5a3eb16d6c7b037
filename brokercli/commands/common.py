"""Pieces shared by the command modules: option types and the session runner.

``session_tunnel`` is the one place that starts a session, opens the tunnel,
yields the connection details, and on the way out — whatever happened — closes
the tunnel and ends the session so the broker revokes the role.
"""

from __future__ import annotations

import getpass
import os
import platform
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from brokercli import render
from brokercli.errors import CliError

if TYPE_CHECKING:
    from brokercli.client import BrokerClient, StartedSession


class Output(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server", envvar="DBACCESS_SERVER", help="Broker URL (default: from the profile)."
    ),
]
ScopeOpt = Annotated[
    str | None,
    typer.Option("--scope", "-s", help="Scope to use, e.g. read or write (default: policy's)."),
]
TtlOpt = Annotated[
    str | None,
    typer.Option("--ttl", help="Session lifetime, e.g. 30m or 2h (default: the scope's)."),
]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", "-r", help="Why you need access (ticket id, incident).")
]
PortOpt = Annotated[
    int,
    typer.Option("--port", "-p", help="Local tunnel port (default: a free one).", min=0, max=65535),
]
DEFAULT_WAIT = "15m"
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="Output format.")]
NoWaitOpt = Annotated[
    bool,
    typer.Option(
        "--no-wait",
        help="If the scope needs approval, print the request id and exit (code 9) "
        "instead of waiting.",
    ),
]
WaitTimeoutOpt = Annotated[
    str,
    typer.Option("--wait-timeout", help="How long to wait for approval, e.g. 15m (exit 12 after)."),
]
BreakGlassOpt = Annotated[
    bool,
    typer.Option(
        "--break-glass",
        help="Skip a required approval where the scope allows it (needs --reason; "
        "flagged in the audit log and notified).",
    ),
]


@dataclass(frozen=True)
class ApprovalWait:
    """What to do when the scope needs approval: wait (up to ``timeout``) or not, or break glass."""

    wait: bool = True
    timeout: str = DEFAULT_WAIT
    break_glass: bool = False


@dataclass(frozen=True)
class Connection:
    session: StartedSession
    host: str
    port: int
    user: str

    def env(self) -> dict[str, str]:
        """libpq variables for a child process: the ticket is the password."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.session.ticket,
            "PGDATABASE": self.session.database,
            "PGSSLMODE": "disable",  # loopback to our own tunnel; the tunnel does TLS
            "PGAPPNAME": os.environ.get("PGAPPNAME", "dbaccess"),
        }


def client_info(command: str) -> dict[str, str]:
    return {
        "command": command,
        "hostname": socket.gethostname(),
        "os_user": getpass.getuser(),
        "platform": platform.platform(terse=True),
    }


def _start_session(
    client: BrokerClient,
    target: str,
    scope: str | None,
    ttl: str | None,
    reason: str | None,
    info: dict[str, str],
    approval: ApprovalWait,
) -> StartedSession:
    """Start the session; where it needs approval, wait for the request the broker opened."""
    from brokercli.commands.requests import parse_wait, wait_for_approval
    from brokercli.exit_codes import ExitCode

    timeout = parse_wait(approval.timeout)
    try:
        return client.start_session(
            target, scope, ttl, reason, info, break_glass=approval.break_glass
        )
    except CliError as err:
        request_id = err.details.get("request_id")
        if err.details.get("error") != "approval_required" or not request_id:
            raise
        pending = err
    if not approval.wait:
        print(request_id)
        raise CliError(
            pending.message,
            code=ExitCode.PENDING,
            hint="run the same command again once it is approved "
            f"(dbaccess requests --mine shows it; dbaccess cancel {request_id} withdraws it)",
        )
    wait_for_approval(client, {"id": request_id, "message": pending.message}, timeout)
    return client.start_session(target, scope, ttl, reason, info, request_id=request_id)


@contextmanager
def session_tunnel(
    server: str | None,
    target: str,
    scope: str | None,
    ttl: str | None,
    reason: str | None,
    *,
    command: str,
    port: int = 0,
    quiet: bool = False,
    approval: ApprovalWait | None = None,
) -> Iterator[Connection]:
    # Imported here so that --help and completion never load asyncio, ssl or httpx.
    from brokercli.client import BrokerClient
    from brokercli.tunnel import Tunnel, TunnelTarget

    client = BrokerClient.from_env(server)
    try:
        session = _start_session(
            client, target, scope, ttl, reason, client_info(command), approval or ApprovalWait()
        )
        try:
            gateway = session.gateway
            tunnel = Tunnel(
                TunnelTarget(gateway.host, gateway.port, gateway.tls, client.cfg.ca_file),
                port=port,
            )
            try:
                tunnel.start()
            except OSError as exc:
                raise CliError(
                    f"cannot open the local tunnel port: {exc}", hint="try another --port"
                ) from None
            if not quiet:
                render.info(
                    f"session {session.id}: {session.target} scope={session.scope}, "
                    f"expires {session.expires_at}"
                )
            try:
                yield Connection(session, "127.0.0.1", tunnel.port, session.identity)
            finally:
                tunnel.stop()
        finally:
            try:
                ended = client.end_session(session.id)
                rev = ended.get("revocation") or {}
                if not quiet:
                    state = (
                        "revoked"
                        if rev.get("ok")
                        else f"revocation: {rev.get('detail', 'unknown')}"
                    )
                    render.info(f"session {session.id} ended; credential {state}")
            except CliError as exc:
                render.info(f"warning: could not end session {session.id}: {exc.message}")
    finally:
        client.close()
