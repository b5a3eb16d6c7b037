"""Masking and statement recording in the relay: the server-side hooks of one connection.

``MaskingHooks`` is sans-IO and belongs to one client connection.  It watches
the client messages that start a result (Query, Parse, Bind, Describe,
Execute, Close, Sync, FunctionCall) to know, for every RowDescription and
DataRow the server sends, which statement or portal it belongs to.  It tracks
each Parse and Bind as an object of its own, and a Describe or Execute keeps
the very one it was sent for: a pipeline that describes a statement and then
parses or binds another under the same name before the answer arrives gets
that answer applied to the old one, so the new one's rows are not described
(and refused) rather than masked by another statement's plan.  Then it

* on RowDescription (``T``) builds a :class:`~server.gateway.masking.MaskPlan`
  from the fields' origins (the target's catalog, ``Catalog.current``); a
  column without an origin (an expression, a cast, an aggregate, a whole row,
  a set operation...) is decided by its lineage: sqlcheck's
  ``result_lineage`` over the statement's text (the Query's, or the Parse's
  of a described statement or portal) names the catalog columns it may be
  computed from, and it is masked when one of them is.  Where the lineage
  cannot be established (or its width is not the RowDescription's), the
  column is blocked when the statement touches a table with masked columns
  (``touched``, from its sqlcheck ``reads``/``writes``), or when what it
  touches cannot be told (``FETCH``, ``EXECUTE``, a table the catalog does
  not know yet);
* rewrites the RowDescription (masked non-text columns become ``text``) and
  every DataRow of a masking plan;
* rewrites a Bind's result formats when its statement was described before
  (the plan is known): a column that ``partial``/``hash`` can only mask from
  its text is asked for in text upstream, and the portal's RowDescription
  shows the client the format it asked for, which is right since the column
  is announced as ``text`` and text has the same bytes in both formats (a
  driver such as psycopg reads every column in the format of the first, so
  a mix would be misread).  Bound in binary before the shape was known
  (Parse, Bind, Describe in one go), such a column has no text to mask from:
  the result is refused (42501, hint: ask for text), never sent as NULL;
* runs the target's content detectors (``MaskingRules.detector_set``) over
  every DataRow on its way out, after the rules, skipping masked columns:
  a few literal searches per row when nothing is there (the detectors'
  gates, see ``detectors``), and columns of closed types (integers, dates,
  UUIDs…) are skipped; a finding becomes ``***``
  inside a value of a text column and NULL in any other (``***`` in an
  integer or a binary value would be misread); a kind whose action is
  ``block`` refuses the result.  Rows of an allowed COPY out are searched
  too, and a finding refuses the COPY (its fields cannot be told apart
  without the COPY's options, so no rewrite in place); a FunctionCall's
  result (large objects) with a finding becomes NULL;
* on a blocked plan, or on DataRows of a portal whose shape is unknown (an
  Execute without any Describe), replaces the message with an ErrorResponse
  (42501) and drops everything the server sends up to the ReadyForQuery.  The
  server had no error, so it runs what was sent after the refused result (a
  Query's later statements, the rest of a pipeline up to its Sync) and commits
  the lot: those answers are still read, each statement is recorded as it ran,
  and when a statement of the Query or pipeline may have changed something
  (``_completed``, ``_changed``) the connection ends with 40003 in place of
  the ReadyForQuery, so that the client does not take what committed for
  rolled back or skipped (closing rolls back what is still open);
* withholds the texts of an ErrorResponse of a statement that touches a
  table with masked columns (or whose tables cannot be told), and redacts
  (``redact_report``) notices of such statements and reports that answer no
  statement; statements on tables without masked columns get the server's
  own texts (``_may_quote_masked``).  In a simple Query of several
  statements, a RowDescription, an error or a notice belongs to the
  statement after those completed (CommandCompletes counted, as PostgreSQL
  sends one per statement), so each is judged by its own statement;
  the detectors mask what they find in every report;
* NotificationResponse (``A``) and ParameterStatus (``S``), which are not
  part of one response and are never dropped: a notification keeps its
  channel and sender but its payload becomes ``***`` when masking rules apply
  (it may come from a trigger or another session and has no origin to judge
  by; dropping it would silently break code that waits for it), and is
  screened by the detectors otherwise; a free-text parameter value
  (``application_name``) that the client's own SQL does not hold becomes
  ``***``, as it was set by something else, such as a function calling
  ``set_config`` (``masking.screen_parameter``);
* records one ``statement`` event per simple Query and per Execute
  (``service.recorder``; text redacted, the Execute's Bind parameters -- all
  hidden when the statement touches masked columns --, tag, rows, SQLSTATE,
  decision, masked fields), and one ``notice`` event per NoticeResponse as the
  client got it.  Only what masking decided (whether the statement, or each
  statement of a Query, touches masked columns) is worked out here; the raw
  text, parameters and counters are queued as they are, and the event is made
  -- redacted, timed -- by the recorder's writer (:func:`notice_data` on its
  thread; :data:`statement_data` reads the access facts there and is made in its
  writer process, when it has one).

A session exempt from masking (``masking.exempt``) gets no rewriting and no
refusal; only its RowDescriptions (and NoData) are watched, each planned with
the rules it is exempt from (from the catalog alone: no statement is analysed
for it) and kept as an all-clear plan whose would-be-masked columns are marked
(``masking.exempted``), for the statement's access facts.

Masking is visible.  A session that masking applies to is told at login,
in a NoticeResponse before its first ReadyForQuery (``Relay.greeting``), which
columns of the target leave masked in it (``masking.session_notice``).  Which
columns of a *result* were masked is told to programs by a ParameterStatus
``dbaccess.masked_columns`` ahead of the ReadyForQuery of a simple Query that
has masked columns (JSON: the Query's number on the connection, and per result
the positions, names and methods; see ``_report``); ``dbaccess exec`` reads it
to mark masked columns.  That channel was chosen because it is the least
invasive honest one: the protocol lets a server send a ParameterStatus at any
time and clients keep it by name without showing it (psql prints nothing,
drivers expose it as ``PQparameterStatus``), while a NoticeResponse per
result would print on every psql statement, and the column origins the
client already receives (table OID, attnum) cannot say it: a masked
expression has none, and the client does not know the rules.  A server's
ParameterStatus of that name is dropped, so the report is the gateway's.

Sessions without masking rules or detectors register only the few hooks
recording needs (no DataRow hook), so their rows keep the relay's fast path.

Table names are resolved with the session's pinned search_path
(``touched_relations``).  ``MaskingSetup.pre_execution`` gives the guard what
must be refused before a statement runs (``masking_guard``): writes that read
masked columns, calls of untrusted functions, and predicates on masked columns.

Known limits: computed columns whose lineage cannot be established are
blocked when masked data is touched: recursive CTEs, MERGE ... RETURNING,
EXPLAIN, ``*`` over a function's result, a statement of a simple Query of
several whose text is longer than ``MAX_TEXT``, and the rows of FETCH and
EXECUTE (a cursor's or
prepared statement's text is not followed).  A whole-row reference counts
the columns the catalog knew when it was loaded.  COPY out of a table with
masked columns is refused, not masked.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from server.audit.access import SessionFacts
from server.audit.recording import (
    RecordFn,
    StatementParts,
    TwoStep,
    statement_made,
)
from server.gateway import analysis_limits, analysis_pool, pgwire
from server.gateway.access_facts import ALLOWED, AccessContext, access_facts
from server.gateway.analysis_limits import DEFAULT_ANALYSIS_LIMITS, AnalysisLimits, oversize_head
from server.gateway.catalog import Catalog, CatalogSnapshot
from server.gateway.connection import ConnectionState, Note
from server.gateway.guardrails import Decision, Outcome
from server.gateway.masking import (
    Action,
    ColumnRef,
    MaskingRules,
    MaskPlan,
    exempted,
    expand_formats,
    masks,
    plan_for_row_description,
    redact_report,
    screen_notification,
    screen_parameter,
    screen_report,
    screen_row,
    session_notice,
    session_rules,
)
from server.gateway.masking_guard import (
    UNQUALIFIED,
    MaskedSession,
    call_may_have_changed,
    masking_decision,
    may_have_changed,
    reads_masked,
    resolve_name,
)
from server.gateway.pgwire import (
    Bind,
    Describe,
    ErrorResponse,
    Execute,
    Field,
    FunctionCall,
    FunctionCallResponse,
    NoticeResponse,
    NotificationResponse,
    ParameterStatus,
    Parse,
    ProtocolViolation,
    Query,
    RawMessage,
    RowDescription,
)
from server.gateway.relay import Hook, Relay, row_run
from server.gateway.search_path import catalog_first, session_search_path
from server.gateway.session import GatewayError
from server.gateway.signals import SIGNALS
from server.gateway.sqlcheck import (
    DEFAULT_TIME_BUDGET,
    MAX_TEXT,
    Analysis,
    Lineage,
    Name,
    Statement,
    StatementClass,
    result_lineage,
    result_lineage_of,
    statement_ends,
)
from server.sessions.service import LiveSession, SessionService

log = logging.getLogger(__name__)

SQLSTATE = "42501"
# Statements that may have changed something named in a 40003 (``_changed``), and
# statements kept between two ReadyForQuery to be judged (more: taken as changes).
_CHANGED_NAMED = 5
_RAN_KEPT = 10_000
# Command tags of a portal whose statement is not known that count as a read.
_QUERY_TAGS = frozenset({"SELECT", "FETCH", "MOVE"})
# statement_completion_unknown: what ends a connection whose client would otherwise
# take statements that ran for statements the server skipped.
STATEMENT_COMPLETION_UNKNOWN = "40003"
RAN_AFTER_HINT = (
    "send a statement whose result masking may refuse on its own (its own Query, or "
    "followed by a Sync) before statements that change data; see what ran in the "
    "session's recording"
)
# Long texts whose lineage is kept, read ahead, per connection (a pipeline's few).
_LINEAGE_AHEAD_KEPT = 8
# Masking decisions kept per connection (by shape, see pre_execution_check).
_DECISIONS_KEPT = 512
# Relations whose columns a connection's check keeps read, per catalog snapshot.
_RELATIONS_KEPT = 4_096
# Command tags of DDL that may change what the catalog says of a name.
_DDL_TAGS = ("CREATE ", "ALTER ", "DROP ")
_DDL_RELOAD_INTERVAL = 1.0  # seconds between a connection's reloads after DDL
# Result plans kept per connection (MaskingHooks._plan), and the longest text kept as a key.
_PLANS_KEPT = 256
_PLAN_KEY_TEXT = 16_384
BLOCK_HINT = "select the column itself or ask for review"
DETECTOR_HINT = "leave the column out of the result, or ask for review"
COPY_DETECTOR_HINT = "select the columns instead: a COPY row cannot be masked in place"
TEXT_FORMAT_HINT = (
    "ask for this column in text format (psycopg: binary=False), or describe the "
    "statement before binding it so that the gateway can ask for text itself"
)
# Commands whose result columns come from a statement the analysis does not see.
_OPAQUE_COMMANDS = frozenset({"EXECUTE", "FETCH", "MOVE"})
# Server messages that belong to a statement's response (dropped after a block).
_RESPONSE_TYPES = b"TDCnsIE123tHdcVZN"
# Messages that are not part of one response and leave even while one is dropped:
# notifications and parameter changes (their values are screened).
_ASYNC_TYPES = b"AS"
_RECORD_TYPES = b"CIEZN"
_MISSING_RELATION = re.compile(r'relation "(.+)" does not exist')
# The ParameterStatus that tells a client which result columns of its last
# simple Query were masked (see _report).
REPORT_PARAMETER = "dbaccess.masked_columns"

Touched = Callable[[], Iterable[ColumnRef] | None]


@dataclass
class _Item:
    """Something the client sent that the server answers, in order."""

    kind: str  # Q, DS (describe statement), DP (describe portal), X (execute), SYNC, F
    name: str = ""
    sql: str = ""
    analysis: Analysis | None = None
    started: int | None = None  # time.monotonic_ns() when sent, for its recording
    plan: MaskPlan | None = None
    formats: tuple[int, ...] = ()
    rows: int = 0
    tag: str | None = None
    sqlstate: str | None = None
    decision: str = "allowed"
    masked: list[dict[str, str]] = field(default_factory=list)
    plans: list[MaskPlan] = field(default_factory=list)  # a Query's results', for its access facts
    serial: int = 0  # a Query's number on the connection (for REPORT_PARAMETER)
    done: int = 0  # a Query's statements completed so far: the next one's index
    results: int = 0  # a Query's RowDescriptions so far
    reported: list[dict[str, object]] = field(default_factory=list)
    params: tuple[bytes | None, ...] | None = None  # an Execute's Bind parameters
    opaque: bool | None = None  # what it runs is not in its text (EXECUTE, CALL ...); None: unread
    # Where a long Query's statements end (for its recording), read with its
    # analysis in a worker process; ``ends_read`` False: read when needed.
    ends: list[int] | None = None
    ends_read: bool = False
    param_formats: tuple[int, ...] = ()
    # What a Describe or Execute was sent for: the very statement or portal the
    # server will answer about, even if the client has since parsed or bound
    # another under the same name (its answer must not describe the new one).
    statement: _Statement | None = None
    portal: _Portal | None = None
    # A Query's, Sync's or FunctionCall's entry in the connection's state, which
    # the ReadyForQuery that answers it names (``ConnectionState.answered``).
    entry: object = None
    function: int | None = None  # a FunctionCall's function, by OID


@dataclass(eq=False)
class _Statement:
    """One Parse: its text, analysis, and the plan its Describe answered with."""

    sql: str
    analysis: Analysis | None
    plan: MaskPlan | None = None
    # The guard's analysis of it (with the session's search path), taken from the
    # relay at its first Bind: what its executions' access facts are made of.
    guarded: Analysis | None = None


@dataclass(eq=False)
class _Portal:
    statement: _Statement | None  # the statement the Bind named, as it was then
    formats: tuple[int, ...]  # the result formats sent upstream
    plan: MaskPlan | None = None
    client_formats: tuple[int, ...] | None = None  # what the client asked, when not sent
    params: tuple[bytes | None, ...] = ()  # kept for the recording only
    param_formats: tuple[int, ...] = ()


# Fields of an error that name no value: severity, SQLSTATE, position in the
# client's own text, the server's source location, and the names of the schema,
# table, column, type and constraint involved.
_NAMING_FIELDS = frozenset("SVCPFLRstcdn")
# Errors whose texts are about the session, never about a value: privileges
# (the database's own column walls), cancellation, shutdown, an aborted
# transaction, serialization failures and deadlocks.
_VALUELESS_ERRORS = frozenset(
    {"42501", "57014", "57P01", "57P02", "57P03", "25P02", "40001", "40P01"}
)
# The endings of the guard's refusals for what a statement costs to read (54000,
# not 42501): ``statements._error_response`` puts the rule last.
_LIMIT_REFUSALS: Final = tuple(f"({rule})" for rule in sorted(analysis_limits.RULES))
WITHHELD_HINT = (
    "the statement reads masked columns; run it without them to see the server's message"
)


def _withheld(fields: dict[str, str]) -> dict[str, str]:
    """An error of a statement that reads masked columns, its texts withheld.

    A value the statement computed from a masked column can come back quoted in
    almost any message (``invalid input syntax``, ``relation "..." does not
    exist``, ``unrecognized configuration parameter``, a JSON parser's context
    line), so rather than recognise every such form, the message, detail,
    context and internal query are replaced; what names no value is kept.
    """
    kept = {code: value for code, value in fields.items() if code in _NAMING_FIELDS}
    code = fields.get("C", "XX000")
    kept["M"] = f"the server's message is withheld (SQLSTATE {code}): it may quote masked values"
    kept["H"] = WITHHELD_HINT
    return kept


# What masking keeps on the connection's prepared statements and portals
# (``server.gateway.connection``): they live and die with the entries.
_STATEMENT: Note[_Statement] = Note("masking")
_PORTAL: Note[_Portal] = Note("masking")


def _statement_of(portal: _Portal | None) -> _Statement | None:
    return portal.statement if portal is not None else None


def _statement_named(state: ConnectionState, name: str) -> _Statement | None:
    entry = state.statement(name)
    return entry.note(_STATEMENT) if entry is not None else None


def _portal_named(state: ConnectionState, name: str) -> _Portal | None:
    entry = state.portal(name)
    return entry.note(_PORTAL) if entry is not None else None


def _note_masked(item: _Item, plan: MaskPlan) -> None:
    """Count a result of a simple Query, keeping its masked columns for the
    Query's report (``MaskingHooks._report``)."""
    index = item.results
    item.results += 1
    columns = [
        {"position": i, "name": f.name, "method": str(f.method or "")}
        for i, f in enumerate(plan.fields)
        if f.action is Action.MASK
    ]
    if columns:
        item.reported.append({"result": index, "columns": columns})


