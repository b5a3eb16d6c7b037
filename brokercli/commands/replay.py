"""``dbaccess replay SESSION``: a session's recording as a timeline.

Each event of the recording becomes one line: when it happened (offset from the
session's start), what it was, how long a statement took, how many rows it
touched, its outcome (command tag, SQLSTATE, a guardrail's refusal) and the
statement itself (as recorded: passwords and masked values redacted), with the
columns that were masked in its result.  A ``limit`` event shows the limit
that refused a statement or cut its result: the policy key, its value and
scope, and for a cut the rows and bytes the client got before it.
``--output json`` prints the broker's answer as it is, for tools.  A closed
recording is checked against the digest in the audit log; one that does not
match is shown all the same, with a warning, and the command exits with
status 8.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer

from brokercli import completion, render
from brokercli.commands.common import Output, OutputOpt, ServerOpt
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

COLUMNS = ["at", "event", "took", "rows", "result", "detail"]


def replay(
    session_id: Annotated[
        str,
        typer.Argument(
            help="Session id, as shown by dbaccess sessions.",
            show_default=False,
            autocompletion=completion.sessions,
        ),
    ],
    output: OutputOpt = Output.table,
    server: ServerOpt = None,
) -> None:
    """Show what happened in a session, in order: statements, results, errors, masking.

    Your own sessions; admins and auditors may replay anyone's.
    """
    from brokercli.client import BrokerClient

    client = BrokerClient.from_env(server)
    try:
        data = client.recording(session_id)
    finally:
        client.close()
    problem = _problem(data)
    events = data.get("events") or []
    if output == Output.json:
        render.as_json(data)
    elif output == Output.csv:
        render.as_csv(COLUMNS, [event_row(event) for event in events])
    else:
        render.timeline(heading(data), [timeline_entry(e) for e in events], warning=problem)
    if problem is not None:
        raise CliError(problem, code=ExitCode.CONFLICT, hint="run dbaccess audit verify")


def _problem(data: Mapping[str, Any]) -> str | None:
    if data.get("verified") is False:
        return f"this recording does not match the audit log: {data.get('problem')}"
    return None


def heading(data: Mapping[str, Any]) -> list[str]:
    session = data.get("session") or {}
    lines = [
        f"session {session.get('id')}: {session.get('identity')} on "
        f"{session.get('target')} ({session.get('scope')}), "
        f"{str(session.get('created_at', ''))[:19]} to "
        f"{str(session.get('ended_at') or session.get('expires_at') or '')[:19]}, "
        f"{session.get('status')}"
        + (f": {session['end_reason']}" if session.get("end_reason") else "")
    ]
    rec = data.get("recording")
    if rec is None:
        lines.append("no recording")
        return lines
    state = f"recording {rec.get('status')}: {len(data.get('events') or [])} events"
    if rec.get("dropped"):
        state += f", {rec['dropped']} lost"
    if rec.get("digest"):
        state += f", digest {str(rec['digest'])[:16]}"
    if data.get("verified") is True:
        state += ", matches the audit log"
    lines.append(state)
    archive = rec.get("archive")
    if archive:
        where = archive.get("url") or archive.get("key")
        copy = "" if archive.get("local_copy") else ", read from there (no local copy)"
        lines.append(f"archived to {where}{copy}")
    return lines


def offset(ms: float) -> str:
    seconds = ms / 1000
    if seconds < 60:
        return f"+{seconds:.3f}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"+{int(minutes)}m{rest:06.3f}s"
    hours, minutes = divmod(minutes, 60)
    return f"+{int(hours)}h{int(minutes):02d}m{rest:06.3f}s"


def event_row(event: Mapping[str, Any]) -> list[Any]:
    kind = str(event.get("kind"))
    data: Mapping[str, Any] = event.get("data") or {}
    at = offset(float(event.get("offset_ms") or 0))
    if kind == "statement":
        took = f"{data['duration_ms']:.1f} ms" if data.get("duration_ms") is not None else ""
        return [at, kind, took, data.get("rows"), _result(data), _statement_detail(data)]
    if kind == "limit":
        result = f"{data.get('action', 'refused')} {data.get('sqlstate') or ''}".strip()
        return [at, kind, "", data.get("rows"), result, _limit_detail(data)]
    return [at, kind, "", "", "", _detail(kind, data)]


def timeline_entry(event: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(offset, event, summary, detail) of one event for the timeline."""
    at, kind, took, rows, result, detail = event_row(event)
    summary = "  ".join(
        part for part in (took, f"{rows} rows" if rows not in ("", None) else "", result) if part
    )
    return at, kind, summary, detail


def _result(data: Mapping[str, Any]) -> str:
    decision = data.get("decision")
    if decision and decision not in ("allow", "allowed"):
        return str(decision)
    if data.get("sqlstate"):
        return f"ERROR {data['sqlstate']}"
    return str(data.get("tag") or "")


def _statement_detail(data: Mapping[str, Any]) -> str:
    parts = [str(data.get("text") or "")]
    params = data.get("params")
    if params:
        parts.append("params: " + ", ".join("NULL" if p is None else str(p) for p in params))
    masked: Sequence[Mapping[str, Any]] = data.get("masked") or []
    if masked:
        parts.append(
            "masked: "
            + ", ".join(f"{m.get('field')} ({m.get('method') or m.get('action')})" for m in masked)
        )
    return "\n".join(parts)


def _limit_detail(data: Mapping[str, Any]) -> str:
    head = f"{data.get('limit')} = {data.get('value')} (scope {data.get('scope')})"
    if data.get("action") == "cut":
        head += f": cut after {data.get('rows')} rows, {data.get('bytes')} bytes"
    if data.get("completed"):
        head += f"; the server had finished it ({data['completed']})"
    parts = [head]
    if data.get("message"):
        parts.append(str(data["message"]))
    if data.get("statement"):
        parts.append(str(data["statement"]))
    return "\n".join(parts)


def _detail(kind: str, data: Mapping[str, Any]) -> str:
    if kind == "session.start":
        client = data.get("client") or {}
        bits = [
            f"{data.get('identity')} ({', '.join(data.get('groups') or []) or 'no groups'})",
            f"{data.get('target')}/{data.get('scope')} as {data.get('db_user')}",
        ]
        if data.get("reason"):
            bits.append(f"reason: {data['reason']}")
        if data.get("request_id"):
            bits.append(f"approved request {data['request_id']}")
        if data.get("break_glass"):
            bits.append("break-glass")
        if client:
            bits.append(
                f"client: {client.get('command', '?')} by {client.get('os_user', '?')} "
                f"on {client.get('hostname', '?')}"
            )
        return "; ".join(bits)
    if kind == "session.end":
        revocation = data.get("revocation") or {}
        revoked = "credential revoked" if revocation.get("ok") else "revocation failed"
        return f"{data.get('status')}: {data.get('reason')}; {revoked}"
    if kind == "notice":
        return f"{data.get('severity', 'NOTICE')}: {data.get('message', '')}"
    if kind.startswith("connection.") and "client_addr" in data:
        # As the gateway records them: the client's address and port, its application.
        port = data.get("client_port")
        address = f"{data['client_addr']}:{port}" if port is not None else data["client_addr"]
        app = data.get("application_name")
        return f"from {address}" + (f" ({app})" if app else "")
    if kind.startswith("connection."):
        return ", ".join(f"{k}: {v}" for k, v in data.items())
    return ", ".join(f"{k}: {v}" for k, v in data.items())
