"""The agents' tools: what each does, its JSON schemas, and the sessions they run in.

Each tool is a method of :class:`Tools` that returns a JSON-able dict (the
tool's structured result) or raises :class:`ToolError` (a tool error carrying
the message, the rule that refused, the hint and the SQLSTATE).  Nothing here
decides what an agent may do: the broker does, through the same policy,
session service and gateway as for psql.  The tools only shape requests and
answers:

* ``list_targets`` asks the broker which targets and scopes the caller may use;
* ``describe`` and ``query`` run SQL in a session of the caller's own, through
  the gateway, so guardrails, masking, limits and recording apply as for psql
  (this module imports nothing of the broker's: it only speaks PostgreSQL);
  which result columns were masked comes from the gateway's report
  (``dbaccess.masked_columns``, as ``dbaccess exec`` reads it);
* ``propose_change`` opens a statement review of the exact text (bound to its
  SHA-256 by the broker); ``review_status`` and ``wait_for_review`` read it;
  ``run_approved`` sends the approved text, byte for byte, through the gateway,
  which runs it only while an unused approval of that hash exists, and once.

One statement per call: ``query`` first has the text parsed (a Parse of the
extended protocol, which runs nothing; the gateway judges and records it first,
and refuses several statements in an agent's session, as PostgreSQL does in a
Parse anyway), then runs it as a simple Query, whose masking report it reads.
The gateway and PostgreSQL, not a parser of the tools' own, say what one
statement is.

Sessions (:class:`SessionPool`): one per (target, scope) is kept open and
reused until it nears its deadline; a session that ended meanwhile (killed by
an admin, expired) is reported once as a tool error naming why, and the next
call starts a new one.  The :class:`Backend` is the transport's: the broker's
HTTP API and the CLI's tunnel for ``dbaccess mcp``, the session service and
the local gateway for the broker's ``/mcp`` endpoint.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg

# The gateway's report of a simple Query's masked columns (server/gateway/masking_relay.py).
MASKED_PARAMETER = "dbaccess.masked_columns"
# A session this close to its deadline is not reused: the next call starts another.
RENEW_BEFORE = timedelta(seconds=10)
MAX_WAIT_SECONDS = 600
DEFAULT_WAIT_SECONDS = 60
MAX_DESCRIBED_TABLES = 200
_RULE = re.compile(r"\(([a-z_]+(?:\.[a-z0-9_]+)+)\)\s*$")


class ToolError(Exception):
    """A refusal or failure shown to the agent as a tool error."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        rule: str | None = None,
        sqlstate: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.rule = rule or rule_in(message) or rule_in(hint or "")
        self.sqlstate = sqlstate
        self.details = details

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message}
        for key in ("rule", "hint", "sqlstate"):
            value = getattr(self, key)
            if value:
                error[key] = value
        error.update(self.details)
        return {"error": error}


def rule_in(text: str) -> str | None:
    """The rule a gateway or broker message names: ``… (guardrails.no_drop)`` or ``rule: x.y``."""
    found = _RULE.search(text)
    if found:
        return found.group(1)
    named = re.search(r"rule: ([A-Za-z0-9_.-]+)", text)
    return named.group(1) if named else None


@dataclass
class DbSession:
    """A session the pool holds: ``handle`` is the backend's (a tunnel, nothing)."""

    id: str
    target: str
    scope: str
    expires_at: datetime
    handle: Any = None
    conn: psycopg.Connection[Any] | None = None
    queries: int = 0  # simple Queries sent on ``conn`` (the masking report numbers them)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Backend(Protocol):
    """What the tools need from the broker; every refusal is raised as ToolError."""

    def targets(self) -> list[dict[str, Any]]: ...

    def start_session(self, target: str, scope: str | None, reason: str | None) -> DbSession: ...

    def connect(self, session: DbSession) -> psycopg.Connection[Any]: ...

    def end_session(self, session: DbSession) -> None: ...

    def why_ended(self, session: DbSession) -> str | None: ...

    def request_review(
        self, target: str, scope: str | None, statement: str, reason: str | None
    ) -> dict[str, Any]: ...

    def request(self, request_id: str) -> dict[str, Any]: ...


# -- the tools' interface ------------------------------------------------------------