class MaskingHooks:
    def __init__(
        self,
        rules: MaskingRules,
        catalog: Catalog | None,
        *,
        session_id: str,
        record: RecordFn | None = None,
        search_path: tuple[str, ...] = ("public",),
        access: AccessContext | None = None,
        limits: AnalysisLimits = DEFAULT_ANALYSIS_LIMITS,
        exempt: MaskingRules | None = None,
    ) -> None:
        self.rules = rules
        # A session exempt from masking: the rules it is exempt from, for its
        # access facts only (``_on_exempt_result``).
        self._exempt = (
            exempt
            if exempt is not None and exempt.active and access is not None and not rules.active
            else None
        )
        self.limits = limits  # the guard's, whose oversize refusals are skipped here
        self.masking = rules.active
        self.detectors = rules.detector_set
        self.detecting = self.detectors.enabled
        self.copying = False  # a COPY out whose rows the detectors look at
        self.catalog = catalog
        self.session_id = session_id
        self._record_event = record
        self.search_path = search_path
        self._access = access
        self._reviewed: dict[str, str] = {}  # the relay's (``Relay.reviewed``) once installed
        self._analysed: dict[str, Analysis] = {}  # the relay's (``Relay.analysed``)
        self._relay: Relay | None = None  # once installed
        self.pending: deque[_Item] = deque()
        # The lineage of long texts' results, read with their analysis in a worker
        # process (``_read_lineage_ahead``), for the catalog snapshot it used.
        self._lineage_ahead: dict[str, tuple[CatalogSnapshot, Lineage | None]] = {}
        # Plans of results already seen (``_plan``), for the snapshot they were made with.
        self._plans: dict[tuple[bytes, object, int], MaskPlan] = {}
        self._described: dict[bytes, RowDescription] = {}  # RowDescriptions by their bytes
        # Whether a statement names relations with masked columns (``_touches_masked``).
        self._touches: dict[object, bool] = {}
        self._plans_of: CatalogSnapshot | None = None  # the snapshot both were made with
        self.dropping = False
        # Since the last ReadyForQuery: whether a result was refused, and what ran
        # that may have changed something (``_completed``).
        self._refused = False
        self._ran: list[tuple[str, _Item, int]] = []
        self._ran_more = False  # more ran than _RAN_KEPT
        # DDL completed since the catalog was last reloaded for it (``_reload_after_ddl``).
        self._catalog_changed = False
        self._ddl_reloaded = float("-inf")
        self._queries = 0
        self._reported = ""  # the last REPORT_PARAMETER value sent

    # -- installing ---------------------------------------------------------------
    def install(self, relay: Relay) -> None:
        self._reviewed = relay.reviewed
        self._analysed = relay.analysed
        self._relay = relay
        client: dict[bytes, Hook] = {
            b"Q": self._on_query,
            b"P": self._on_parse,
            b"B": self._on_bind,
            b"D": self._on_describe,
            b"E": self._on_execute,
            b"S": self._on_sync,
            b"F": self._on_function_call,
        }
        for types, hook in client.items():
            _chain_client(relay, types, hook)
        screening = self.masking or self.detecting
        for t in _RESPONSE_TYPES + _ASYNC_TYPES if screening else _RECORD_TYPES:
            _chain_server(relay, bytes((t,)), self._on_server)
        if self._exempt is not None and not screening:
            for t in b"Tn":
                _chain_server(relay, bytes((t,)), self._on_exempt_result)
        if screening and relay.server_hook(68) == self._on_server:
            # Nothing chained before it on DataRows: whole runs of them can be
            # masked in one call (see _on_rows).
            relay.on_server_run(b"D", self._on_rows)

    # -- client messages ------------------------------------------------------------
    def _on_query(self, raw: RawMessage, relay: Relay) -> None:
        if not relay.state.journalled:
            return  # the server skips it (after an error) or its COPY reads it
        self._queries += 1
        head = oversize_head(raw.type, raw.body, self.limits)
        if head is not None:
            # The guard refuses it unread and the server gets a stand-in: nothing
            # here decodes or analyses a text of megabytes (holding the
            # interpreter lock, on the event loop's time) only to drop it.
            item = _Item("Q", sql=head, serial=self._queries, entry=relay.state.entry)
            self._start(item)
            self.pending.append(item)
            return
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Query)
        item = _Item("Q", sql=msg.query, serial=self._queries, entry=relay.state.entry)
        item.analysis = self._analyze(msg.query)
        self._read_lineage_ahead(msg.query, item.analysis)
        if (
            item.analysis is not None
            and len(item.analysis.statements) > 1
            and analysis_pool.offload(msg.query) is not None
        ):
            # Its recording splits it by statement: sqlglot's tokenizer holds the
            # interpreter lock for as long as it reads a long text, on whatever
            # thread (the recorder's writer included), so that is read here.
            item.ends = analysis_pool.read(msg.query, statement_ends, None, DEFAULT_TIME_BUDGET)
            item.ends_read = True
        self._start(item)
        self.pending.append(item)

    def _on_parse(self, raw: RawMessage, relay: Relay) -> None:
        entry = relay.state.parsed
        if entry is None or oversize_head(raw.type, raw.body, self.limits) is not None:
            # Refused by the guard, unread (see _on_query): the server fails the
            # stand-in's Parse, so nothing is known of it here.  Or its name is
            # taken: the state holds nothing under it any more.
            return
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Parse)
        analysis = self._analyze(msg.query)
        self._read_lineage_ahead(msg.query, analysis)
        entry.annotate(_STATEMENT, _Statement(msg.query, analysis))

    def _read_lineage_ahead(self, sql: str, written: Analysis | None) -> None:
        """For a long text, in an analysis thread: its result's lineage, read now in
        a worker process, since ``_lineage`` runs on the event loop when the result
        comes (parsing a long text there would stall every connection).  Only
        the relations whose names the statement uses are sent along."""
        snapshot = self.catalog.current if self.catalog is not None else None
        if (
            snapshot is None
            or written is None
            or written.unknown
            or len(written.statements) != 1
            or analysis_pool.offload(sql) is None
        ):
            return
        names = {name.name for st in written.walk_all() for name in (*st.reads, *st.writes)}
        columns = {
            Name((found[0].schema, found[0].table)): [c.column for c in found]
            for found in snapshot.by_relation.values()
            if found and found[0].table in names
        }
        lineage = analysis_pool.read_with(
            sql, result_lineage_of, None, DEFAULT_TIME_BUDGET, self.search_path, columns
        )
        if len(self._lineage_ahead) >= _LINEAGE_AHEAD_KEPT:
            self._lineage_ahead.pop(next(iter(self._lineage_ahead)))
        self._lineage_ahead[sql] = (snapshot, lineage)

    def _analyze(self, sql: str) -> Analysis | None:
        # Only masking needs it: analysed as the guard's masking check analyses it
        # (names left unqualified, resolved against the catalog by _touched), so
        # that the analysis cache answers rather than a second analysis.
        return analysis_pool.analyze(sql, search_path=(UNQUALIFIED,)) if self.masking else None

    def _on_bind(self, raw: RawMessage, relay: Relay) -> bytes | None:
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Bind)
        statement = _statement_named(relay.state, msg.statement)
        portal = _Portal(statement, tuple(msg.result_formats))
        if statement is not None and statement.guarded is None and self._access is not None:
            statement.guarded = self._analysed.get(statement.sql)
        if self._record_event is not None:
            portal.params = tuple(None if p is None else bytes(p) for p in msg.params)
            portal.param_formats = tuple(msg.param_formats)
        entry = relay.state.bound
        if entry is not None:
            entry.annotate(_PORTAL, portal)
        plan = statement.plan if statement is not None and self.masking else None
        if plan is None or plan.clear:
            return None
        try:
            wanted = plan.bind_formats(msg.result_formats)
        except ProtocolViolation:
            return None  # format codes that do not fit: the server refuses the Bind
        if wanted is None:
            return None
        # Binary asked for a column only its text can be masked from: text
        # upstream; the column is announced as text, whose bytes are the same
        # in both formats, so the client still gets the format it asked for.
        portal.client_formats = tuple(expand_formats(msg.result_formats, len(plan.fields)))
        portal.formats = tuple(wanted)
        return Bind(msg.portal, msg.statement, msg.param_formats, msg.params, list(wanted)).encode()

    def _on_describe(self, raw: RawMessage, relay: Relay) -> None:
        if not relay.state.journalled:
            return
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Describe)
        kind = "DS" if msg.kind == "S" else "DP"
        state = relay.state
        portal = _portal_named(state, msg.name) if kind == "DP" else None
        statement = _statement_named(state, msg.name) if kind == "DS" else _statement_of(portal)
        item = _Item(kind, name=msg.name, statement=statement, portal=portal)
        if statement is not None:
            item.sql, item.analysis = statement.sql, statement.analysis
        self.pending.append(item)

    def _on_execute(self, raw: RawMessage, relay: Relay) -> None:
        if not relay.state.journalled:
            return
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Execute)
        portal = _portal_named(relay.state, msg.portal)
        statement = _statement_of(portal)
        item = _Item("X", name=msg.portal, statement=statement, portal=portal)
        if statement is not None:
            item.sql, item.analysis = statement.sql, statement.analysis
        if portal is not None and self._record_event is not None:
            item.params, item.param_formats = portal.params, portal.param_formats
        self._start(item)
        self.pending.append(item)

    def _on_sync(self, raw: RawMessage, relay: Relay) -> None:
        if relay.state.journalled:
            self.pending.append(_Item("SYNC", entry=relay.state.entry))

    def _on_function_call(self, raw: RawMessage, relay: Relay) -> None:
        # Answered by a ReadyForQuery, as a Sync; skipped, unlike a Sync, after an
        # error in the extended protocol.  Recorded as a statement ``FunctionCall``
        # whose tag names the function by the OID it was called by (no literal for
        # redaction to hide), its arguments as parameters.
        if not relay.state.journalled:
            return
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, FunctionCall)
        item = _Item("F", entry=relay.state.entry, function=msg.function_oid)
        item.sql, item.tag = "FunctionCall", f"FunctionCall {msg.function_oid}"
        if self._record_event is not None:
            item.params, item.param_formats = tuple(msg.args), tuple(msg.arg_formats)
            self._start(item)
        self.pending.append(item)

    def _start(self, item: _Item) -> None:
        if self._record_event is not None:
            item.started = time.monotonic_ns()

    # -- server messages --------------------------------------------------------------
    def _on_server(self, raw: RawMessage, relay: Relay) -> bytes | None:
        t = raw.type
        if t == 90:  # Z
            self.dropping = False
            self.copying = False
            if self.catalog is not None:
                # Once a Query or pipeline is answered: DDL it committed, or a
                # snapshot grown old, has the catalog reloaded.
                if self._catalog_changed and raw.body[:1] == b"I":
                    self._reload_after_ddl()
                else:
                    self.catalog.reload_if_old()
            report = self._report()
            self._ready(relay.state.answered)
            refused, self._refused = self._refused, False
            ran, self._ran = self._ran, []
            changed = self._changed(ran) if refused else []
            self._ran_more = False
            if changed:
                # Committed (a COMMIT may have run among them, whatever the status
                # says), or to be committed by a client that takes them for rolled
                # back or skipped: closing rolls back what is still open.
                raise GatewayError(
                    STATEMENT_COMPLETION_UNKNOWN,
                    "a result was refused in a Query or pipeline whose statements the "
                    f"server ran and committed ({', '.join(changed)}): the connection is "
                    "closed so that they are not taken for rolled back or skipped",
                    RAN_AFTER_HINT,
                )
            return None if report is None else report + bytes(raw.wire)
        if t == 78:  # N
            if self.masking or self.detecting:
                exposed = self._may_quote_masked(self.pending[0] if self.pending else None)
                out = self._cleaned(pgwire.decode_backend(raw), exposed)
            else:
                out = None
            self._record_notice(raw if out is None else out)
            return out
        if t == 65:  # A
            return self._on_notification(raw)
        if t == 83:  # S
            return self._on_parameter(raw)
        if self.dropping:
            self._while_dropping(raw, relay)
            return b""
        head = self.pending[0] if self.pending else None
        if t == 68:  # D
            return self._on_row(raw, head)
        if t == 84:  # T
            return self._on_row_description(raw, head)
        if t == 72 and self.masking and (head is None or self._touches_masked(head)):
            # H: COPY OUT carries whole rows with no column origins to mask by,
            # so COPY from a table with masked columns is refused.  (CopyBoth
            # only answers replication, which the gateway refuses at startup.)
            return self._block(
                head,
                "COPY out of a table with masked columns",
                hint="select the columns instead: masked values cannot leave through COPY",
            )
        if t == 100:  # d
            return self._on_copy_data(raw, head) if self.copying else None
        if t == 86 and self.detecting:  # V
            return self._on_function_result(raw, head)
        if t == 72:  # H, allowed
            self.copying = self.detecting
            return None
        if t == 99:  # c
            self.copying = False
            return None
        if t == 69:  # E
            own = relay.made_here
            # Which message the server's error answers, from the connection's state
            # (a guard's refusal stands in for that error; a cut's error for the
            # rest of an Execute's or a Query's answer).
            extended = (
                head is not None and head.kind in ("X", "DS", "DP")
                if relay.cut_made
                else relay.state.extended_error
            )
            return self._on_error(raw, head, own=own, extended=extended)
        if t in (67, 115, 73):  # C, s, I
            self.copying = False
            if head is not None and head.kind in ("Q", "X"):
                self._completed(t, raw, head)
                if head.kind == "Q":
                    head.plan = None
            return None
        if t == 110 and head is not None and head.kind in ("DS", "DP"):  # n: NoData
            self.pending.popleft()
        return None

    def _on_row_description(self, raw: RawMessage, head: _Item | None) -> bytes | None:
        msg = self._row_description(raw)
        if head is None or head.kind not in ("Q", "DS", "DP"):
            return self._block(head, "a result whose statement the gateway cannot tell")
        plan = self._plan(msg, head, raw.body)
        if head.kind != "Q":
            self.pending.popleft()
        if plan.blocked is not None:
            return self._block(head, plan.block_message() or "", plan=plan)
        formats = tuple(f.format for f in msg.fields)
        client_formats: tuple[int, ...] | None = None
        if head.kind == "Q":
            head.plan, head.formats = plan, formats
            if self._access is not None:
                head.plans.append(plan)
        elif head.kind == "DS":
            if head.statement is not None:
                head.statement.plan = plan
        else:
            portal = head.portal
            if portal is not None:
                portal.plan = plan
                portal.formats = formats
                client_formats = portal.client_formats
        if plan.clear:
            if head.kind == "Q":
                head.results += 1
            return None
        unmaskable = plan.unmaskable(formats)
        if unmaskable is not None:
            # Bound in binary before the gateway knew the shape (Parse, Bind and
            # Describe in one go): the value's text is not there to mask from.
            return self._unmaskable(head, unmaskable.name)
        SIGNALS.masked_results += 1
        SIGNALS.masked_columns += len(plan.masked)
        if head.kind == "Q":
            head.masked.extend(plan.summary())
        out = None
        if any(f.retype for f in plan.fields):
            out = RowDescription(plan.row_description(msg.fields, client_formats)).encode()
        if head.kind == "Q":
            _note_masked(head, plan)
        return out

    def _on_exempt_result(self, raw: RawMessage, relay: Relay) -> None:
        """A RowDescription (or NoData) in a session exempt from masking: what the
        rules it is exempt from would have masked, for the statement's access
        facts (:func:`exempted`); the result goes on as it is, never refused."""
        head = self.pending[0] if self.pending else None
        if head is None or head.kind not in ("Q", "DS", "DP"):
            return None
        if raw.type == 110:  # n: NoData
            if head.kind != "Q":
                self.pending.popleft()
            return None
        msg = self._row_description(raw)
        plan = self._plan(msg, head, raw.body)
        if head.kind == "Q":
            head.plans.append(plan)
            return None
        self.pending.popleft()
        if head.kind == "DS":
            if head.statement is not None:
                head.statement.plan = plan
        elif head.portal is not None:
            head.portal.plan = plan
        return None

    def _report(self) -> bytes | None:
        """A ParameterStatus ``dbaccess.masked_columns`` ahead of the ReadyForQuery
        that ends a simple Query with masked columns: which columns of which of
        its results (by index) left masked, with the Query's number on the
        connection, as JSON.

        A ParameterStatus is what the protocol lets a server send at any time
        and clients keep by name without showing it (psql and the drivers), so
        psql users see nothing new while ``dbaccess exec`` reads it once its
        Query is done (``PQparameterStatus``) to mark masked columns.  The
        column origins the client receives could not say it: a masked
        expression has none, and the client does not know the rules.  Sent
        once per Query, not ahead of each result: a Query of thousands of
        statements would make each report longer than the last, the square of
        their number in all.  Only Queries with masked columns send one."""
        head = self.pending[0] if self.pending else None
        if head is None or head.kind != "Q" or not head.reported:
            return None
        value = json.dumps({"query": head.serial, "results": head.reported}, separators=(",", ":"))
        if value == self._reported:
            return None
        self._reported = value
        return ParameterStatus(REPORT_PARAMETER, value).encode()

    def _row_plan(self, head: _Item | None) -> tuple[MaskPlan | None, tuple[int, ...]]:
        """The plan and formats of the rows ``head`` is answered with (None: not described)."""
        if head is not None and head.kind == "Q":
            return head.plan, head.formats
        if head is not None and head.kind == "X":
            portal = head.portal
            if portal is not None:
                plan = portal.plan or (portal.statement.plan if portal.statement else None)
                if plan is not None and not plan.clear and not head.masked:
                    head.masked.extend(plan.summary())
                return plan, portal.formats
        return None, ()

    def _on_row(self, raw: RawMessage, head: _Item | None) -> bytes | None:
        plan, formats = self._row_plan(head)
        if plan is None:
            if not self.masking:
                # Detectors only: no shape needed, and with no column known to be
                # text every finding becomes NULL.
                return self._screened(raw, None, head, None)
            return self._block(
                head,
                "rows of a portal whose columns were not described",
                hint="describe the portal (or the statement) before executing it",
            )
        if plan.clear:
            return self._screened(raw, None, head, plan) if self.detecting else None
        masker = plan.masker(formats)
        if masker.unmaskable is not None:
            return self._unmaskable(head, masker.unmaskable.name)
        out = masker.message(raw.body)
        return self._screened(raw, out, head, plan) if self.detecting else out

    def _on_rows(self, buf: bytes, pos: int, relay: Relay) -> tuple[int, bytes] | None:
        """A run of DataRows from ``pos`` in one go, in the common case: rows of a
        known shape, no content detectors.  Anything else (no plan, a refusal to
        make, detectors, rows being dropped) goes to ``_on_row``, row by row."""
        if self.dropping or self.detecting or not self.pending:
            return None
        plan, formats = self._row_plan(self.pending[0])
        if plan is None:
            return None
        if plan.clear:
            # Forwarded as they are: only the run's end is needed (from_server
            # has checked every length word in ``buf``).
            stop = row_run(buf, pos)[0]
            return stop, buf[pos:stop]
        masker = plan.masker(formats)
        if masker.unmaskable is not None:
            return None
        out: list[bytes] = []
        stop = masker.rewrite_rows(buf, pos, out)
        if stop == pos:
            return None
        return stop, b"".join(out)

    def _screened(
        self, raw: RawMessage, masked: bytes | None, head: _Item | None, plan: MaskPlan | None
    ) -> bytes | None:
        """The content detectors over a row on its way out (``masked``: the masked message)."""
        body = raw.body if masked is None else memoryview(masked)[5:].tobytes()
        if plan is None:
            screened = screen_row(self.detectors, body)
        else:
            screened = screen_row(
                self.detectors, body, plan.names, in_place=plan.in_place, scanned=plan.scanned
            )
        if screened.blocked is not None:
            return self._block(head, "", message=screened.blocked, hint=DETECTOR_HINT)
        if screened.body is None:
            return masked
        return pgwire.encode_raw(68, screened.body)

    def _unmaskable(self, head: _Item | None, name: str) -> bytes:
        return self._block(
            head,
            "",
            message=f"result column {name!r} is masked from its text, and it was asked "
            "for in binary",
            hint=TEXT_FORMAT_HINT,
        )

    def _on_copy_data(self, raw: RawMessage, head: _Item | None) -> bytes | None:
        # Where a COPY row's fields start depends on the COPY's options, which
        # the gateway does not parse: a finding refuses the COPY, whatever its
        # action, rather than a rewrite that could shift the fields.
        found = self.detectors.scan_bytes(raw.body)
        if not found:
            return None
        self.copying = False
        return self._block(
            head,
            "",
            message=f"a COPY row holds what the {found[0].kind} detector ({found[0].name}) "
            "recognises",
            hint=COPY_DETECTOR_HINT,
        )

    def _on_function_result(self, raw: RawMessage, head: _Item | None) -> bytes | None:
        # A FunctionCall's result (the large-object functions, where a scope
        # allows them) in a format the gateway does not track: what the
        # detectors find empties the whole value.
        msg = pgwire.decode_backend(raw)
        assert isinstance(msg, FunctionCallResponse)
        found = self.detectors.scan_bytes(msg.result) if msg.result is not None else []
        if not found:
            return None
        blocked = self.detectors.blocking(found)
        if blocked is not None:
            return self._block(
                head,
                "",
                message=f"a function result holds what the {blocked.kind} detector "
                f"({blocked.name}) recognises",
                hint=DETECTOR_HINT,
            )
        return FunctionCallResponse(None).encode()

    def _on_notification(self, raw: RawMessage) -> bytes | None:
        msg = pgwire.decode_backend(raw)
        assert isinstance(msg, NotificationResponse)
        payload = screen_notification(msg.payload, masked=self.masking, detectors=self.detectors)
        if payload == msg.payload:
            return None
        return NotificationResponse(msg.pid, msg.channel, payload).encode()

    def _on_parameter(self, raw: RawMessage) -> bytes | None:
        msg = pgwire.decode_backend(raw)
        assert isinstance(msg, ParameterStatus)
        if msg.name == REPORT_PARAMETER:
            return b""  # the gateway's own: never the server's
        value = screen_parameter(
            msg.name,
            msg.value,
            masked=self.masking,
            detectors=self.detectors,
            written=self._written,
        )
        if value == msg.value:
            return None
        return ParameterStatus(msg.name, value).encode()

    def _written(self, value: str) -> bool:
        """Whether SQL the client sent (pending, or a prepared statement) holds ``value``."""
        if any(value in item.sql for item in self.pending):
            return True
        state = self._relay.state if self._relay is not None else None
        for entry in state.prepared() if state is not None else ():
            statement = entry.note(_STATEMENT)
            if statement is not None and value in statement.sql:
                return True
        return False

    def _on_error(
        self, raw: RawMessage, head: _Item | None, *, own: bool = False, extended: bool = True
    ) -> bytes | None:
        """``own``: the gateway made this error (a cut result's, a refusal the guard
        swapped in), so no server text is in it and it is kept as it is."""
        self.copying = False
        msg = pgwire.decode_backend(raw)
        fields: dict[str, str] = msg.fields if isinstance(msg, ErrorResponse) else {}
        code = fields.get("C")
        if head is not None and head.kind in ("Q", "X", "F"):
            head.sqlstate = code
            message = fields.get("M", "")
            if message.startswith("dbaccess:") and (
                code == SQLSTATE or (own and message.endswith(_LIMIT_REFUSALS))
            ):
                head.decision = "blocked"
        if extended:
            self._skip_to_sync()
        if own:
            return None
        # The gateway's own refusals are 42501 too, so they keep their text.
        valueless = code in _VALUELESS_ERRORS
        exposed = not valueless and self._may_quote_masked(head, fields)
        if exposed and head is not None and head.kind in ("Q", "X"):
            return ErrorResponse(_withheld(fields)).encode()
        return self._cleaned(msg, exposed)

    def _cleaned(self, msg: pgwire.Message, exposed: bool) -> bytes | None:
        """A report with what masking and the detectors hide taken out; None: unchanged.
        ``exposed``: it may quote masked data (see ``_may_quote_masked``)."""
        if not isinstance(msg, ErrorResponse | NoticeResponse):
            return None
        cleaned = msg.fields
        if self.masking and exposed:
            cleaned = redact_report(cleaned, touches_masked=True)
        if self.detecting:
            cleaned = screen_report(cleaned, self.detectors)
        if cleaned == msg.fields:
            return None
        return type(msg)(cleaned).encode()

    def _may_quote_masked(self, item: _Item | None, fields: dict[str, str] | None = None) -> bool:
        """Whether an error or notice arriving now may quote masked data: it comes
        from a statement that reads or writes a table with masked columns, or
        one of which that cannot be told.  In a simple Query of several
        statements, only the statement running now counts (the one after those
        completed): a statement on tables without masked columns gets the
        server's own text, whatever the statements around it do.

        A relation the catalog does not know makes a statement's tables unknown,
        except for the error that says the relation does not exist: PostgreSQL
        raises it before the statement reads anything, and it quotes the name
        as the statement wrote it."""
        if not self.masking:
            return False
        if item is None or item.kind not in ("Q", "X"):
            return True  # not a statement's answer (a Parse's, say): texts redacted
        index = item.done if item.kind == "Q" else None
        touched = self._touched(item, index)
        if touched is not None:
            return any(self.rules.rule_for(c) is not None for c in touched)
        return not (fields is not None and self._names_a_missing_relation(item, index, fields))

    def _names_a_missing_relation(
        self, item: _Item, index: int | None, fields: dict[str, str]
    ) -> bool:
        """The error is 42P01 about a relation the statement names and the catalog
        does not hold, and every relation it does hold is free of masked columns."""
        found = _MISSING_RELATION.fullmatch(fields.get("M", ""))
        snapshot = self.catalog.current if self.catalog is not None else None
        written = item.analysis
        if fields.get("C") != "42P01" or found is None or snapshot is None or written is None:
            return False
        tops = _statements(written, index)
        if tops is None or any(s.command in _OPAQUE_COMMANDS for s in _walk(tops)):
            return False

        def holds(name: Name) -> bool:
            return bool(snapshot.columns_of(name.parts[0], name.name))

        missing: set[str] = set()
        for statement in _walk(tops):
            for name in (*statement.reads, *statement.writes):
                resolved = resolve_name(name, self.search_path, holds)
                if resolved is None:
                    missing.add(name.name if name.schema == UNQUALIFIED else str(name))
                    continue
                for relation in resolved:
                    columns = snapshot.columns_of(relation.parts[0], relation.name)
                    if any(self.rules.rule_for(c) is not None for c in columns):
                        return False
        return found.group(1) in missing

    # -- deciding -----------------------------------------------------------------------
    def _row_description(self, raw: RawMessage) -> RowDescription:
        """A RowDescription, decoded once per connection for each form it takes: a
        statement's results come described in the same bytes every time (read only,
        like the plans made from it)."""
        described = self._described
        msg = described.get(raw.body)
        if msg is None:
            decoded = pgwire.decode_backend(raw)
            assert isinstance(decoded, RowDescription)
            if len(described) >= _PLANS_KEPT:
                described.clear()
            msg = described[bytes(raw.body)] = decoded
        return msg

    def _plan(self, msg: RowDescription, item: _Item, body: bytes) -> MaskPlan:
        """The plan of a result, kept per connection by what decides it: the
        RowDescription's bytes, the statement (its literal-insensitive shape,
        or its exact text where the plan read the text's lineage, since a
        number can choose a column: ``(array[a, b])[1]``), which statement of
        the Query is running, and the catalog snapshot."""
        snapshot = self._kept_for_snapshot()
        analysis = item.analysis
        done = item.done if item.kind == "Q" else -1
        shape = analysis.shape if analysis is not None else None
        if item.sql is not None:
            for key in ((body, shape, done), (body, item.sql, done)):
                if key[1] is not None:
                    known = self._plans.get(key)
                    if known is not None:
                        return known

        def origin(oid: int, attnum: int) -> ColumnRef | None:
            return snapshot.origin(oid, attnum) if snapshot is not None else None

        read_text = [False]

        def lineage() -> dict[int, list[ColumnRef]] | None:
            read_text[0] = True
            return self._lineage(item, len(msg.fields))

        if self._exempt is not None:
            plan = exempted(
                plan_for_row_description(
                    msg.fields,
                    origin,
                    self._exempt,
                    # Nothing is read for an exempt session's facts: a view's column
                    # stands for itself, a computed one is left out.
                    lambda: _own_origins(msg.fields, origin),
                    touched=lambda: (),
                )
            )
        else:
            plan = plan_for_row_description(
                msg.fields,
                origin,
                self.rules,
                lineage,
                # In a Query, the statement running now (the one after those completed).
                touched=lambda: self._touched(item, item.done if item.kind == "Q" else None),
            )
        if item.sql is not None and len(item.sql) <= _PLAN_KEY_TEXT:
            which = item.sql if read_text[0] or shape is None else shape
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            self._plans[(body, which, done)] = plan
        return plan

    def _lineage(self, item: _Item, width: int) -> dict[int, list[ColumnRef]] | None:
        """The catalog columns each result column of the item's statement is
        computed from (``result_lineage``); None: cannot tell."""
        snapshot = self.catalog.current if self.catalog is not None else None
        written = item.analysis
        if snapshot is None or written is None or written.unknown or not item.sql:
            return None
        if item.opaque is None:
            # Once per item: a Query's results come one per statement.
            item.opaque = any(s.command in _OPAQUE_COMMANDS for s in written.walk_all())
        if item.opaque:
            return None  # what runs is not in this text
        sql = item.sql
        if item.kind == "Q" and len(written.statements) > 1:
            # A Query of several statements: the result is the running one's
            # (the one after those completed), read from its own exact text.
            if item.done >= len(written.statements):
                return None
            sql = written.statements[item.done].text
            if len(sql) >= MAX_TEXT:
                return None  # cut for messages: not the whole statement
        known: dict[Name, dict[str, ColumnRef]] = {}

        def columns(name: Name) -> list[str] | None:
            found = snapshot.columns_of(name.parts[0], name.name) if len(name.parts) == 2 else ()
            if not found:
                return None
            known[name] = {c.column: c for c in found}
            return [c.column for c in found]

        ahead = self._lineage_ahead.get(sql)
        if ahead is not None and ahead[0] is snapshot:
            lineage = ahead[1]
            for name in {name for sources in lineage or () for name, _ in sources}:
                columns(name)  # the ColumnRefs of the relations it names
        else:
            lineage = result_lineage(sql, self.search_path, columns)
        if lineage is None or len(lineage) != width:
            # A result of another width than the text's is not the text's.
            return None
        return {
            position: [known[name][column] for name, column in sources]
            for position, sources in enumerate(lineage)
        }

    def _touched(self, item: _Item, statement: int | None = None) -> list[ColumnRef] | None:
        """The columns of every relation the item's statements read or write (only
        its ``statement``-th statement's, when given); None: cannot tell."""
        snapshot = self.catalog.current if self.catalog is not None else None
        written = item.analysis
        if snapshot is None or written is None:
            return None
        relations = touched_relations(
            written,
            self.search_path,
            lambda n: bool(snapshot.columns_of(n.parts[0], n.name)),
            statement=statement,
            missing=self._reload_missing,
        )
        if relations is None:
            return None  # a relation the catalog does not know (yet), or opaque
        columns: list[ColumnRef] = []
        for name in relations:
            columns.extend(snapshot.columns_of(name.parts[0], name.name))
        return columns

    def _reload_missing(self) -> None:
        """A relation the catalog does not hold: created since it was loaded, and
        known soon (``Catalog.reload_missing``)."""
        if self.catalog is not None:
            self.catalog.reload_missing()

    def _reload_after_ddl(self) -> None:
        """DDL ran and is committed (ReadyForQuery ``I``): the catalog is reloaded, so
        that what it changed (a column added, a view replaced) is known now rather
        than at the snapshot's age.  At most once a second per connection; a reload
        not asked for yet is asked at a later ReadyForQuery."""
        now = time.monotonic()
        if self.catalog is None or now - self._ddl_reloaded < _DDL_RELOAD_INTERVAL:
            return
        self._ddl_reloaded = now
        self._catalog_changed = False
        self.catalog.reload_soon()

    def _kept_for_snapshot(self) -> CatalogSnapshot | None:
        """The catalog's current snapshot; what was kept for an older one is dropped."""
        snapshot = self.catalog.current if self.catalog is not None else None
        if snapshot is not self._plans_of:
            self._plans.clear()
            self._touches.clear()
            self._plans_of = snapshot
        return snapshot

    def _touches_masked(self, item: _Item) -> bool:
        """Whether the item's statements name a relation with masked columns (or one
        the catalog does not know), kept per statement shape (the relations are the
        analysis's, the same for every text of a shape) or exact text."""
        if not self.masking:
            return False
        self._kept_for_snapshot()
        analysis = item.analysis
        key: object = analysis.shape if analysis is not None and analysis.shape else item.sql
        if key is not None:
            known = self._touches.get(key)
            if known is not None:
                return known
        touched = self._touched(item)
        touches = touched is None or any(self.rules.rule_for(c) is not None for c in touched)
        if key is not None and (not isinstance(key, str) or len(key) <= _PLAN_KEY_TEXT):
            if len(self._touches) >= _PLANS_KEPT:
                self._touches.clear()
            self._touches[key] = touches
        return touches

    def _block(
        self,
        item: _Item | None,
        why: str,
        *,
        plan: MaskPlan | None = None,
        hint: str = BLOCK_HINT,
        message: str | None = None,
    ) -> bytes:
        blocked = plan.blocked if plan is not None else None
        detail: str | None = None
        if blocked is not None:
            message = f"result column {blocked.name!r} may derive from masked data"
            detail = blocked.source or why
        elif message is None:
            message = f"refused {why}: masking applies to this session"
        if item is not None and item.kind in ("Q", "X", "F"):
            item.sqlstate = SQLSTATE
            item.decision = "masking_blocked"
            if plan is not None:
                item.masked.extend(plan.summary())
        # The server had no error: it runs what was sent after the refused result
        # (a Query's later statements, the rest of a pipeline up to its Sync), whose
        # answers are dropped up to the ReadyForQuery but still read (``_while_dropping``).
        self.dropping = True
        self._refused = True
        return pgwire.error_response(
            "ERROR", SQLSTATE, f"dbaccess: {message}", hint=hint, detail=detail
        )

    # -- bookkeeping -----------------------------------------------------------------------
    def _while_dropping(self, raw: RawMessage, relay: Relay) -> None:
        """What the server answers after a refused result, up to the ReadyForQuery: the
        client gets none of it, but each statement that ran is recorded as it ran."""
        t = raw.type
        head = self.pending[0] if self.pending else None
        if head is None:
            return
        if t == 84 or t == 110:  # T, n: a Describe's answer (a Query's result goes on)
            if head.kind in ("DS", "DP"):
                self.pending.popleft()
        elif t in (67, 115, 73):  # C, s, I
            self.copying = False
            if head.kind in ("Q", "X"):
                self._completed(t, raw, head)
        elif t == 69:  # E: the server's own error; after one in a pipeline it skips to the Sync
            msg = pgwire.decode_backend(raw)
            code = msg.fields.get("C") if isinstance(msg, ErrorResponse) else None
            if head.kind in ("Q", "X", "F") and head.sqlstate is None:
                head.sqlstate = code
            if relay.state.extended_error:
                self._skip_to_sync()

    def _completed(self, t: int, raw: RawMessage, head: _Item) -> None:
        """A statement of the head, a Query or an Execute, completed (CommandComplete,
        PortalSuspended, EmptyQueryResponse): its tag counted, an Execute finished,
        and kept until the ReadyForQuery, which tells the client (``_changed``) if a
        result was refused meanwhile and it may have changed something (anything
        but a plain read, or what cannot be told; a DML with RETURNING run part way
        ran whole)."""
        index = head.done
        done: str | None = None
        if t == 67:
            tag = pgwire.decode_backend(raw)
            head.tag = getattr(tag, "tag", None)
            head.rows += _rows(head.tag)
            head.done += 1
            done = head.tag or "a statement"
            if self.catalog is not None and head.tag is not None and head.tag.startswith(_DDL_TAGS):
                self._catalog_changed = True
        elif t == 115:
            done = "a portal run part way"
        if head.kind == "X":
            self.pending.popleft()
            self._finish(head)
            index = 0
        if done is None or not (self.masking or self.detecting):
            # An empty statement ran nothing; a session without rules or detectors
            # has no result refused.
            return
        self._kept_as_ran(done, head, index)

    def _changed(self, ran: list[tuple[str, _Item, int]]) -> list[str]:
        """Of the statements that ran since the last ReadyForQuery, those that may
        have changed something, by what the client would be told of each (at most a
        few named).  Read only when a result was refused meanwhile: a statement
        masking did not analyse (a session with detectors only) is analysed now."""
        changed: list[str] = []
        snapshot = self.catalog.current if self.catalog is not None else None
        functions = snapshot.functions if snapshot is not None else None
        for done, item, index in ran:
            if item.kind == "F":
                if item.function is None or call_may_have_changed(item.function):
                    changed.append(done)
                continue
            if item.kind == "X" and item.portal is None:
                # A portal the connection's state does not hold, mostly a cursor
                # declared in SQL (the guard refuses a Bind of a statement it does not
                # know): nothing to read but its command tag, and a cursor's query
                # may hold no data-modifying statement.
                if done.split(" ", 1)[0] in _QUERY_TAGS:
                    continue
                changed.append(done)
                continue
            analysis = item.analysis
            if analysis is None and item.sql:
                analysis = analysis_pool.analyze(item.sql, search_path=(UNQUALIFIED,))
            statements = analysis.statements if analysis is not None else ()
            if index < len(statements) and not may_have_changed(statements[index], functions):
                continue
            changed.append(done)
        more = self._ran_more or len(changed) > _CHANGED_NAMED
        return changed[:_CHANGED_NAMED] + (["more"] if more else [])

    def _called(self, item: _Item) -> None:
        """A FunctionCall the server answered: kept, as a statement that completed,
        for ``_changed`` (a call by OID may have changed anything: a large object)."""
        if self.masking or self.detecting:
            self._kept_as_ran(item.tag or "FunctionCall", item, 0)

    def _kept_as_ran(self, done: str, item: _Item, index: int) -> None:
        """Kept until the ReadyForQuery (bounded): what ran since the last one."""
        if len(self._ran) < _RAN_KEPT:
            self._ran.append((done, item, index))
        else:
            self._ran_more = True

    def _skip_to_sync(self) -> None:
        """After an error in the extended protocol the server skips to the next Sync:
        a simple Query or a FunctionCall sent before it too, which never run."""
        pending = self.pending
        while pending and pending[0].kind != "SYNC":
            item = pending.popleft()
            if item.kind in ("X", "Q", "F"):
                item.sqlstate = item.sqlstate or "error"
                self._finish(item)

    def _ready(self, answered: object = None) -> None:
        """A ReadyForQuery: the items up to the Query, Sync or FunctionCall it answers
        (``answered``, from the connection's state) are over, and so are those of
        any the server will never answer before it (a Sync a COPY read)."""
        pending = self.pending
        passing = (
            answered is not None
            and bool(pending)
            and pending[0].entry is not answered
            and any(i.entry is answered for i in pending)
        )
        while pending:
            item = pending.popleft()
            if item.kind == "X":
                self._finish(item)
            if item.kind in ("Q", "SYNC", "F"):
                if item.kind != "SYNC":
                    if passing and item.entry is not answered:
                        item.sqlstate = item.sqlstate or "error"  # never ran
                    elif item.kind == "F" and (
                        item.sqlstate is None or item.decision == "masking_blocked"
                    ):
                        self._called(item)  # it ran (its result refused or not)
                    self._finish(item)
                if not passing or item.entry is answered:
                    return

    def _record_notice(self, sent: RawMessage | bytes) -> None:
        """A ``notice`` event with the NoticeResponse as the client got it (read on
        the recorder's writer thread: :func:`notice_data`)."""
        record = self._record_event
        if record is None:
            return
        try:
            record(self.session_id, "notice", sent, notice_data)
        except Exception:  # recording problems never break the relay
            log.exception("recording a notice failed")

    def _finish(self, item: _Item) -> None:
        """The item's ``statement`` event: what masking decided is read here, on the
        data path; the event itself is made on the recorder's writer thread
        (:func:`statement_data`), its text and parameters redacted there."""
        record = self._record_event
        if record is None or item.started is None:
            return
        try:
            touches = self._touches_masked(item)
            hides = self._hides_by_statement(item) if touches and item.kind == "Q" else None
            ends = item.ends if item.ends_read else _UNREAD
            record(
                self.session_id,
                "statement",
                (
                    item.sql,
                    touches,
                    hides,
                    ends,
                    item.params,
                    item.param_formats,
                    item.started,
                    time.monotonic_ns(),
                    item.rows,
                    item.tag,
                    item.sqlstate,
                    item.decision,
                    item.masked,
                    self._access_fields(item),
                ),
                statement_data,
            )
        except Exception:  # recording problems never break the relay
            log.exception("recording a statement failed")

    def _access_fields(self, item: _Item) -> AccessFields | None:
        """What the statement's access facts are made of, by reference (see ``access_facts``)."""
        if self._access is None or item.kind == "F":
            return None  # a FunctionCall names no relation: nothing to tell by its OID
        plans: Sequence[MaskPlan] = item.plans
        if item.kind == "X":
            plan = item.portal.plan if item.portal is not None else None
            plans = (plan,) if plan is not None else ()
        if item.kind == "Q":
            # Only a Query that ran had its analysis kept (and takes it: in order).
            relay = self._relay
            ran = item.decision == ALLOWED and relay is not None
            guarded = relay.take_query_analysis(item.sql) if ran and relay else None
        else:
            guarded = item.statement.guarded if item.statement is not None else None
        snapshot = self.catalog.current if self.catalog is not None else None
        reviewed = self._reviewed.pop(item.sql, None) if self._reviewed else None
        return (self._access, guarded, tuple(plans), snapshot, reviewed)

    def _hides_by_statement(self, item: _Item) -> tuple[bool, ...] | None:
        """For a Query of several statements as analysed: whether each touches a table
        with masked columns (or one that cannot be told), so that its recording
        hides the literals of those only; None: not several."""
        written = item.analysis
        if written is None or len(written.statements) < 2:
            return None
        hides: list[bool] = []
        for index in range(len(written.statements)):
            touched = self._touched(item, index)
            hides.append(
                touched is None or any(self.rules.rule_for(c) is not None for c in touched)
            )
        return tuple(hides)


