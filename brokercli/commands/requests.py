"""Just-in-time access: request, requests, approve, deny, cancel — and waiting for a decision.

``connect``/``run``/``exec`` on a scope that needs approval get an
``approval_required`` answer naming the request the broker opened for them;
``wait_for_approval`` polls that request until it is approved (then the command
starts its session with that grant), decided otherwise, expired, or the wait
times out.  Each outcome has its own exit code (see ``exit_codes.py``).

``approve`` shows what is being approved and asks before doing it; without a
terminal to ask on it refuses unless ``--yes`` is given, so a script cannot
approve by accident.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from brokercli import completion, render
from brokercli.commands.common import (
    Output,
    OutputOpt,
    ServerOpt,
    TargetArg,
    TtlOpt,
    parse_when,
)
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode
from common.text import reveal

if TYPE_CHECKING:
    from brokercli.client import BrokerClient

RequestArg = Annotated[
    str,
    typer.Argument(
        help="Request id, as shown by dbaccess requests.",
        autocompletion=completion.pending_requests,
    ),
]
POLL_SECONDS = 1.0

_ENDED = {
    "denied": ExitCode.APPROVAL_DENIED,
    "cancelled": ExitCode.APPROVAL_DENIED,
    "revoked": ExitCode.APPROVAL_DENIED,
    "expired": ExitCode.APPROVAL_EXPIRED,
    "used": ExitCode.CONFLICT,
}


def _client(server: str | None) -> BrokerClient:
    from brokercli.client import BrokerClient

    return BrokerClient.from_env(server)


def parse_wait(text: str) -> float:
    from common.durations import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise CliError(f"--wait-timeout: {exc}", code=ExitCode.USAGE) from None


def approve_command(request_id: str) -> str:
    """What to tell the requester about a pending request: the approver's command."""
    return f"an approver runs: dbaccess approve {request_id}"


def approvers_of(r: dict[str, Any]) -> str:
    """Who may approve ``r``, as the broker shows it (named approvers only counted)."""
    who = []
    groups = r.get("approver_groups") or []
    if groups:
        who.append(("group " if len(groups) == 1 else "groups ") + ", ".join(groups))
    named = r.get("named_approvers") or 0
    if named:
        who.append("a named approver" if named == 1 else f"one of {named} named approvers")
    return " or ".join(who) or "an admin"


def _progress(r: dict[str, Any]) -> str:
    return (
        f"request {r['id']}: {r['status']}, {r['approvals_count']} of "
        f"{r['min_approvals']} approvals from {approvers_of(r)}; {approve_command(r['id'])}"
    )


def _ended(r: dict[str, Any]) -> CliError:
    status = r["status"]
    if status == "expired":
        what = "its approval" if r.get("decided_at") and r.get("approvals_count") else "it"
        message = f"request {r['id']} expired: {what} ran out before use"
        hint = "ask again (run the same command)"
    elif status == "used":
        message = f"request {r['id']} was already used for session {r.get('session_id')}"
        hint = "a single-use approval starts one session; run the command again to ask anew"
    else:
        by = f" by {r['decided_by']}" if r.get("decided_by") else ""
        note = f": {r['note']}" if r.get("note") else ""
        message = f"request {r['id']} was {status}{by}{note}"
        hint = None
    return CliError(message, code=_ENDED[status], hint=hint)