_TARGET = {"type": "string", "description": "Target name, as list_targets shows it."}
_SCOPE = {
    "type": "string",
    "description": "Scope to use (default: the policy's choice, usually read).",
}
_REASON = {
    "type": "string",
    "description": "Why (ticket, incident); required where the scope says so.",
}
_REQUEST_ID = {"type": "string", "description": "The review's request id (r-...)."}
_ERROR = {
    "type": "object",
    "description": "On a tool error: message, rule that refused, hint, SQLSTATE.",
    "properties": {
        "message": {"type": "string"},
        "rule": {"type": "string"},
        "hint": {"type": "string"},
        "sqlstate": {"type": "string"},
    },
}
_REVIEW = {
    "type": "object",
    "properties": {
        "request_id": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["pending", "approved", "denied", "expired", "cancelled", "used", "revoked"],
        },
        "target": {"type": "string"},
        "scope": {"type": "string"},
        "statement_sha256": {
            "type": ["string", "null"],
            "description": "The reviewed statement's SHA-256 (null for an access request).",
        },
        "approvals": {"type": "integer"},
        "approvals_required": {"type": "integer"},
        "decided_by": {"type": ["string", "null"]},
        "note": {"type": ["string", "null"]},
        "expires_at": {"type": ["string", "null"]},
        "grant_expires_at": {"type": ["string", "null"]},
        "reviewer_command": {"type": "string"},
        "timed_out": {"type": "boolean"},
    },
    "required": ["request_id", "status"],
}
_RESULT = {
    "type": "object",
    "properties": {
        "target": {"type": "string"},
        "scope": {"type": "string"},
        "session_id": {"type": "string"},
        "status": {"type": ["string", "null"], "description": "The command tag, e.g. SELECT 3."},
        "columns": {"type": "array", "items": {"type": "string"}},
        "rows": {"type": "array", "items": {"type": "array"}},
        "row_count": {"type": "integer"},
        "masked_columns": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Columns the gateway masked by the target's masking rules.",
        },
        "truncated": {
            "type": "boolean",
            "description": "The result was cut at the scope's row or byte budget.",
        },
        "limit": {"type": ["string", "null"], "description": "Why it was cut, when it was."},
    },
    "required": ["target", "scope", "session_id", "columns", "rows", "masked_columns", "truncated"],
}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]


def _input(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "list_targets",
        "List the databases (targets) and scopes you may use, with what each needs: "
        "approval before a session, a reason, and how long a session lasts.",
        _input({}, []),
        {
            "type": "object",
            "properties": {
                "targets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "description": {"type": ["string", "null"]},
                            "database": {"type": "string"},
                            "scopes": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "needs_approval": {"type": "boolean"},
                                        "reason_required": {"type": "boolean"},
                                        "default_ttl": {"type": "string"},
                                        "max_ttl": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
            "required": ["targets"],
        },
    ),
    ToolSpec(
        "describe",
        "Describe the tables and views your session may read on a target: columns and "
        "types, which columns are masked for this scope, and estimated row counts.",
        _input(
            {
                "target": _TARGET,
                "scope": _SCOPE,
                "reason": _REASON,
                "schema": {"type": "string", "description": "Only this schema."},
                "table": {"type": "string", "description": "Only tables of this name."},
            },
            ["target"],
        ),
        {
            "type": "object",
            "properties": {
                "target": {"type": "string"},
                "scope": {"type": "string"},
                "session_id": {"type": "string"},
                "tables": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "schema": {"type": "string"},
                            "name": {"type": "string"},
                            "kind": {"type": "string", "enum": ["table", "view", "other"]},
                            "estimated_rows": {"type": ["integer", "null"]},
                            "readable": {
                                "type": "boolean",
                                "description": "false: the gateway refuses reading it whole "
                                "(its columns are then all marked masked)",
                            },
                            "columns": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "type": {"type": "string"},
                                        "masked": {"type": "boolean"},
                                    },
                                },
                            },
                        },
                    },
                },
                "truncated": {"type": "boolean"},
            },
            "required": ["target", "scope", "tables"],
        },
    ),
    ToolSpec(
        "query",
        "Run exactly one read statement (SELECT, or a WITH/VALUES/EXPLAIN that reads) and "
        "return its rows. The gateway's guardrails, masking and result budgets apply: masked "
        "columns come back masked and are listed, a result over the budget is cut "
        "(truncated: true), a refused statement is a tool error naming the rule and what to "
        "do. Changes go through propose_change.",
        _input(
            {
                "target": _TARGET,
                "sql": {"type": "string", "description": "One SQL statement."},
                "scope": _SCOPE,
                "reason": _REASON,
            },
            ["target", "sql"],
        ),
        _RESULT,
    ),
    ToolSpec(
        "propose_change",
        "Propose one write or DDL statement for review: opens a review of this exact text "
        "(bound to its SHA-256) and returns the request id and the command a reviewer runs. "
        "Nothing runs now. After approval, call run_approved with the request id.",
        _input(
            {
                "target": _TARGET,
                "statement": {"type": "string", "description": "The exact SQL to run later."},
                "reason": _REASON,
                "scope": {
                    "type": "string",
                    "description": "The scope to run it in (a writable one the policy lets "
                    "agents use).",
                },
            },
            ["target", "statement", "reason"],
        ),
        _REVIEW,
    ),
    ToolSpec(
        "review_status",
        "The state of a review you proposed: pending, approved, denied, expired, used...",
        _input({"request_id": _REQUEST_ID}, ["request_id"]),
        _REVIEW,
    ),
    ToolSpec(
        "wait_for_review",
        "Wait until a review you proposed is decided, or the timeout passes "
        f"(at most {MAX_WAIT_SECONDS} seconds); returns its state (timed_out when undecided).",
        _input(
            {
                "request_id": _REQUEST_ID,
                "timeout_seconds": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_WAIT_SECONDS,
                    "default": DEFAULT_WAIT_SECONDS,
                },
            },
            ["request_id"],
        ),
        _REVIEW,
    ),
    ToolSpec(
        "run_approved",
        "Run an approved review's statement, exactly as approved, once, in the approved "
        "scope, and return its result. Any other text, a second run, or an expired approval "
        "is refused.",
        _input(
            {
                "request_id": _REQUEST_ID,
                "statement": {
                    "type": "string",
                    "description": "Optional: the text you expect; refused if it is not "
                    "byte for byte the approved one.",
                },
            },
            ["request_id"],
        ),
        _RESULT,
    ),
)
TOOL_NAMES = frozenset(t.name for t in TOOLS)