# ``statement_data``'s fields: where a long Query's statements end was not read ahead.
_UNREAD: Final = "unread"

# The connection's context, the results' plans, the catalog, a statement review's approval.
AccessFields = tuple[
    AccessContext, Analysis | None, tuple[MaskPlan, ...], CatalogSnapshot | None, str | None
]

StatementFields = tuple[
    str,  # the text as sent
    bool,  # it touches masked columns (or what it touches cannot be told)
    tuple[bool, ...] | None,  # a Query of several: the same, per statement
    list[int] | str | None,  # where its statements end, or _UNREAD
    tuple[bytes | None, ...] | None,  # an Execute's Bind parameters
    tuple[int, ...],  # their formats
    int,  # time.monotonic_ns() when sent
    int,  # ... and when answered
    int,  # rows
    str | None,  # command tag
    str | None,  # SQLSTATE
    str,  # decision
    list[dict[str, str]],  # masked fields
    AccessFields | None,  # what its access facts are made of
]


def _statement_parts(fields: StatementFields) -> StatementParts:
    """What the ``statement`` event of ``MaskingHooks._finish``'s fields is made
    of (``statement_made``), read on the recorder's writer thread: the access
    facts (from the guard's analysis and the results' plans, through caches kept
    by identity) and where the statements of a Query of several end."""
    sql, touches, hides, ends, params, formats, started, answered = fields[:8]
    rows, tag, sqlstate, decision, masked, access = fields[8:]
    if touches and hides is not None and isinstance(ends, str):
        ends = statement_ends(sql)
    facts = None
    if access is not None:
        ctx, guarded, plans, snapshot, reviewed = access
        facts = access_facts(
            ctx,
            sql,
            guarded,
            plans,
            snapshot,
            rows=rows,
            tag=tag,
            decision=decision,
            approval=reviewed,
        )
    return (
        sql,
        touches,
        hides,
        None if isinstance(ends, str) else ends,
        params,
        formats,
        answered - started,
        rows,
        tag,
        sqlstate,
        decision,
        masked,
        # A plain tuple: pickle writes those in C (``event_writes``).
        None if facts is None else tuple(facts),
    )


