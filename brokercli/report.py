"""The evidence report as a document: Markdown, or one self-contained HTML page.

The broker gives the report as JSON (``GET /v1/audit/report``); this module only
lays it out.  The HTML page carries everything it needs inline (styles, and
charts drawn as SVG: sessions per day, refusals by rule), so it can be mailed or
attached to an audit ticket and opened anywhere, without network access.  Every
value from the report is escaped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any


def as_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _t(iso: Any) -> str:
    return str(iso or "")[:19].replace("T", " ")


def _tables(data: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[Any]]]]:
    """Each section as (key, title, columns, rows): what both layouts show."""
    s, m, r, v = data["sessions"], data["masked"], data["revocations"], data["verification"]
    ok = "intact" if v["ok"] else f"NOT intact: {v.get('problem')}"
    return [
        (
            "sessions",
            f"Sessions by identity and target ({s['total']} started, {s['denied']} denied)",
            ["identity", "target", "sessions"],
            [[x["identity"], x["target"], x["sessions"]] for x in s["by_identity_target"]],
        ),
        (
            "approvals",
            "Approvals",
            ["time", "decision", "request", "by", "requester", "target", "comment"],
            [
                [
                    _t(a["ts"]),
                    a["decision"],
                    a["request_id"],
                    a["by"],
                    a["requester"],
                    a["target"],
                    a["comment"],
                ]
                for a in data["approvals"]
            ],
        ),
        (
            "reviews",
            "Statement reviews",
            ["time", "event", "identity", "target", "request", "rule", "statement"],
            [
                [
                    _t(x["ts"]),
                    x["event"],
                    x["identity"],
                    x["target"],
                    x["request_id"],
                    x["rule"],
                    x["statement"],
                ]
                for x in data["reviews"]
            ],
        ),
        (
            "refusals",
            f"Guardrail refusals ({data['refusals']['total']})",
            ["rule", "refused"],
            [[x["rule"], x["count"]] for x in data["refusals"]["by_rule"]],
        ),
        (
            "masked",
            "Masked columns: reads masked and in clear",
            ["column", "masked", "in clear"],
            [[c["column"], c["masked"], c["clear"]] for c in m["columns"]],
        ),
        (
            "clear",
            "Accesses to masked columns in clear (exempt sessions)",
            ["time", "identity", "column", "exemption", "command", "rows", "session", "approval"],
            [
                [
                    _t(x["ts"]),
                    _who(x),
                    x["column"],
                    x.get("exemption") or "",
                    x["command"],
                    x["rows"],
                    x["session_id"],
                    x["approval"],
                ]
                for x in m["clear_accesses"]
            ],
        ),
        (
            "break_glass",
            "Break-glass sessions",
            ["time", "identity", "target", "session", "reason"],
            [
                [_t(x["ts"]), x["identity"], x["target"], x["session_id"], x["reason"]]
                for x in data["break_glass"]
            ],
        ),
        (
            "revocations",
            f"Revocations ({r['verified']} of {r['total']} verified)",
            ["time", "session", "identity", "target", "detail"],
            [
                [_t(x["ts"]), x["session_id"], x["identity"], x["target"], x["detail"]]
                for x in r["not_verified"]
            ],
        ),
        (
            "verification",
            f"Audit chain: {ok}",
            ["events", "head seq", "head hash"],
            [[v["events"], v["head_seq"], v["head_hash"]]],
        ),
    ]


def _who(x: dict[str, Any]) -> str:
    behalf = x.get("on_behalf_of")
    return f"{x['identity']} (for {behalf})" if behalf else str(x["identity"])


def _md_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(data: dict[str, Any]) -> str:
    period = data["period"]
    lines = [
        "# dbaccess evidence report",
        "",
        f"Period: {_t(period['since'])} to {_t(period['until'])} (UTC)",
    ]
    for _key, title, columns, rows in _tables(data):
        lines += ["", f"## {title}", ""]
        if not rows:
            lines.append("None.")
            continue
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#1d2330}
h1{font-size:1.6rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d7dbe3}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eceef2;vertical-align:top}
th{background:#f5f6f8}td.n{text-align:right}.bad{color:#b00020;font-weight:600}
.ok{color:#1b7f3b;font-weight:600}.charts{display:flex;gap:2rem;flex-wrap:wrap}
figure{margin:0}figcaption{font-weight:600;margin-bottom:.25rem}code{word-break:break-all}
"""


def _bars(title: str, items: Sequence[tuple[str, int]], element_id: str) -> str:
    """A horizontal bar chart as inline SVG (no script, no fonts to fetch)."""
    width, label_w, bar_h = 460, 170, 20
    top = max((n for _, n in items), default=0) or 1
    height = max(1, len(items)) * (bar_h + 6) + 6
    parts = [
        f'<figure id="{element_id}"><figcaption>{escape(title)}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">'
    ]
    if not items:
        parts.append('<text x="0" y="16" font-size="12">none</text>')
    for i, (label, n) in enumerate(items):
        y = 6 + i * (bar_h + 6)
        w = round((width - label_w - 50) * n / top)
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="12">{escape(label[:26])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{max(w, 1)}" height="{bar_h}" fill="#3d6fb6">'
            f"<title>{escape(label)}: {n}</title></rect>"
            f'<text x="{label_w + max(w, 1) + 4}" y="{y + 15}" font-size="12">{n}</text>'
        )
    parts.append("</svg></figure>")
    return "".join(parts)


def html(data: dict[str, Any]) -> str:
    period = data["period"]
    v = data["verification"]
    state = (
        '<span class="ok">intact</span>'
        if v["ok"]
        else f'<span class="bad">NOT intact: {escape(str(v.get("problem")))}</span>'
    )
    charts = (
        '<div class="charts">'
        + _bars(
            "Sessions per day",
            [(d["day"], d["sessions"]) for d in data["sessions"]["per_day"]],
            "chart-sessions",
        )
        + _bars(
            "Refusals by rule",
            [(x["rule"], x["count"]) for x in data["refusals"]["by_rule"]],
            "chart-refusals",
        )
        + "</div>"
    )
    body = [
        "<h1>dbaccess evidence report</h1>",
        f"<p>Period: {escape(_t(period['since']))} to {escape(_t(period['until']))} (UTC). "
        f"Audit chain: {state}, head <code>{escape(str(v['head_hash']))}</code>.</p>",
        charts,
    ]
    for key, title, columns, rows in _tables(data):
        body.append(f'<section id="{key}"><h2>{escape(title)}</h2>')
        if not rows:
            body.append("<p>None.</p></section>")
            continue
        head = "".join(f"<th>{escape(c)}</th>" for c in columns)
        lines = []
        for row in rows:
            cells = "".join(
                f'<td class="n">{value}</td>'
                if isinstance(value, int)
                else f"<td>{escape(str(value or ''))}</td>"
                for value in row
            )
            lines.append(f"<tr>{cells}</tr>")
        body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>")
        body.append("</section>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>dbaccess evidence report</title>"
        f"<style>{_STYLE}</style></head><body>" + "".join(body) + "</body></html>\n"
    )