# -- the session pool ------------------------------------------------------------------


class SessionPool:
    """One open session per (target, scope) for the caller, reused across tool calls."""

    def __init__(self, backend: Backend, clock: Callable[[], datetime] | None = None) -> None:
        self.backend = backend
        self._clock = clock or (lambda: datetime.now(UTC))
        self._open: dict[tuple[str, str | None], DbSession] = {}
        self._lock = threading.Lock()

    @contextmanager
    def session(self, target: str, scope: str | None, reason: str | None) -> Iterator[DbSession]:
        """The (target, scope) session with its connection, held for one tool call."""
        key = (target, scope)
        with self._lock:
            held = self._open.get(key)
            if held is not None and held.expires_at - self._clock() < RENEW_BEFORE:
                del self._open[key]
                self._end(held)
                held = None
            if held is None:
                held = self.backend.start_session(target, scope, reason)
                try:
                    held.conn = self.backend.connect(held)
                except BaseException:
                    self._end(held)
                    raise
                self._open[key] = held
        with held.lock:
            try:
                yield held
            except psycopg.Error as exc:
                if held.conn is not None and not held.conn.closed:
                    raise _gateway_error(exc) from None
                self._forget(key, held)
                why = self.backend.why_ended(held) or "its connection was closed"
                raise ToolError(
                    f"session {held.id} on {held.target}/{held.scope} has ended: {why}",
                    hint="call the tool again to start a new session",
                    rule="session.ended",
                    sqlstate=getattr(exc, "sqlstate", None) or "57P01",
                    session_id=held.id,
                ) from None

    def _forget(self, key: tuple[str, str | None], held: DbSession) -> None:
        with self._lock:
            if self._open.get(key) is held:
                del self._open[key]
        self._end(held)

    def _end(self, held: DbSession) -> None:
        if held.conn is not None:
            # Closing a dead connection may fail; it is gone either way.
            with suppress(Exception):
                held.conn.close()
        # A session that ended elsewhere (killed, expired) was revoked there.
        with suppress(ToolError):
            self.backend.end_session(held)

    def close(self) -> None:
        with self._lock:
            held = list(self._open.values())
            self._open.clear()
        for session in held:
            self._end(session)


# -- running SQL ----------------------------------------------------------------------