statement_data: Final = TwoStep(_statement_parts, statement_made)
"""A ``statement`` event's data from ``MaskingHooks._finish``'s fields (see
``recording.statement_made``): its access facts read on the recorder's writer
thread, the rest made in its writer process when it has one."""


def notice_data(sent: RawMessage | bytes, _ts_ns: int) -> dict[str, Any] | None:
    """A ``notice`` event's data from the NoticeResponse the client was sent (made on
    the recorder's writer thread); None when it cannot be read as one."""
    try:
        raw = sent if isinstance(sent, RawMessage) else pgwire.split_frames(sent)[0][0]
        msg = pgwire.decode_backend(raw)
    except (ProtocolViolation, IndexError):
        log.warning("a notice the client was sent could not be read for the recording")
        return None
    if not isinstance(msg, NoticeResponse):
        return None
    fields = msg.fields
    data = {
        "severity": fields.get("V") or fields.get("S") or "NOTICE",
        "sqlstate": fields.get("C"),
        "message": fields.get("M", ""),
        "detail": fields.get("D"),
        "hint": fields.get("H"),
    }
    return {k: v for k, v in data.items() if v is not None}


def touched_relations(
    written: Analysis,
    search_path: tuple[str, ...],
    holds: Callable[[Name], bool],
    *,
    statement: int | None = None,
    missing: Callable[[], None] = lambda: None,
) -> list[Name] | None:
    """The relations a statement reads or writes, each as the schema-qualified
    name PostgreSQL resolves it to; None when that cannot be told.

    ``written`` is the statement analysed with :data:`UNQUALIFIED` as its whole
    search_path; ``holds`` says whether the catalog holds a relation.  An
    unqualified name is the first schema of ``search_path`` that holds it, as
    PostgreSQL takes it; one that no schema holds, a qualified one the catalog
    does not hold, an unknown statement and one that runs what the analysis
    cannot see (EXECUTE, FETCH) cannot be told.  A ``pg_*`` name shows as
    ``pg_catalog``'s whether it was written so or not: both are taken.
    ``statement`` limits this to the top-level statement of that index (when
    the text has that many; else cannot be told).  ``missing`` is told of a
    name no schema holds (the catalog may not have it yet), not of an opaque
    statement.
    """
    tops = _statements(written, statement)
    if tops is None:
        return None
    found: dict[Name, None] = {}
    for part in _walk(tops):
        if part.kind is StatementClass.UNKNOWN or part.command in _OPAQUE_COMMANDS:
            return None
        for name in (*part.reads, *part.writes):
            resolved = resolve_name(name, search_path, holds)
            if resolved is None:
                missing()
                return None
            found.update(dict.fromkeys(resolved))
    return list(found)