def wait_for_approval(client: BrokerClient, request: dict[str, Any], timeout: float) -> None:
    """Return once ``request`` is approved, else raise a CliError with the outcome's exit code."""
    request_id = request["id"]
    deadline = time.monotonic() + timeout
    current = client.access_request(request_id)
    intro = (
        f"{request.get('message') or 'this needs approval'}\n"
        f"waiting for approval of request {request_id} by {approvers_of(current)} "
        f"(Ctrl-C stops waiting; the request stays pending)\n{approve_command(request_id)}"
    )
    try:
        with render.waiting(intro) as update:
            while True:
                if current["status"] == "approved":
                    approvers = ", ".join(a["approver"] for a in current["approvals"])
                    render.info(f"request {request_id} approved by {approvers}")
                    return
                if current["status"] != "pending":
                    raise _ended(current)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CliError(
                        f"no decision on request {request_id} in time ({_progress(current)})",
                        code=ExitCode.WAIT_TIMEOUT,
                        hint="it stays pending: run the same command again to keep waiting, "
                        f"or withdraw it with dbaccess cancel {request_id}",
                    )
                update(_progress(current))
                time.sleep(min(POLL_SECONDS, left))
                current = client.access_request(request_id)
    except KeyboardInterrupt:
        render.info(
            f"stopped waiting; request {request_id} stays pending "
            f"(dbaccess cancel {request_id} withdraws it)"
        )
        raise


def request(
    target: TargetArg,
    scope: Annotated[
        str,
        typer.Option(
            "--scope", "-s", help="Scope to ask for, e.g. write.", autocompletion=completion.scopes
        ),
    ],
    reason: Annotated[
        str,
        typer.Option(
            "--reason", "-r", help="Why you need it (ticket, incident): approvers read this."
        ),
    ],
    ttl: TtlOpt = None,
    start_at: Annotated[
        str | None,
        typer.Option(
            "--start-at",
            help="When you will need it: a duration from now (e.g. 2h) or an ISO time "
            "(e.g. 2026-03-01T09:00, local time unless an offset is given); the approval "
            "stays usable from then on.",
        ),
    ] = None,
    output: OutputOpt = Output.table,
    server: ServerOpt = None,
) -> None:
    """Ask for access to a scope that needs approval, ahead of time.

    Prints the request id. Once approved, dbaccess connect/run/exec on that
    scope use the approval.
    """
    when = parse_when(start_at, "--start-at", "ahead")
    client = _client(server)
    data = client.create_request(target, scope, ttl, reason, when)
    r = data["request"]
    if output == Output.json:
        render.as_json(data)
        return
    state = "created" if data["created"] else "already pending"
    render.info(
        f"request {r['id']} {state}: {r['target']} scope={r['scope']} for {r['ttl']}, "
        f"needs {r['min_approvals']} approval(s); pending until {r['expires_at'][:19]} UTC\n"
        f"approvers run: dbaccess approve {r['id']}"
    )
    print(r["id"])


def requests(
    pending: Annotated[
        bool, typer.Option("--pending", help="Only requests still pending.")
    ] = False,
    mine: Annotated[bool, typer.Option("--mine", help="Only requests you made.")] = False,
    to_review: Annotated[
        bool, typer.Option("--to-review", help="Pending requests you may approve.")
    ] = False,
    output: OutputOpt = Output.table,
    server: ServerOpt = None,
) -> None:
    """List access requests: yours, those you may approve (admins: all), newest first."""
    client = _client(server)
    data = client.requests(pending=pending, mine=mine, to_review=to_review)
    if output == Output.json:
        render.as_json(data)
        return
    cols = [
        "id",
        "requester",
        "target",
        "scope",
        "for",
        "ttl",
        "status",
        "approvals",
        "until",
        "reason",
    ]
    render.records(cols, [_row(r) for r in data], output.value)
    if not data and output == Output.table:
        render.info("no access requests")


def _row(r: dict[str, Any]) -> list[Any]:
    # "until" is when the request stops waiting, or when its unused approval lapses.
    until = {"pending": r["expires_at"], "approved": r["grant_expires_at"]}.get(r["status"])
    return [
        r["id"],
        r["requester"],
        r["target"],
        r["scope"],
        asked_for(r),
        r["ttl"],
        r["status"],
        f"{r['approvals_count']}/{r['min_approvals']}",
        (until or "")[:19],
        reveal(r["reason"] or ""),
    ]