def one_statement(session: DbSession, sql: str) -> None:
    """Refuse ``sql`` unless it is one statement, asking PostgreSQL: a Parse (the
    extended protocol) of several statements fails there, and nothing runs.  The
    gateway judges the Parse first, so a refused statement is refused (and
    recorded) here already; one that needs review waits for its run."""
    from psycopg import generators
    from psycopg.pq import ExecStatus

    conn = session.conn
    assert conn is not None
    pgconn = conn.pgconn
    pgconn.send_prepare(b"", sql.encode())
    conn.wait(generators.send(pgconn))
    error: psycopg.Error | None = None
    while (res := conn.wait(generators.fetch(pgconn))) is not None:
        if res.status == ExecStatus.FATAL_ERROR and error is None:
            error = psycopg.errors.error_from_result(res, encoding=conn.info.encoding)
    if error is None:
        return
    if conn.closed:
        raise error  # the session's end: the pool says why
    failure = _gateway_error(error)
    if error.sqlstate == "42601" and "multiple commands" in failure.message:
        raise ToolError(
            "query runs exactly one statement per call",
            hint="send the statements one call at a time",
            rule="mcp.one_statement",
            sqlstate="42601",
        )
    raise failure


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def _masked(session: DbSession, columns: list[str]) -> list[str]:
    """The masked columns of the first result of the simple Query just answered."""
    assert session.conn is not None
    value = session.conn.info.parameter_status(MASKED_PARAMETER)
    if not value:
        return []
    try:
        report = json.loads(value)
        if report.get("query") != session.queries:
            return []
        for result in report.get("results", ()):
            if int(result["result"]) == 0:
                return [
                    columns[int(c["position"])]
                    for c in result["columns"]
                    if int(c["position"]) < len(columns)
                ]
    except (ValueError, TypeError, KeyError, AttributeError):
        # The gateway's report is unreadable: say every column may be masked
        # rather than that none is.
        return list(columns)
    return []


def _gateway_error(exc: psycopg.Error) -> ToolError:
    diag = exc.diag
    message = (diag.message_primary if diag else None) or " ".join(str(exc).split())
    message = re.sub(r"^dbaccess:\s*", "", message)
    return ToolError(
        message,
        hint=diag.message_hint if diag else None,
        sqlstate=exc.sqlstate,
        detail=(diag.message_detail if diag else None) or None,
    )


# Result budgets: the gateway cuts a result with 54000 (program_limit_exceeded).
_LIMIT_STATE = "54000"


@dataclass
class _Result:
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    status: str | None = None
    masked: list[str] = field(default_factory=list)
    error: psycopg.Error | None = None


def _simple(session: DbSession, sql: str) -> _Result:
    """``sql`` as one simple Query, its rows read one at a time (single-row mode), so
    that the rows before a result budget's cut are kept, and the gateway's masking
    report (sent only for simple Queries) is read.  psycopg's own cursors stream
    only with the extended protocol; its generators wait without holding the
    interpreter lock, which the broker's gateway, in the same process, needs."""
    from psycopg import generators
    from psycopg.adapt import Transformer
    from psycopg.pq import ExecStatus

    conn = session.conn
    assert conn is not None
    pgconn = conn.pgconn
    out = _Result()
    transformer = Transformer(conn)
    pgconn.send_query(sql.encode())
    pgconn.set_single_row_mode()
    session.queries += 1
    conn.wait(generators.send(pgconn))
    first = True  # only the first result is kept (a statement has one)
    described = False
    while (res := conn.wait(generators.fetch(pgconn))) is not None:
        status = res.status
        reading = first and out.error is None
        if reading and not described and status in (ExecStatus.SINGLE_TUPLE, ExecStatus.TUPLES_OK):
            described = True
            out.columns = [
                (res.fname(i) or b"").decode("utf-8", "replace") for i in range(res.nfields)
            ]
        if reading and status == ExecStatus.SINGLE_TUPLE:
            transformer.set_pgresult(res, set_loaders=len(out.rows) == 0)
            out.rows.append([_json_value(v) for v in transformer.load_row(0, list)])
        elif status in (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK):
            if first and out.error is None:
                out.status = (res.command_status or b"").decode("utf-8", "replace") or None
            first = False
        elif status == ExecStatus.FATAL_ERROR:
            if out.error is None:
                out.error = psycopg.errors.error_from_result(res, encoding=conn.info.encoding)
            first = False
    if described:
        # The gateway's report comes with the Query's ReadyForQuery.
        out.masked = _masked(session, out.columns)
    return out