def _statements(written: Analysis, index: int | None) -> tuple[Statement, ...] | None:
    """The top-level statements of ``written`` (only the ``index``-th, when given)."""
    if index is None:
        return written.statements
    if index >= len(written.statements):
        return None
    return (written.statements[index],)


def _walk(tops: Iterable[Statement]) -> Iterator[Statement]:
    for top in tops:
        for part, _ in top.walk():
            yield part


def _rows(tag: str | None) -> int:
    if not tag:
        return 0
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() and " " in tag else 0


def _chain_client(relay: Relay, types: bytes, hook: Hook) -> None:
    before = relay.client_hook(types[0])

    def chained(raw: RawMessage, r: Relay) -> bytes | None:
        mine = hook(raw, r)
        if before is None:
            return mine
        if mine is None:
            return before(raw, r)
        # The hook registered before (the guard) judges what goes upstream.
        msgs = pgwire.split_frames(mine)[0]
        out = [before(m, r) for m in msgs]
        return b"".join(
            pgwire.encode_raw(m.type, m.body) if o is None else o
            for m, o in zip(msgs, out, strict=True)
        )

    relay.on_client(types, chained)


def _own_origins(
    fields: Sequence[Field], origin: Callable[[int, int], ColumnRef | None]
) -> dict[int, list[ColumnRef]]:
    """Each result column with an origin, as its own lineage."""
    found = {}
    for i, f in enumerate(fields):
        ref = origin(f.table_oid, f.column_attnum) if f.column_attnum > 0 else None
        if ref is not None:
            found[i] = [ref]
    return found