def asked_for(r: dict[str, Any]) -> str:
    """``session`` for access, else the reviewed statement's first line and its hash."""
    if not r.get("statement"):
        return "session"
    lines = [line.strip() for line in r["statement"].splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > 60:
        first = first[:59] + "…"
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return f"statement {reveal(first)}{more} sha256 {r['statement_sha256'][:16]}"


def _describe(r: dict[str, Any]) -> str:
    lines = [
        f"request:    {r['id']} ({r['kind']}, {r['status']})",
        f"requester:  {r['requester']}",
        f"target:     {r['target']}",
        f"scope:      {r['scope']}",
        f"reason:     {r['reason'] or '-'}",
        f"ttl:        {r['ttl']}" + (" (single use)" if r["single_use"] else " (reusable)"),
        f"created:    {r['created_at'][:19]} UTC",
        f"expires:    {r['expires_at'][:19]} UTC (if not decided)",
    ]
    if r.get("start_at"):
        lines.append(f"start at:   {r['start_at'][:19]} UTC")
    done = ", ".join(a["approver"] for a in r["approvals"]) or "none yet"
    lines.append(f"approvals:  {r['approvals_count']} of {r['min_approvals']} ({done})")
    lines.append(f"approvers:  {approvers_of(r)}")
    if r.get("statement"):
        lines += [
            f"statement (sha256 {r['statement_sha256']}):",
            *("    " + line for line in r["statement"].splitlines()),
        ]
    # Nothing a requester typed may hide or rewrite what the reviewer reads:
    # invisible characters and terminal controls are shown as code points.
    return reveal("\n".join(lines))


def approve(
    request_id: RequestArg,
    comment: Annotated[
        str | None, typer.Option("--comment", "-m", help="A note for the audit log.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Approve without asking.")] = False,
    server: ServerOpt = None,
) -> None:
    """Approve someone's access request, after showing what it asks for.

    Asks for confirmation unless --yes; without a terminal, --yes is required.
    """
    client = _client(server)
    r = client.access_request(request_id)
    render.info(_describe(r))
    if r["status"] != "pending":
        raise CliError(
            f"request {request_id} is {r['status']}: nothing to approve", code=ExitCode.CONFLICT
        )
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(
                "refusing to approve without confirmation: there is no terminal to ask on",
                code=ExitCode.USAGE,
                hint=f"review the request above, then run: dbaccess approve {request_id} --yes",
            )
        what = "statement above" if r.get("statement") else "access to"
        if not render.confirm(f"approve {r['requester']}'s {what} {r['target']}/{r['scope']}?"):
            render.info("not approved")
            raise typer.Exit(int(ExitCode.INTERRUPTED))
    done = client.decide_request(request_id, "approve", comment=comment)
    if done["status"] == "approved":
        use = (
            f"run the statement (sha256 {done['statement_sha256'][:16]}) once on"
            if done.get("statement")
            else "use"
        )
        render.info(
            f"approved {request_id}: {done['requester']} may {use} "
            f"{done['target']}/{done['scope']} until {done['grant_expires_at'][:19]} UTC"
        )
    else:
        left = done["min_approvals"] - done["approvals_count"]
        render.info(
            f"approval of {request_id} recorded: {done['approvals_count']} of "
            f"{done['min_approvals']}, {left} more needed"
        )


def deny(
    request_id: RequestArg,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (the requester sees this).")],
    server: ServerOpt = None,
) -> None:
    """Deny someone's access request (a reason is required)."""
    client = _client(server)
    done = client.decide_request(request_id, "deny", reason=reason)
    render.info(f"denied {request_id} ({done['requester']}: {done['target']}/{done['scope']})")


def cancel(
    request_id: RequestArg,
    reason: Annotated[
        str | None, typer.Option("--reason", "-r", help="Why, for the audit log.")
    ] = None,
    server: ServerOpt = None,
) -> None:
    """Withdraw your access request or unused approval (admins: anyone's)."""
    client = _client(server)
    client.decide_request(request_id, "cancel", reason=reason)
    render.info(f"cancelled {request_id}")