def run_sql(session: DbSession, sql: str) -> dict[str, Any]:
    """Run ``sql`` on the session's connection and shape its (first) result."""
    conn = session.conn
    assert conn is not None
    result = _simple(session, sql)
    truncated = False
    limit: str | None = None
    if result.error is not None:
        if conn.closed:
            raise result.error  # the session's end: the pool says why
        if result.error.sqlstate != _LIMIT_STATE or not result.columns:
            raise _gateway_error(result.error)
        truncated = True
        limit = _gateway_error(result.error).message
    return {
        "target": session.target,
        "scope": session.scope,
        "session_id": session.id,
        "status": result.status,
        "columns": result.columns,
        "rows": result.rows,
        "row_count": len(result.rows),
        "masked_columns": result.masked,
        "truncated": truncated,
        "limit": limit,
    }


_DESCRIBE_SQL = """\
SELECT n.nspname, c.relname, c.relkind::text, c.reltuples::bigint,
       a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%'
   AND pg_catalog.has_table_privilege(c.oid, 'SELECT') {only}
 ORDER BY n.nspname, c.relname, a.attnum"""

_KINDS = {"r": "table", "p": "table", "f": "table", "v": "view", "m": "view"}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """A string literal (the gateway pins standard_conforming_strings on)."""
    return "'" + text.replace("'", "''") + "'"


# -- the tools -----------------------------------------------------------------------