def _chain_server(relay: Relay, types: bytes, hook: Hook) -> None:
    before = relay.server_hook(types[0])
    if before is None:
        relay.on_server(types, hook)
        return

    def chained(raw: RawMessage, r: Relay) -> bytes | None:
        first = before(raw, r)
        if first is None:
            return hook(raw, r)
        if not first:
            return first
        msgs = pgwire.split_frames(first)[0]
        # What the hook before (the guard) returns is its own: a refusal's
        # ErrorResponse, with no server text in it.
        made_here, r.made_here = r.made_here, True
        try:
            out = [hook(m, r) for m in msgs]
        finally:
            r.made_here = made_here
        return b"".join(
            pgwire.encode_raw(m.type, m.body) if o is None else o
            for m, o in zip(msgs, out, strict=True)
        )

    relay.on_server(types, chained)


# -- wiring -----------------------------------------------------------------------------


def pre_execution_check(
    rules: MaskingRules,
    catalog: Catalog | None,
    search_path: tuple[str, ...],
    trusted: frozenset[str],
    inference: Outcome,
) -> Callable[[str], Decision]:
    """The guard's check of masking's refusals before a statement runs
    (``masking_guard.masking_decision``), for one connection.

    What the decision reads of the session (the catalog snapshot's relations,
    columns and functions) is made into one :class:`MaskedSession` per snapshot.
    A decision is kept by the analysis's literal-insensitive shape when the
    statement reads no relation with masked columns: then nothing of the text
    beyond the analysis decides (the names after a dot, which the attribute-call
    rule reads, are the same in every text of a shape, as a number next to a dot
    is never taken out of it).  Statements that do read masked columns are
    judged on their exact text (inference and computed uses read it: ``ORDER
    BY 2`` is not ``ORDER BY 1``), and that decision is kept by the exact text,
    as is that of a text without a shape (``... WHERE id = $1``, parsed again
    for every execution); not a decision that met a relation the snapshot does
    not hold, nor one of an analysis that stopped at its budget.  A new
    snapshot starts afresh.
    """
    first = catalog_first(search_path)
    unknown_names = [0]  # how often a decision met a relation the snapshot does not hold
    current: list[tuple[CatalogSnapshot | None, MaskedSession, dict[object, Decision]]] = []

    def session_of(
        snapshot: CatalogSnapshot | None,
    ) -> tuple[MaskedSession, dict[object, Decision]]:
        if current and current[0][0] is snapshot:
            return current[0][1], current[0][2]

        # Which of a relation's columns are masked, read once per snapshot: every
        # statement of a masked relation asks again, some twice (bounded).
        column_maps: dict[Name, dict[str, bool]] = {}

        def holds(name: Name) -> bool:
            # False so far: the path's next schema may hold it.
            return snapshot is not None and bool(snapshot.columns_of(name.parts[0], name.name))

        def missing(_name: Name) -> None:
            # No schema of the path holds it: created since the catalog was loaded,
            # the next snapshot may (and it is known soon).
            unknown_names[0] += 1
            if catalog is not None:
                catalog.reload_missing()

        def masked(name: Name) -> bool:
            return any(columns(name).values())

        def columns(name: Name) -> Mapping[str, bool]:
            known = column_maps.get(name)
            if known is not None:
                return known
            found = snapshot.columns_of(name.parts[0], name.name) if snapshot else ()
            made = {column.column: masks(rules, column) for column in found}
            if len(column_maps) < _RELATIONS_KEPT:
                column_maps[name] = made
            return made

        session = MaskedSession(
            search_path,
            holds,
            masked,
            snapshot.functions if snapshot is not None else None,
            trusted,
            first,
            columns,
            inference,
            missing,
        )
        decisions: dict[object, Decision] = {}
        current[:] = [(snapshot, session, decisions)]
        return session, decisions

    def check(sql: str) -> Decision:
        session, decisions = session_of(catalog.current if catalog is not None else None)
        analysis = analysis_pool.analyze(sql, search_path=(UNQUALIFIED,))
        shape = analysis.shape
        # The exact text: what an analysis that ran to its end decides of it (a
        # client that parses the same statement for every execution).
        exact = (
            sql
            if len(sql) <= _PLAN_KEY_TEXT and not analysis.over_budget and analysis.failed is None
            else None
        )
        for key in (shape, exact):
            if key is not None:
                known = decisions.get(key)
                if known is not None:
                    return known
        unknown = unknown_names[0]
        decision = masking_decision(analysis, session, sql)
        if unknown_names[0] != unknown:
            # A relation the snapshot does not know: the next snapshot may, and the
            # statement is decided afresh until it comes.
            return decision
        key = shape if shape is not None and not reads_masked(analysis, session) else exact
        if key is not None:
            if len(decisions) >= _DECISIONS_KEPT:
                decisions.clear()
            decisions[key] = decision
        return decision

    return check


