"""Data-access audit: ``dbaccess audit access`` and ``dbaccess audit report``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from brokercli import completion, render
from brokercli.client import BrokerClient
from brokercli.commands.common import Output, OutputOpt, ServerOpt, parse_when
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

_WHEN = (
    "a duration back from now (30m, 7d), a day (today, yesterday, last tuesday) or an ISO "
    "time (2026-12-01, 2026-12-01T09:00; local time unless an offset is given)"
)


class Kind(StrEnum):
    user = "user"
    agent = "agent"
    workload = "workload"
    service = "service"


def _time(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


def _who(record: dict[str, Any]) -> str:
    behalf = record.get("on_behalf_of")
    return f"{record['identity']} (for {behalf})" if behalf else str(record["identity"])


def _columns(record: dict[str, Any]) -> str:
    shown = []
    for c in record["columns"]:
        name = f"{c['relation']}.{c['column']}" if c["column"] else c["relation"]
        mark = "" if c["state"] == "clear" else f" [{c['state']}]"
        verb = {"write": "write ", "filter": "filter "}.get(c["action"], "")
        shown.append(f"{verb}{name}{mark}")
    return ", ".join(shown)


def access(
    target: Annotated[
        str | None,
        typer.Option("--target", help="Only this target.", autocompletion=completion.targets),
    ] = None,
    table: Annotated[
        str | None,
        typer.Option("--table", help="Only statements on this table (name or schema.name)."),
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", help="Only those on this column (needs --table).")
    ] = None,
    identity: Annotated[
        str | None,
        typer.Option("--identity", help="Only this identity (or the person its agent acts for)."),
    ] = None,
    kind: Annotated[
        Kind | None, typer.Option("--kind", help="Only identities of this kind.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help=f"From then on: {_WHEN}.")] = "7d",
    until: Annotated[str | None, typer.Option("--until", help=f"Until then: {_WHEN}.")] = None,
    writes: Annotated[bool, typer.Option("--writes", help="Only statements that wrote.")] = False,
    clear_only: Annotated[
        bool,
        typer.Option(
            "--clear-only",
            help="Only statements that got a column of it back in clear, or filtered by one.",
        ),
    ] = False,
    summary: Annotated[
        bool, typer.Option("--summary", help="Counts by identity and relation instead.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000, help="How many.")] = 200,
    output: OutputOpt = Output.table,
    server: ServerOpt = None,
) -> None:
    """Who read or changed which tables and columns, masked or clear: one row per statement.

    Admins and auditors see everyone's statements; anyone else only their own
    (and their agents'). Newest first. --summary counts statements, writes,
    columns in clear and masked, and rows by identity and relation.
    """
    if column is not None and table is None:
        raise CliError("--column needs --table", code=ExitCode.USAGE)
    client = BrokerClient.from_env(server)
    params = {
        "target": target,
        "table": table,
        "column": column,
        "identity": identity,
        "kind": kind.value if kind is not None else None,
        "since": parse_when(since, "--since", "ago"),
        "until": parse_when(until, "--until", "ago"),
        "writes": writes or None,
        "clear_only": clear_only or None,
        "summary": summary or None,
        "limit": limit,
    }
    data = client.audit_access(**params)
    if output == Output.json:
        render.as_json(data)
        return
    if summary:
        cols = ["identity", "target", "relation", "statements", "writes", "clear", "masked"]
        cols += ["rows", "first", "last"]
        rows = [
            [
                _who(s),
                s["target"],
                s["relation"],
                s["statements"],
                s["writes"],
                s["clear"],
                s["masked"],
                s["rows"],
                _time(s["first"]),
                _time(s["last"]),
            ]
            for s in data
        ]
    else:
        cols = ["time", "identity", "session", "target", "command", "columns", "rows"]
        cols += ["decision", "approval", "exemption"]
        rows = [
            [
                _time(r["ts"]),
                _who(r),
                r["session_id"],
                r["target"],
                r["command"],
                _columns(r),
                r["rows"],
                r["decision"],
                r["approval"],
                r.get("exemption") or "",
            ]
            for r in data
        ]
    render.records(cols, rows, output.value)
    if not data and output == Output.table:
        render.info("no statement matches")


class ReportFormat(StrEnum):
    html = "html"
    md = "md"
    json = "json"


def report(
    since: Annotated[str, typer.Option("--since", help=f"From then on: {_WHEN}.")] = "30d",
    until: Annotated[str | None, typer.Option("--until", help=f"Until then: {_WHEN}.")] = None,
    fmt: Annotated[
        ReportFormat, typer.Option("--format", "-f", help="html (one file, charts), md or json.")
    ] = ReportFormat.html,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write to this file (default: stdout).")
    ] = None,
    server: ServerOpt = None,
) -> None:
    """An evidence report for auditors (admins and auditors).

    Sessions by identity and target, approvals and who gave them, statement
    reviews, guardrail refusals, masked columns and every access to them in
    clear, break-glass sessions, revocations (any not verified), and the audit
    chain's verification with its head hash. The HTML is one self-contained file.
    """
    from brokercli import report as rendering

    client = BrokerClient.from_env(server)
    data = client.audit_report(
        since=parse_when(since, "--since", "ago"), until=parse_when(until, "--until", "ago")
    )
    if fmt is ReportFormat.json:
        text = rendering.as_json(data)
    elif fmt is ReportFormat.md:
        text = rendering.markdown(data)
    else:
        text = rendering.html(data)
    if out is None:
        render.write(text)
        return
    out.write_text(text, encoding="utf-8")
    render.info(f"report written to {out}")