def _text(value: Any, name: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ToolError(f"{name} must be a non-empty string", rule="mcp.arguments")
    return value


def _review(r: Mapping[str, Any], *, timed_out: bool | None = None) -> dict[str, Any]:
    out = {
        "request_id": r["id"],
        "status": r["status"],
        "target": r["target"],
        "scope": r["scope"],
        "statement_sha256": r.get("statement_sha256"),
        "approvals": r.get("approvals_count", 0),
        "approvals_required": r.get("min_approvals", 1),
        "decided_by": r.get("decided_by"),
        "note": r.get("note"),
        "expires_at": r.get("expires_at"),
        "grant_expires_at": r.get("grant_expires_at"),
        "reviewer_command": f"dbaccess approve {r['id']}",
    }
    if timed_out is not None:
        out["timed_out"] = timed_out
    return out


class Tools:
    """The tools of one caller (an agent's broker token), over its backend and pool."""

    def __init__(self, backend: Backend, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.backend = backend
        self.pool = SessionPool(backend)
        self._sleep = sleep

    def call(self, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"tool_{name}", None) if name in TOOL_NAMES else None
        if handler is None:
            raise ToolError(f"unknown tool {name!r}", rule="mcp.unknown_tool")
        spec = next(t for t in TOOLS if t.name == name)
        allowed = set(spec.input_schema["properties"])
        unknown = sorted(set(arguments) - allowed)
        if unknown:
            raise ToolError(
                f"{name} takes no argument {', '.join(unknown)}",
                hint=f"its arguments: {', '.join(sorted(allowed)) or 'none'}",
                rule="mcp.arguments",
            )
        result: dict[str, Any] = handler(**arguments)
        return result

    def close(self) -> None:
        self.pool.close()

    # -- the tools themselves ----------------------------------------------------------
    def tool_list_targets(self) -> dict[str, Any]:
        return {
            "targets": [
                {
                    "name": t["name"],
                    "description": t.get("description"),
                    "database": t.get("database"),
                    "scopes": [
                        {
                            "name": s["name"],
                            "needs_approval": bool(s.get("approval")),
                            "reason_required": bool(s.get("reason_required")),
                            "default_ttl": s.get("default_ttl"),
                            "max_ttl": s.get("max_ttl"),
                        }
                        for s in t.get("scopes", ())
                    ],
                }
                for t in self.backend.targets()
            ]
        }

    def tool_describe(
        self,
        target: Any,
        scope: Any = None,
        reason: Any = None,
        schema: Any = None,
        table: Any = None,
    ) -> dict[str, Any]:
        name = _text(target, "target")
        assert name is not None
        why = _text(reason, "reason", required=False)
        with self.pool.session(name, _text(scope, "scope", required=False), why) as session:
            only = [
                f"AND {column} = {_literal(value)}"
                for column, value in (("n.nspname", schema), ("c.relname", table))
                if _text(value, column.split(".")[1], required=False) is not None
            ]
            catalog = run_sql(session, _DESCRIBE_SQL.format(only=" ".join(only)))
            tables: dict[tuple[str, str], dict[str, Any]] = {}
            cut = bool(catalog["truncated"])  # the catalog's rows were over the result budget
            for nsp, rel, kind, tuples, column, type_ in catalog["rows"]:
                entry = tables.get((nsp, rel))
                if entry is None:
                    if len(tables) >= MAX_DESCRIBED_TABLES:
                        cut = True
                        break
                    entry = tables[(nsp, rel)] = {
                        "schema": nsp,
                        "name": rel,
                        "kind": _KINDS.get(kind, "other"),
                        "readable": True,
                        "estimated_rows": tuples
                        if isinstance(tuples, int) and tuples >= 0
                        else None,
                        "columns": [],
                    }
                entry["columns"].append({"name": column, "type": type_, "masked": False})
            for (nsp, rel), entry in tables.items():
                self._mark_masked(session, nsp, rel, entry)
            return {
                "target": session.target,
                "scope": session.scope,
                "session_id": session.id,
                "tables": list(tables.values()),
                "truncated": cut,
            }

    @staticmethod
    def _mark_masked(session: DbSession, nsp: str, rel: str, entry: dict[str, Any]) -> None:
        """Which columns the gateway masks in this session: its report on an empty read."""
        try:
            probe = run_sql(session, f"SELECT * FROM {_quote(nsp)}.{_quote(rel)} LIMIT 0")
        except ToolError:
            # Refused (e.g. a view masking cannot follow): the agent could not read it either.
            for column in entry["columns"]:
                column["masked"] = True
            entry["readable"] = False
            return
        masked = set(probe["masked_columns"])
        for column in entry["columns"]:
            column["masked"] = column["name"] in masked

    def tool_query(
        self, target: Any, sql: Any, scope: Any = None, reason: Any = None
    ) -> dict[str, Any]:
        name, text = _text(target, "target"), _text(sql, "sql")
        assert name is not None and text is not None
        why = _text(reason, "reason", required=False)
        with self.pool.session(name, _text(scope, "scope", required=False), why) as session:
            one_statement(session, text)
            return run_sql(session, text)

    def tool_propose_change(
        self, target: Any, statement: Any, reason: Any, scope: Any = None
    ) -> dict[str, Any]:
        name, text = _text(target, "target"), _text(statement, "statement")
        why = _text(reason, "reason")
        assert name is not None and text is not None
        answer = self.backend.request_review(name, _text(scope, "scope", required=False), text, why)
        return _review(answer["request"])

    def tool_review_status(self, request_id: Any) -> dict[str, Any]:
        rid = _text(request_id, "request_id")
        assert rid is not None
        return _review(self.backend.request(rid))

    def tool_wait_for_review(
        self, request_id: Any, timeout_seconds: Any = DEFAULT_WAIT_SECONDS
    ) -> dict[str, Any]:
        rid = _text(request_id, "request_id")
        assert rid is not None
        if not isinstance(timeout_seconds, int | float) or isinstance(timeout_seconds, bool):
            raise ToolError("timeout_seconds must be a number", rule="mcp.arguments")
        deadline = time.monotonic() + min(max(float(timeout_seconds), 1.0), MAX_WAIT_SECONDS)
        while True:
            request = self.backend.request(rid)
            if request["status"] != "pending":
                return _review(request, timed_out=False)
            left = deadline - time.monotonic()
            if left <= 0:
                return _review(request, timed_out=True)
            self._sleep(min(1.0, left))

    def tool_run_approved(self, request_id: Any, statement: Any = None) -> dict[str, Any]:
        rid = _text(request_id, "request_id")
        assert rid is not None
        request = self.backend.request(rid)
        approved = request.get("statement")
        if request.get("kind") != "statement" or not approved:
            raise ToolError(
                f"request {rid} is not a statement review",
                hint="propose the statement with propose_change",
                rule="review.not_a_statement",
            )
        expected = _text(statement, "statement", required=False)
        if expected is not None and expected != approved:
            raise ToolError(
                f"this is not, byte for byte, the statement approved by request {rid}",
                hint="an approval covers exactly the text reviewed; propose the new text "
                "with propose_change",
                rule="review.statement_changed",
            )
        status = request["status"]
        if status != "approved":
            why = {
                "pending": "is still waiting for approval",
                "used": "was run already: an approval runs its statement once",
                "expired": "expired before it was run",
            }.get(status, f"is {status}")
            raise ToolError(
                f"request {rid} {why}",
                hint="wait_for_review waits for a decision"
                if status == "pending"
                else "propose it again with propose_change",
                rule=f"review.{status}",
                status=status,
            )
        target, scope = request["target"], request["scope"]
        with self.pool.session(target, scope, request.get("reason")) as session:
            return run_sql(session, approved)