class MaskingSetup:
    """The gateway's per-session preparation (in a worker thread) and per-connection setup."""

    def __init__(
        self,
        service: SessionService,
        limits: AnalysisLimits = DEFAULT_ANALYSIS_LIMITS,
        *,
        access_events: bool = True,
    ) -> None:
        self.service = service
        self.limits = limits  # the guard's (see MaskingHooks)
        # False: statements are recorded without access facts (a dev broker's
        # benchmarking aid, ``RuntimeOptions.access_events``).
        self.access_events = access_events
        self.catalogs: dict[str, Catalog] = {}
        self.sessions: dict[str, tuple[MaskingRules, Catalog | None]] = {}

    def _rules(self, live: LiveSession) -> tuple[MaskingRules, Catalog | None]:
        record = live.record
        target = self.service.policy.targets.get(record.target)
        if target is None or target.masking is None:
            return MaskingRules(), None
        rules = session_rules(target, record.scope, record.groups)
        if not rules.active and self._exemption(live) is None:
            return rules, None
        catalog = self.catalogs.get(target.name)
        if catalog is None:
            catalog = self.catalogs.setdefault(target.name, Catalog.for_target(target))
        return rules, catalog

    def _exemption(self, live: LiveSession) -> tuple[MaskingRules, str] | None:
        """The rules an exempt session is exempt from and what exempts it (see
        ``MaskingRules.exempted_from``), for its access facts."""
        record = live.record
        target = self.service.policy.targets.get(record.target)
        if target is None:
            return None
        return MaskingRules.exempted_from(target.masking, record.scope, record.groups)

    def pre_execution(
        self, live: LiveSession, search_path: tuple[str, ...]
    ) -> Callable[[str], Decision] | None:
        """For the guard: the refusals masking needs before a statement runs
        (``masking_guard``), or None when masking does not apply to the session."""
        found = self.sessions.get(live.id)
        rules, catalog = found if found is not None else self._rules(live)
        if not rules.active:
            return None
        target = self.service.policy.targets.get(live.record.target)
        policy = target.masking if target is not None else None
        trusted = policy.trusted_functions if policy is not None else frozenset()
        inference = Outcome(policy.inference) if policy is not None else Outcome.BLOCK
        return pre_execution_check(rules, catalog, search_path, trusted, inference)

    def prepare(self, live: LiveSession) -> None:
        """Blocking: the session's rules and its target's catalog, loaded if stale."""
        rules, catalog = self._rules(live)
        if catalog is not None:
            catalog.snapshot()
        self.sessions[live.id] = (rules, catalog)

    def setup(self, relay: Relay, live: LiveSession) -> None:
        found = self.sessions.pop(live.id, None)
        if found is None:
            # Not prepared (no worker step ran): the rules, and the target's
            # catalog as it is (not loaded here); unknown origins fail closed.
            found = self._rules(live)
        rules, catalog = found
        snapshot = catalog.current if catalog is not None else None
        notice = session_notice(rules, snapshot.columns() if snapshot is not None else None)
        if notice is not None:
            relay.greeting.append(
                pgwire.NoticeResponse(
                    {"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": notice}
                ).encode()
            )
        recorder = self.service.recorder
        # The path the gateway pinned at login (the server checked it then).
        path = session_search_path(relay.parameters.get("search_path"), live.credential.username)
        record = live.record
        exemption = self._exemption(live) if not rules.active else None
        access = AccessContext(
            SessionFacts(
                record.target,
                record.identity,
                "agent" if live.agent else live.kind,
                live.on_behalf_of,
            ),
            path,
            live.credential.username,
            live.request_id,
            rules if exemption is None else exemption[0],
            exemption[1] if exemption is not None else None,
        )
        MaskingHooks(
            rules,
            catalog,
            session_id=live.id,
            record=recorder.record,
            search_path=path,
            access=access if self.access_events else None,
            limits=self.limits,
            exempt=exemption[0] if exemption is not None else None,
        ).install(relay)
