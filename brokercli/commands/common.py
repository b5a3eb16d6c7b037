"""Pieces shared by the command modules: option types, global options and the session runner.

``session_tunnel`` is the one place that starts a session, opens the tunnel,
yields the connection details, and on the way out — whatever happened — closes
the tunnel and ends the session so the broker revokes the role.

Global options (``GLOBAL_OPTIONS``: ``--ca-file``, ``--profile``) are accepted by the root
and by every command: ``add_global_options`` appends them to each command's
signature, and their values go to ``config.FLAGS`` before the command runs, so
``config.settings`` sees them wherever it is called.  A new global option is one
entry in that table and one field of ``config.GlobalFlags``.
"""

from __future__ import annotations

import getpass
import inspect
import os
import platform
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from brokercli import completion, config, render
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

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
TargetArg = Annotated[
    str,
    typer.Argument(
        help="Target name, as listed by dbaccess targets.", autocompletion=completion.targets
    ),
]
ScopeOpt = Annotated[
    str | None,
    typer.Option(
        "--scope",
        "-s",
        help="Scope to use, e.g. read or write (default: policy's).",
        autocompletion=completion.scopes,
    ),
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


CaFileOpt = Annotated[
    Path | None,
    # No envvar= here: the variable is read after the flags (config.ca_file_override),
    # so that it cannot override a --ca-file given before the command name.
    typer.Option(
        "--ca-file",
        show_default=False,
        help=f"CA certificate (PEM) that signs the broker's and the gateway's TLS "
        f"certificates, for a private CA (default: ${config.CA_FILE_ENV}, else the "
        "profile's, else the system's).",
    ),
]


@dataclass(frozen=True)
class GlobalOption:
    """An option every command accepts; ``flag`` is its field in ``config.GlobalFlags``."""

    flag: str
    annotation: Any


ProfileOpt = Annotated[
    str | None,
    # Read after the flags, like --ca-file (config.profile_name).
    typer.Option(
        "--profile",
        metavar="NAME",
        show_default=False,
        help=f"Profile (broker and token) to act with, e.g. reviewer (default: "
        f"${config.PROFILE_ENV}, else profile.json).",
    ),
]
GLOBAL_OPTIONS: tuple[GlobalOption, ...] = (
    GlobalOption("ca_file", CaFileOpt),
    GlobalOption("profile", ProfileOpt),
)


def with_global_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the global options appended to its parameters.

    Typer reads the signature; the wrapper records the global values in
    ``config.FLAGS`` and calls ``func`` with its own parameters only.
    """
    sig = inspect.signature(func, eval_str=True)
    kind = inspect.Parameter.KEYWORD_ONLY
    params = [
        *sig.parameters.values(),
        *(inspect.Parameter(g.flag, kind, default=None, annotation=g.annotation)
          for g in GLOBAL_OPTIONS),
    ]  # fmt: skip

    def wrapper(**kwargs: Any) -> Any:
        for g in GLOBAL_OPTIONS:
            value = kwargs.pop(g.flag, None)
            if value is not None:
                setattr(config.FLAGS, g.flag, str(value))
        return func(**kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(wrapper, attr, getattr(func, attr))
    return wrapper


def add_global_options(app: typer.Typer) -> None:
    """Give the root, every group and every command of ``app`` the global options."""
    if app.registered_callback is not None and app.registered_callback.callback is not None:
        app.registered_callback.callback = with_global_options(app.registered_callback.callback)
    for command in app.registered_commands:
        if command.callback is not None:
            command.callback = with_global_options(command.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            add_global_options(group.typer_instance)


def parse_when(text: str | None, option: str, direction: Literal["ago", "ahead"]) -> str | None:
    """A time option (``--since 1h``, ``--start-at 2026-03-01T09:00``) as the aware ISO
    time the broker takes; an ISO time without an offset is this machine's local time."""
    from datetime import UTC, datetime

    from common.durations import parse_time

    if text is None:
        return None
    try:
        return parse_time(text, datetime.now(UTC), direction=direction).isoformat()
    except ValueError as exc:
        raise CliError(f"{option}: {exc}", code=ExitCode.USAGE) from None


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
    broker: BrokerClient = field(compare=False, repr=False)

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


# What a child (psql, or the command of dbaccess run) may see of dbaccess's own
# settings: none of them is a secret.  Every other DBACCESS_* variable is withheld,
# above all DBACCESS_TOKEN: the child gets the session, never the broker credential.
CHILD_VISIBLE_SETTINGS = frozenset(
    {
        "DBACCESS_SERVER",
        "DBACCESS_CA_FILE",
        config.PROFILE_ENV,
        "DBACCESS_CONFIG_DIR",
        "DBACCESS_NO_KEYRING",
    }
)


# libpq variables of the parent that would send the child elsewhere than the
# tunnel, ticket and all: hostaddr wins over PGHOST, and a service's host and
# port over the environment's.
CHILD_WITHHELD_LIBPQ = frozenset({"PGHOSTADDR", "PGSERVICE", "PGSERVICEFILE"})


def child_env(conn: Connection, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: the parent's, minus dbaccess's secrets and
    the libpq variables that would route it past the tunnel, plus the session's
    libpq variables."""
    base = os.environ if parent is None else parent
    kept = {
        name: value
        for name, value in base.items()
        if (not name.startswith("DBACCESS_") or name in CHILD_VISIBLE_SETTINGS)
        and name not in CHILD_WITHHELD_LIBPQ
    }
    return {**kept, **conn.env()}


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
    from brokercli.commands.requests import approve_command, parse_wait, wait_for_approval

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
            hint=f"{approve_command(request_id)}; run the same command "
            "again once it is approved (dbaccess requests --mine shows it; "
            f"dbaccess cancel {request_id} withdraws it)",
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
                yield Connection(session, "127.0.0.1", tunnel.port, session.identity, client)
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
                # A session that ended elsewhere (killed, expired) was revoked there.
                if exc.code != ExitCode.CONFLICT:
                    render.info(f"warning: could not end session {session.id}: {exc.message}")
    finally:
        client.close()
