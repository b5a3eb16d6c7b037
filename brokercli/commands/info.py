"""Read-only and administrative commands: targets, sessions, kill, audit."""

from __future__ import annotations

from typing import Annotated

import typer

from brokercli import completion, render
from brokercli.client import BrokerClient
from brokercli.coercion import Group
from brokercli.commands.common import Output, OutputOpt, ServerOpt, parse_when
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode


def targets(output: OutputOpt = Output.table, server: ServerOpt = None) -> None:
    """List the targets you may use, with their scopes and session lifetimes."""
    client = BrokerClient.from_env(server)
    data = client.targets()
    if output == Output.json:
        render.as_json(data)
        return
    rows = [
        [
            t["name"],
            t["database"],
            ", ".join(
                f"{s['name']} (default {s['default_ttl']}, max {s['max_ttl']}"
                + (", needs approval" if s.get("approval") else "")
                + ")"
                for s in t["scopes"]
            ),
            t.get("description") or "",
        ]
        for t in data
    ]
    render.records(["target", "database", "scopes", "description"], rows, output.value)
    if not data and output == Output.table:
        render.info("no targets are available to you")


def sessions(
    active: Annotated[bool, typer.Option("--active", help="Only sessions still running.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Everyone's sessions (admins).")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many.")] = 50,
    output: OutputOpt = Output.table,
    server: ServerOpt = None,
) -> None:
    """List your sessions, newest first: active and recent."""
    client = BrokerClient.from_env(server)
    data = client.sessions(active=True if active else None, all_=all_, limit=limit)
    if output == Output.json:
        render.as_json(data)
        return
    cols = [
        "id",
        "identity",
        "target",
        "scope",
        "status",
        "created",
        "expires",
        "ended",
        "reason",
        "end reason",
    ]
    rows = [
        [
            s["id"],
            s["identity"],
            s["target"],
            s["scope"],
            s["status"],
            s["created_at"][:19],
            s["expires_at"][:19],
            (s["ended_at"] or "")[:19],
            s.get("reason") or "",
            s.get("end_reason") or "",
        ]
        for s in data
    ]
    render.records(cols, rows, output.value)


def kill(
    session_id: Annotated[
        str,
        typer.Argument(
            help="Session id, as shown by dbaccess sessions.",
            autocompletion=completion.active_sessions,
        ),
    ],
    server: ServerOpt = None,
) -> None:
    """End a session now: disconnect its clients and revoke its credential.

    Your own sessions, or anyone's for admins. A dbaccess connect waiting on the
    session (--no-launch, --print-env, --format) notices and exits 8. Exits 8 if the
    session has already ended.
    """
    client = BrokerClient.from_env(server)
    ended = client.end_session(session_id)
    rev = ended.get("revocation") or {}
    state = "revoked" if rev.get("ok") else f"not revoked: {rev.get('detail') or 'unknown'}"
    render.info(f"session {session_id} {ended['status']}: credential {state}")


audit_app = typer.Typer(
    help="List audit events (admins and auditors); 'audit verify' checks the hash chain, "
    "'audit access' answers who touched which data, 'audit report' writes the evidence report.",
    no_args_is_help=False,
    cls=Group,
)


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    identity: Annotated[
        str | None, typer.Option("--identity", help="Only events of this identity.")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target", help="Only events on this target.", autocompletion=completion.targets
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only events since then: a duration back from now (30m, 1h, 7d) or an "
            "ISO time (2026-01-31T00:00, local time unless an offset is given).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 200,
    output: OutputOpt = Output.table,
    server: ServerOpt = None,
) -> None:
    """List audit events (admins and auditors)."""
    if ctx.invoked_subcommand is not None:
        return
    when = parse_when(since, "--since", "ago")
    client = BrokerClient.from_env(server)
    data = client.audit(identity=identity, target=target, since=when, limit=limit)
    if output == Output.json:
        render.as_json(data)
        return
    rows = [
        [
            e["seq"],
            e["ts"][:19],
            e["kind"],
            e["identity"],
            e["target"],
            e["session_id"],
            render.pairs(e["data"]),
        ]
        for e in data
    ]
    render.records(
        ["seq", "time", "kind", "identity", "target", "session", "data"], rows, output.value
    )


@audit_app.command("verify")
def audit_verify(server: ServerOpt = None) -> None:
    """Check the hash chain and the session recordings.

    Detects edited, removed or reordered events, and recordings that no longer
    match the digests the chain holds.
    """
    client = BrokerClient.from_env(server)
    res = client.audit_verify()
    if res["ok"]:
        recordings = (res.get("recordings") or {}).get("recordings")
        extra = f"; {recordings} recordings match their digests" if recordings is not None else ""
        render.info(f"audit log intact: {res['events']} events, hash chain verified{extra}")
        return
    raise CliError(
        f"audit log tampered: event {res['first_bad_seq']}: {res['problem']}",
        code=ExitCode.CONFLICT,
    )
