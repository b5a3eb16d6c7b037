"""Guardrails in the relay: every statement a client sends is analysed and judged before it runs.

``StatementGuard`` is sans-IO and belongs to one client connection.  It hooks
the client messages that carry or name SQL — Query (``Q``), Parse (``P``),
Bind (``B``) and FunctionCall (``F``) — and the server's
ErrorResponse (``E``).  Each statement goes through
:func:`~server.gateway.sqlcheck.analyze` and
:func:`~server.gateway.guardrails.decide` with the rules of the session's
target and scope (``server.gateway.rules``).

How a refusal reaches the client.  A refused message is not dropped: it is
replaced by one that PostgreSQL itself rejects without running anything (a
Query or Parse of a bare word, a syntax error; a Bind of a statement name that
cannot exist; a FunctionCall of OID 0), and the ErrorResponse the server
sends for it is swapped for the gateway's (SQLSTATE 42501, the rule, a hint).
So the upstream session goes exactly where PostgreSQL would go after an
error, and the client sees what PostgreSQL would show: inside an explicit
transaction the transaction is aborted (ReadyForQuery ``E``, later statements
fail until ROLLBACK); in the extended protocol the server discards every
message until the next Sync, and later pipelines work.

A Query of several statements where one is refused runs what PostgreSQL
would run if that statement failed: the statements before it, then in its
place a statement that parses and fails when it is reached
(``select dbaccess_refused_statement``, an unknown column), whose error is
swapped for the gateway's.  PostgreSQL parses the whole text before running
any of it and runs it as one implicit transaction unless the text has its own
BEGIN/COMMIT, so the client sees the earlier statements' results, then the
refusal, and nothing after it; what the earlier statements changed is rolled
back with the implicit transaction, or kept where a COMMIT of the text's own
came first -- exactly as for a statement that fails.  The first refused
statement is found by judging the text up to each statement in turn; the
text sent is checked to split into those statements and the stand-in.  Where
that cannot be done (the refused statement needs review rather than being
blocked, the first statement is the refused one, more than
``_MAX_STEPS`` statements, a text the analysis does not split, a write
the row budget would have to estimate) the Query is refused whole and none of
it runs.  When an earlier statement fails on its own, its error is the one
the client sees, as PostgreSQL would show it.  The error to swap is
the first one the server sends before the ReadyForQuery that answers the
replaced message (the relay counts them); when an earlier message of the
same pipeline failed already, the server discards the replacement and that
earlier error is the one the client sees, under the gateway's message.

Row budget.  In a scope with ``max_rows_by_explain``, a statement that
changes existing rows and passed every rule is planned upstream with EXPLAIN
before it is forwarded -- at Query, or at each Bind with its parameters --
while the relay holds it and everything after it (a detour, see
``server.gateway.row_budget``); over the budget, or without an estimate, it is
refused like any other statement (``guardrails.row_budget``).  Such sessions
also feed every answer the server sends (``row_budget.TRACKED``) to a
:class:`~server.gateway.row_budget.ServerSeen`, which tells when the EXPLAIN
may go.

Names are resolved with the session's search_path, which the gateway fixed
at login (``server.gateway.search_path``): unqualified tables with every
schema they may be in, and a function allow-list knows whether ``pg_catalog``
comes first.

In a session where masking applies, each statement also faces masking's
refusals before execution (``server.gateway.masking_guard``, given by
``MaskingSetup.pre_execution``), refused the same way.

Parse is judged when it arrives, with parameters unknown.  When a rule may
depend on parameter values (a setting named by ``$1`` in ``set_config``) or
the statement needs review (the approval binds the parameters too), the
decision waits for each Bind of that prepared statement, which is judged with
its values.  SQL-level PREPARE/EXECUTE and protocol-level prepared statements
are tracked so that EXECUTE and Bind are judged as what they run: the
protocol's through the connection's state (``server.gateway.connection``),
which holds a statement only where it is exactly the one the server holds
under that name; what the guard decided at Parse is kept on its entry.  A
Bind of a statement the state does not hold is refused (26000, rule
``gateway.unknown_statement``): the server may hold something of that name
whose text was never judged (an SQL PREPARE, a Parse of a name already taken,
one whose Parse was skipped after an error).

Review.  A statement whose outcome is REVIEW runs only when a statement review
of exactly that text (and those parameters), made by this identity for this
target and scope, has been approved; running it consumes the approval (one
run per approval, decided by the store's compare-and-set).  A review of an
EXECUTE of a SQL-level prepared statement is also of the PREPARE it runs
(``-- prepared before: ...`` after its text), so that its approval runs nothing
else prepared under that name later.  Otherwise a review
request is opened (or the pending one for the same hash reused) and the client
gets an error naming it and the command that approves it.  A store that fails
the lookup (down, or its write lock not had in time) refuses the statement with
a hint to try again, and no review is opened on it.  Reviews, blocks and
approved runs are appended to the audit log with the statement text, secrets
redacted: handed to the shell's ``AuditWriter`` (``server.audit.deferred``),
which appends them on a thread of its own, since an append takes the chain's
lock, across replicas on a PostgreSQL store.  Looking up and opening a review
is the approval service's call, which waits on the store: never on the
shell's event loop, which serves every connection.  There the guard's gate
(``Relay.gate_client``) judges each Query and each Bind judged at Bind before
any hook sees it, and holds a reviewed one and everything after it for the
shell to offer to the hooks on a thread; the hook takes the gate's judgement
of the same message rather than judging it again.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Protocol

from server.audit.recording import LimitHit, RecordFn, record_limit
from server.errors import DbaccessError
from server.gateway import analysis_limits, analysis_pool, pgwire
from server.gateway.analysis_limits import AnalysisLimits
from server.gateway.connection import Note
from server.gateway.guardrails import (
    ALLOWED,
    Decision,
    GuardrailRules,
    Outcome,
    decide,
    graver,
    normalize_for_approval,
    row_budget_decision,
    row_budget_unknown,
    statement_sha256,
    track_prepared,
)
from server.gateway.pgwire import (
    Bind,
    ErrorResponse,
    FunctionCall,
    Parse,
    Query,
    RawMessage,
)
from server.gateway.pinning import PINNED_RULE, LimitPins, decide_pins, limit_hit, reads_text
from server.gateway.relay import Relay
from server.gateway.row_budget import (
    TRACKED,
    Estimate,
    Estimated,
    Need,
    ServerSeen,
    extended_request,
    needs,
    simple_request,
)
from server.gateway.signals import SIGNALS
from server.gateway.sqlcheck import (
    Analysis,
    StatementClass,
    analyze_function_call,
    statement_ends,
)
from server.policy.model import ApprovalPolicy, ScopePolicy

# Approved statement texts kept for their recording at most (see ``Relay.reviewed``).
_REVIEWED_KEPT = 100
log = logging.getLogger(__name__)
# Statements whose decision depends on the session's prepared statements.
_PREPARED_COMMANDS = frozenset(
    {"PREPARE", "EXECUTE", "DEALLOCATE", "DEALLOCATE ALL", "DISCARD ALL"}
)
_DECISIONS_KEPT = 512

SQLSTATE = "42501"
# What the server is asked to run instead of a refused statement: it fails at
# once, before anything runs.
_REFUSED_SQL = "dbaccess_refused_statement"
_REFUSED_NAME = "dbaccess: refused statement"
# What runs in place of a refused statement after statements that may run in
# the same Query: it parses, so that those before it run, and fails when it is
# reached, before it reads anything.
_REFUSED_STEP = "select " + _REFUSED_SQL
_MAX_STEPS = 100
# Statement names the gateway uses itself (the refusal's, the row estimate's).
_RESERVED_PREFIX = "dbaccess: "
# A Bind of a statement the connection's state does not hold (server.gateway.connection).
UNKNOWN_STATEMENT_RULE = "gateway.unknown_statement"
_UNKNOWN_STATEMENT_SQLSTATE = "26000"  # invalid_sql_statement_name, as PostgreSQL says it
# Text an unreadable statement may name a reserved statement with (``_reserved_names``).
_RESERVED_HINT = re.compile(r'dbaccess|u&"', re.IGNORECASE)
_PARAM_RULES = frozenset({"guardrails.no_role_change", "guardrails.pinned_setting", PINNED_RULE})
# A literal left open (the text was cut, or never closed it) runs to the end,
# so that no opening makes the scan read the rest of the text again.
_SECRET = re.compile(
    r"((?:PASSWORD|SECRET|TOKEN)\s+)"
    r"('[^']*(?:''[^']*)*(?:'|\Z)|\$[A-Za-z0-9_]*\$.*?(?:\$[A-Za-z0-9_]*\$|\Z))",
    re.IGNORECASE | re.DOTALL,
)
_AUDIT_TEXT = 4_000


def redact(sql: str) -> str:
    """The statement as the audit log keeps it: cut to its first characters, quoted
    passwords and secrets replaced (one cut before a secret's end hides all of it)."""
    cut = len(sql) > _AUDIT_TEXT
    text = _SECRET.sub(lambda m: m.group(1) + "'***'", sql[:_AUDIT_TEXT] if cut else sql)
    return text + "…" if cut else text


@dataclass(frozen=True)
class SessionFacts:
    """What the guard needs to know about the session it watches."""

    session_id: str
    identity: str
    groups: frozenset[str]
    target: str
    scope: str
    reason: str | None
    ttl: timedelta


@dataclass(frozen=True)
class _Prepared:
    """What the guard keeps on a prepared statement (``_JUDGED``)."""

    sql: str
    analysis: Analysis
    at_bind: bool  # judged again at each Bind (parameters matter, or review)
    param_oids: list[int]
    estimate: bool  # the row budget's EXPLAIN runs at each Bind


_JUDGED: Note[_Prepared] = Note("guard")


def review_rule(scope: ScopePolicy) -> ApprovalPolicy:
    """Who approves a reviewed statement: the scope's approvers when it has them,
    else anyone else allowed to use the scope; always one run per approval."""
    if scope.approval.required:
        return replace(scope.approval, single_use=True)
    return ApprovalPolicy(
        required=True,
        approver_groups=scope.allow_groups,
        approver_identities=scope.allow_identities,
        single_use=True,
    )


class _Review(Protocol):
    @property
    def id(self) -> str: ...


class StatementReviews(Protocol):
    """The approval service's two calls the guard makes (``server.approvals``); both
    wait on the store, so the guard makes them where the relay may block."""

    def use_statement(
        self, *, requester: str, target: str, scope: str, sha256: str, session_id: str
    ) -> _Review | None: ...

    def request_statement(
        self,
        *,
        requester: str,
        groups: frozenset[str],
        target: str,
        scope: str,
        reason: str | None,
        statement: str,
        sha256: str,
        rule: ApprovalPolicy,
        ttl: timedelta,
        guardrail: str,
    ) -> tuple[_Review, bool]: ...


class AuditFn(Protocol):
    """Where the guard's audit events go: ``chain.append``'s arguments but the store."""

    def __call__(
        self,
        kind: str,
        *,
        identity: str | None = None,
        target: str | None = None,
        session_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None: ...


class StatementGuard:
    def __init__(
        self,
        rules: GuardrailRules,
        facts: SessionFacts,
        *,
        approvals: StatementReviews | None,
        audit: AuditFn | None,
        review: ApprovalPolicy | None = None,
        search_path: tuple[str, ...] = ("public",),
        masking: Callable[[str], Decision] | None = None,
        limits: AnalysisLimits | None = None,
        record: RecordFn | None = None,
        pins: LimitPins | None = None,
    ) -> None:
        self.rules = rules
        self.limits = limits or AnalysisLimits()
        self.record = record  # the session recording's, for limit events
        self._reviewed: dict[str, str] = {}  # the relay's (``Relay.reviewed``) once installed
        # The session's limits, which no statement may change (``server.gateway.pinning``).
        self.pins = pins
        self._decisions: dict[object, Decision] = {}  # by analysis, or by its shape
        # Masking's refusals before execution (``masking_guard``), in a masked session.
        self.masking = masking
        self.facts = facts
        self.approvals = approvals
        self.audit = audit  # appends an audit event off the data path (AuditWriter.append)
        self.review = review or ApprovalPolicy(required=True, single_use=True)
        self.search_path = search_path
        self.sql_prepared: dict[str, Analysis] = {}  # SQL PREPARE, by name
        self.sql_prepared_texts: dict[str, str] = {}  # and the PREPARE's text
        # (ReadyForQuery number, the gateway's ErrorResponse, whether only the
        # stand-in's error is swapped) per replaced message.
        self._swaps: deque[tuple[int, bytes, bool]] = deque()
        self._pending: Decision | None = None  # why the statement just judged was refused
        # What the server said since its last ReadyForQuery, for the row budget's EXPLAIN.
        self.seen = ServerSeen() if rules.max_rows_by_explain is not None else None
        # The gate's analysis and decision of the message it was just asked about.
        self._gated: tuple[RawMessage, Analysis, Decision] | None = None

    def install(self, relay: Relay) -> None:
        self._reviewed = relay.reviewed
        relay.on_client(b"Q", self._on_query)
        relay.on_client(b"P", self._on_parse)
        relay.on_client(b"B", self._on_bind)
        relay.on_client(b"F", self._on_function_call)
        if self.approvals is not None:
            relay.gate_client(b"QB", self._gate)
        if self.seen is None:
            relay.on_server(b"E", self._on_error)
        else:
            relay.on_server(TRACKED, self._on_tracked)

    # -- hooks -------------------------------------------------------------------
    def _on_query(self, raw: RawMessage, relay: Relay) -> bytes | None:
        refusal = self._oversize(raw)
        if refusal is not None:
            return self._refuse_with(relay, Query(_REFUSED_SQL).encode(), refusal)
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Query)
        analysis, decision = self._judged(raw, msg.query)
        SIGNALS.statements += 1
        step = self._up_to_refusal(analysis, msg.query, decision)
        if step is not None:
            text, refusal, ran = step
            self._passes(refusal, msg.query, ())  # records the refusal
            self._track_sql_prepared(ran, relay)
            return self._refuse_with(relay, Query(text).encode(), refusal, stand_in=True)
        if not self._passes(decision, msg.query, (), analysis=analysis):
            return self._refuse(relay, Query(_REFUSED_SQL).encode())
        relay.keep_analysis(msg.query, analysis, query=True)
        if self.seen is not None:
            need = needs(analysis, self.sql_prepared)
            if need is Need.REFUSE:
                refusal = row_budget_unknown(
                    "it is one of several statements in one query", self.rules
                )
                self._record("statement.blocked", refusal, msg.query)
                return self._refuse_with(relay, Query(_REFUSED_SQL).encode(), refusal)
            if need is Need.ESTIMATE:
                return self._estimate(
                    relay,
                    msg.query,
                    original=raw.wire,
                    substitute=Query(_REFUSED_SQL).encode(),
                    request=simple_request(msg.query),
                    extended=False,
                )
        self._track_sql_prepared(analysis, relay)
        return None

    def _on_parse(self, raw: RawMessage, relay: Relay) -> bytes | None:
        refusal = self._oversize(raw)
        if refusal is not None:
            name = _parse_name(raw.body)
            return self._refuse_with(relay, Parse(name, _REFUSED_SQL).encode(), refusal)
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Parse)
        SIGNALS.statements += 1
        if msg.name.startswith(_RESERVED_PREFIX):
            decision = _reserved_name_refusal()
            self._record("statement.blocked", decision, msg.query)
            return self._refuse_with(relay, Parse("", _REFUSED_SQL).encode(), decision)
        analysis = self._analyze(msg.query)
        decision = self._decide(analysis, msg.query)
        need = Need.NONE if self.seen is None else needs(analysis, self.sql_prepared)
        if need is Need.REFUSE and decision.outcome is not Outcome.BLOCK:
            decision = row_budget_unknown("it is one of several statements", self.rules)
        has_params = "$" in msg.query
        deferred = decision.outcome is Outcome.REVIEW or (
            decision.outcome is Outcome.BLOCK and has_params and decision.rule in _PARAM_RULES
        )
        if decision.outcome is Outcome.BLOCK and not deferred:
            self._record("statement.blocked", decision, msg.query)
            return self._refuse_with(relay, Parse(msg.name, _REFUSED_SQL).encode(), decision)
        entry = relay.state.parsed
        if entry is not None:
            entry.annotate(
                _JUDGED,
                _Prepared(
                    msg.query, analysis, deferred, list(msg.param_oids), need is Need.ESTIMATE
                ),
            )
            changes = name_changes(analysis)
            if changes is not None:
                # Whenever it runs, which may be long after its Parse.
                relay.state.forgets_when_run(entry, changes[0], portals=changes[1])
        relay.keep_analysis(msg.query, analysis)
        return None

    def _on_bind(self, raw: RawMessage, relay: Relay) -> bytes | None:
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Bind)
        entry = relay.state.statement(msg.statement)
        if entry is None:
            return self._unknown_statement(relay, msg)
        known = entry.note(_JUDGED)
        if known is None:
            return None  # refused at Parse: the server failed its stand-in
        if not known.at_bind and not known.estimate:
            return None  # judged at Parse, nothing to estimate
        substitute = Bind(msg.portal, _REFUSED_NAME).encode()
        if known.at_bind:
            analysis, decision = self._judged(raw, known.sql, _text_params(msg))
            params = [bytes(p) if p is not None else None for p in msg.params]
            if not self._passes(decision, known.sql, params, msg.param_formats, analysis=analysis):
                return self._refuse(relay, substitute)
        if not known.estimate:
            return None
        return self._estimate(
            relay,
            known.sql,
            original=raw.wire,
            substitute=substitute,
            request=extended_request(known.sql, known.param_oids, msg),
            extended=True,
        )

    def _unknown_statement(self, relay: Relay, msg: Bind) -> bytes:
        """A Bind of a statement the connection's state does not hold: the server may
        hold something under that name whose text the gateway never judged (an
        SQL PREPARE, a Parse of a name already taken), so it is not run."""
        decision = Decision(
            Outcome.BLOCK,
            UNKNOWN_STATEMENT_RULE,
            f"prepared statement {msg.statement!r} is not one the gateway knows on this connection",
            "prepare it with a Parse on this connection under a name not in use (a Parse "
            "that failed, was refused, or reused a taken name prepares nothing); a "
            "statement prepared with SQL PREPARE runs with EXECUTE",
            None,
        )
        self._record("statement.blocked", decision, f"Bind of statement {msg.statement!r}")
        return self._refuse_with(relay, Bind(msg.portal, _REFUSED_NAME).encode(), decision)

    def _on_function_call(self, raw: RawMessage, relay: Relay) -> bytes | None:
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, FunctionCall)
        decision = decide(analyze_function_call(msg.function_oid), self.rules)
        if decision.outcome is Outcome.ALLOW:
            return None
        # A call by OID has no text a reviewer could read: review means refuse.
        self._record("statement.blocked", decision, f"FunctionCall {msg.function_oid}")
        return self._refuse_with(relay, FunctionCall(0).encode(), decision)

    def _on_error(self, raw: RawMessage, relay: Relay) -> bytes | None:
        swaps = self._swaps
        while swaps and swaps[0][0] <= relay.ready:
            swaps.popleft()  # its window closed without an error of its own
        if swaps and swaps[0][0] == relay.ready + 1:
            _ready, error, stand_in = swaps.popleft()
            if stand_in and _REFUSED_SQL not in _message(raw):
                return None  # a statement before the refused one failed on its own
            return error
        return None

    # -- deciding ------------------------------------------------------------------
    def _oversize(self, raw: RawMessage) -> Decision | None:
        """A Query or Parse whose text is over the size limit: refused (and recorded)
        before anything decodes or parses it."""
        limits = self.limits
        head = analysis_limits.oversize_head(raw.type, raw.body, limits)
        if head is None:
            return None
        refusal = analysis_limits.oversize(
            analysis_limits.statement_size(raw.type, raw.body), limits
        )
        assert refusal is not None
        self._record("statement.blocked", refusal, head)
        self._record_limit(refusal, head)
        return refusal

    def _analyze(self, sql: str, params: tuple[str | None, ...] | None = None) -> Analysis:
        limits = self.limits
        # In a worker process when the text is long and this is an analysis thread.
        return analysis_pool.analyze(
            sql,
            search_path=self.search_path,
            params=params,
            max_len=limits.max_statement_size,
            time_budget=limits.cpu_budget,
        )

    def _decide(self, analysis: Analysis, sql: str) -> Decision:
        """The analysis's own limits, the pinned limits' refusal, else the guardrails'
        decision, and masking's refusal where that is graver."""
        self._note_budget(analysis, sql)
        return self._judge(analysis, sql)

    def _note_budget(self, analysis: Analysis, sql: str) -> None:
        """The recording's ``limit`` event of an analysis that ran over its budget."""
        if analysis.over_budget:
            self._record_limit(analysis_limits.over_budget(self.limits), sql[:_AUDIT_TEXT])

    def _judge(self, analysis: Analysis, sql: str) -> Decision:
        """``_decide`` without the recording (the gate's, which must have no effects)."""
        if analysis.over_budget:
            # Not the statement's fault: it was too costly to read (54000, not 42501).
            return analysis_limits.over_budget(self.limits)
        if analysis.failed is not None:
            return analysis_limits.analysis_failed(analysis.failed)
        decision = self._guardrails(analysis, sql)
        if decision.outcome is not Outcome.BLOCK:
            # (A refusal already says more than the name would.)
            reserved = _reserved_names(analysis, sql)
            if reserved is not None:
                return reserved
        if self.masking is None or decision.outcome is Outcome.BLOCK:
            return decision  # nothing masking says can make it graver
        try:
            refused = self.masking(sql)
        except Exception:  # a check that failed refuses: masking fails closed
            log.exception("masking's check before execution failed")
            refused = Decision(
                Outcome.BLOCK,
                "masking.check_failed",
                "the gateway could not check this statement against masking",
                "try again; if it keeps failing, tell an administrator",
                None,
            )
        return graver(decision, refused)

    def _guardrails(self, analysis: Analysis, sql: str) -> Decision:
        # The pinned limits' refusal first, so that a statement that would lift a
        # limit is refused naming it even where a guardrail would refuse it too
        # (ALTER ROLE, RESET ALL); else decide().  Both are pure functions of the
        # analysis, this guard's rules and pins, the session's SQL-level prepared
        # statements and, for code and role settings only, the text; the same
        # statements come again and again, so the result is kept per analysis,
        # except where prepared statements are named or changed (their decision
        # depends on the session) or the pins read the text.  An analysis that
        # holds for a whole literal-insensitive shape is kept by its shape: the
        # texts of one shape differ in nothing the decision reads.
        key: object = analysis.shape if analysis.shape is not None else analysis
        known = self._decisions.get(key)
        if known is not None:
            return known
        decision = ALLOWED
        if self.pins is not None:
            decision = decide_pins(analysis, sql, self.pins)
        if decision.outcome is not Outcome.BLOCK:
            decision = decide(analysis, self.rules, prepared=self.sql_prepared)
        if not reads_text(analysis) and not any(
            st.prepared_name or st.command in _PREPARED_COMMANDS for st in analysis.walk_all()
        ):
            if len(self._decisions) >= _DECISIONS_KEPT:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _gate(self, raw: RawMessage, relay: Relay) -> bool:
        """Where the relay may not block, before any hook sees the message: whether it
        is a statement under review, whose approval must be looked up in the
        store (then the relay holds it for the hooks off the loop).  Judged
        without effects, and kept for the hook that gets this very message."""
        self._gated = None
        if raw.type == ord("Q"):
            if analysis_limits.oversize_head(raw.type, raw.body, self.limits) is not None:
                return False  # refused unread, by the hook
            msg = pgwire.decode_frontend(raw)
            assert isinstance(msg, Query)
            sql, params = msg.query, None
        else:
            entry = relay.state.statement(_bind_statement(raw.body))
            known = entry.note(_JUDGED) if entry is not None else None
            if known is None or not known.at_bind:
                return False
            bind = pgwire.decode_frontend(raw)
            assert isinstance(bind, Bind)
            sql, params = known.sql, _text_params(bind)
        analysis = self._analyze(sql, params)
        decision = self._judge(analysis, sql)
        self._gated = (raw, analysis, decision)
        return decision.outcome is Outcome.REVIEW

    def _judged(
        self, raw: RawMessage, sql: str, params: tuple[str | None, ...] | None = None
    ) -> tuple[Analysis, Decision]:
        """The analysis and decision of the statement ``raw`` runs: the gate's, when it
        was asked about this very message, else made now."""
        gated, self._gated = self._gated, None
        if gated is not None and gated[0] is raw:
            _raw, analysis, decision = gated
            self._note_budget(analysis, sql)
            return analysis, decision
        analysis = self._analyze(sql, params)
        return analysis, self._decide(analysis, sql)

    def _passes(
        self,
        decision: Decision,
        sql: str,
        params: list[bytes | None] | tuple[()],
        formats: list[int] | None = None,
        *,
        analysis: Analysis | None = None,
    ) -> bool:
        """Whether the statement may run; on refusal the reason is kept for ``_refuse``."""
        self._pending = None
        if decision.outcome is Outcome.ALLOW:
            return True
        if decision.outcome is Outcome.BLOCK:
            self._record("statement.blocked", decision, sql)
            self._pending = decision
            return False
        client_sql, sql = sql, self._review_text(sql, analysis)
        sha = statement_sha256(sql, params, formats or ())
        facts = self.facts
        if self.approvals is not None:
            try:
                used = self.approvals.use_statement(
                    requester=facts.identity,
                    target=facts.target,
                    scope=facts.scope,
                    sha256=sha,
                    session_id=facts.session_id,
                )
            except Exception as exc:  # the store failed (down, its lock not had): refused
                log.warning("looking up a statement review failed: %s", _why(exc))
                self._record("statement.blocked", decision, sql)
                self._pending = replace(
                    decision,
                    outcome=Outcome.BLOCK,
                    message=f"{decision.message}: its review could not be looked up",
                    hint="the broker's store did not answer; try again",
                )
                return False
            if used is not None:
                self._record("statement.approved_used", decision, sql, request_id=used.id)
                if len(self._reviewed) >= _REVIEWED_KEPT:
                    self._reviewed.clear()  # nothing records them (no recorder)
                self._reviewed[client_sql] = used.id  # the recording's text is the client's
                return True
        self._pending = self._open_review(decision, sql, sha)
        return False

    def _review_text(self, sql: str, analysis: Analysis | None) -> str:
        """What a review of ``sql`` is of: the text, and the PREPARE of each SQL-level
        prepared statement it executes as the session had prepared it before.  An
        EXECUTE is judged as what it runs, so an approval of ``EXECUTE p`` must
        hold for that ``p`` only, not for another prepared under its name later."""
        if analysis is None or not self.sql_prepared_texts:
            return sql
        texts = self.sql_prepared_texts
        before = dict.fromkeys(
            texts[st.prepared_name]
            for st in analysis.walk_all()
            if st.command == "EXECUTE" and st.prepared_name in texts
        )
        if not before:
            return sql
        # The client's text as an approval normalizes it on its own (a trailing
        # semicolon is not part of it), then what it runs.
        head = normalize_for_approval(sql)
        return head + "".join(f"\n-- prepared before: {text}" for text in before)

    def _open_review(self, decision: Decision, sql: str, sha: str) -> Decision:
        facts = self.facts
        if self.approvals is None:
            return replace(decision, outcome=Outcome.BLOCK)
        try:
            request, _new = self.approvals.request_statement(
                requester=facts.identity,
                groups=facts.groups,
                target=facts.target,
                scope=facts.scope,
                reason=facts.reason,
                statement=sql,
                sha256=sha,
                rule=self.review,
                ttl=facts.ttl,
                guardrail=decision.rule,
            )
        except Exception as exc:  # the store failed: refused, as the lookup's failure is
            log.warning("opening a statement review failed: %s", _why(exc))
            self._record("statement.blocked", decision, sql)
            return replace(
                decision,
                outcome=Outcome.BLOCK,
                hint="the review could not be opened; try again",
            )
        self._record("statement.review_requested", decision, sql, request_id=request.id)
        return replace(
            decision,
            message=f"{decision.message}: held for review as request {request.id}",
            hint=(
                f"an approver runs: dbaccess approve {request.id}; then run exactly "
                "the same statement again (it runs once)"
            ),
        )

    def _on_tracked(self, raw: RawMessage, relay: Relay) -> bytes | None:
        assert self.seen is not None
        self.seen.see(raw)
        return self._on_error(raw, relay) if raw.type == ord("E") else None

    # -- the row budget ------------------------------------------------------------
    def _estimate(
        self,
        relay: Relay,
        sql: str,
        *,
        original: bytes,
        substitute: bytes,
        request: bytes,
        extended: bool,
    ) -> bytes | None:
        """Hold the message, EXPLAIN its statement, then forward it or refuse it."""
        assert self.seen is not None

        def finish(relay: Relay, result: Estimated) -> tuple[bytes, bytes | None]:
            if result.skipped:
                return original, None
            if result.rows is not None:
                decision = row_budget_decision(result.rows, self.rules, 0)
            else:
                decision = row_budget_unknown(result.failure or "no estimate", self.rules, 0)
            if decision.outcome is Outcome.ALLOW:
                return original, None
            self._record("statement.blocked", decision, sql)
            if result.discarding:
                # The server discards the substitute too: the client sees this
                # error in place of the one the failed EXPLAIN raised.
                return substitute, _error_response(decision)
            return self._refuse_with(relay, substitute, decision), None

        detour = Estimate(self.seen, extended=extended, request=request, finish=finish)
        return detour.start(relay)

    def _refuse(self, relay: Relay, substitute: bytes) -> bytes:
        decision = self._pending
        assert decision is not None
        return self._refuse_with(relay, substitute, decision)

    def _refuse_with(
        self, relay: Relay, substitute: bytes, decision: Decision, *, stand_in: bool = False
    ) -> bytes:
        self._swaps.append((relay.asked + 1, _error_response(decision), stand_in))
        return substitute

    def _up_to_refusal(
        self, analysis: Analysis, sql: str, decision: Decision
    ) -> tuple[str, Decision, Analysis] | None:
        """For a refused Query of several statements: the text to run instead (the
        statements before the first refused one, then the stand-in), the refusal
        of that statement, and the analysis of what runs; None: refuse it whole."""
        count = len(analysis.statements)
        if decision.outcome is not Outcome.BLOCK or not 1 < count <= _MAX_STEPS:
            return None
        ends = analysis_pool.read(sql, statement_ends, None, self.limits.cpu_budget)
        if ends is None or len(ends) != count:
            return None
        for k in range(count):
            text = sql[: ends[k]]
            step = decision if k == count - 1 else self._decide(self._analyze(text), text)
            if step.outcome is Outcome.ALLOW:
                continue
            if step.outcome is not Outcome.BLOCK or k == 0:
                return None  # a review is of the whole text; nothing runs before
            ran = self._analyze(sql[: ends[k - 1]])
            substitute = sql[: ends[k - 1]] + ";\n" + _REFUSED_STEP
            sent = self._analyze(substitute)
            if (
                len(ran.statements) != k
                or len(sent.statements) != k + 1
                or sent.statements[-1].text != _REFUSED_STEP
            ):
                return None  # the text does not split as it was judged
            if self.seen is not None and needs(ran, self.sql_prepared) is not Need.NONE:
                return None  # the row budget estimates single statements only
            return substitute, replace(step, statement_index=k), ran
        return None

    def _track_sql_prepared(self, analysis: Analysis, relay: Relay) -> None:
        """What SQL about to run does to the names of prepared statements and
        portals: kept for EXECUTE, and forgotten by the connection's state."""
        for top in analysis.statements:
            track_prepared(top, self.sql_prepared, self.sql_prepared_texts)
        changes = name_changes(analysis)
        if changes is not None:
            relay.state.forget(changes[0], portals=changes[1])

    def _record_limit(self, refusal: Decision, head: str) -> None:
        """The session recording's ``limit`` event for a refusal by an analysis limit."""
        limits = self.limits
        too_large = refusal.rule == analysis_limits.TOO_LARGE
        record_limit(
            self.record,
            self.facts.session_id,
            LimitHit(
                limit=analysis_limits.SIZE_SETTING if too_large else analysis_limits.BUDGET_SETTING,
                value=limits.max_statement_size if too_large else f"{limits.cpu_budget:g}s",
                scope=self.facts.scope,
                action="refused",
                sqlstate=analysis_limits.SQLSTATE,
                message=refusal.message,
                statement=head,
            ),
        )

    def _record(
        self, kind: str, decision: Decision, sql: str, *, request_id: str | None = None
    ) -> None:
        facts = self.facts
        SIGNALS.decisions[(kind.removeprefix("statement."), decision.rule)] += 1
        if decision.limit is not None and self.pins is not None and kind == "statement.blocked":
            # A refusal by a scope's limit is also a ``limit`` event of the session's recording.
            record_limit(self.record, facts.session_id, limit_hit(decision, self.pins, sql))
        if self.audit is None:
            return
        data: dict[str, object] = {
            "scope": facts.scope,
            "rule": decision.rule,
            "message": decision.message,
            "statement": redact(sql),
            "statement_index": decision.statement_index,
        }
        if request_id is not None:
            data["request_id"] = request_id
        # Queued: the shell appends it to the chain off the data path.
        self.audit(
            kind,
            identity=facts.identity,
            target=facts.target,
            session_id=facts.session_id,
            data=data,
        )


def _why(exc: Exception) -> str:
    """What a failed call of the approval service says, for the broker's log."""
    return exc.message if isinstance(exc, DbaccessError) else f"{type(exc).__name__}: {exc}"


def _reserved_names(analysis: Analysis, sql: str) -> Decision | None:
    """SQL naming a prepared statement with the gateway's own prefix: the gateway's
    stand-ins name such statements, which the server must never hold (a client's
    statement under that name would run in place of a refusal).  A text the
    analysis could not read is held to it by its letters (a ``U&""`` identifier
    spells a name in escapes)."""
    for st in analysis.statements:  # PREPARE and EXECUTE come only at the top
        if st.kind is StatementClass.UNKNOWN:
            if _RESERVED_HINT.search(sql) is not None:
                return _reserved_name_refusal()
        elif st.prepared_name is not None and st.prepared_name.lower().startswith(_RESERVED_PREFIX):
            return _reserved_name_refusal()
    return None


def _reserved_name_refusal() -> Decision:
    """Statement names the gateway uses itself, asked for by the client."""
    return Decision(
        Outcome.BLOCK,
        "guardrails.reserved_name",
        f"statement names starting with {_RESERVED_PREFIX!r} are reserved by the gateway",
        "choose another name",
        None,
    )


def name_changes(analysis: Analysis) -> tuple[tuple[str, ...] | None, bool] | None:
    """What a text's statements do to the names of the session's prepared statements
    and portals, which protocol messages use too (``server.gateway.connection``):
    the statement names it prepares or deallocates (None: all of them), and
    whether it declares or closes cursors (portals); None: nothing."""
    names: list[str] = []
    every = portals = False
    for st in analysis.statements:  # these commands come only at the top
        if st.kind is StatementClass.UNKNOWN:
            return None, True  # it may be any of them
        command = st.command
        if command in ("PREPARE", "DEALLOCATE"):
            if st.prepared_name is None:
                every = True
            else:
                names += (st.prepared_name, st.prepared_name.lower())
        elif command in ("DEALLOCATE ALL", "DISCARD ALL"):
            every = True
            portals = portals or command == "DISCARD ALL"
        elif command in ("DECLARE", "CLOSE"):
            portals = True
    if not (names or every or portals):
        return None
    return (None if every else tuple(names)), portals


def _error_response(decision: Decision) -> bytes:
    message = decision.message or "statement refused by the gateway's guardrails"
    return pgwire.error_response(
        "ERROR",
        analysis_limits.SQLSTATE
        if decision.rule in analysis_limits.RULES
        else _UNKNOWN_STATEMENT_SQLSTATE
        if decision.rule == UNKNOWN_STATEMENT_RULE
        else SQLSTATE,
        f"dbaccess: {message} ({decision.rule})",
        hint=decision.hint or None,
    )


def _parse_name(body: bytes) -> str:
    end = body.find(b"\0")
    return body[: end if end >= 0 else 0].decode("utf-8", "replace")


def _message(raw: RawMessage) -> str:
    msg = pgwire.decode_backend(raw)
    return msg.fields.get("M", "") if isinstance(msg, ErrorResponse) else ""


def _bind_statement(body: bytes) -> str:
    """The prepared statement a Bind names (after its portal's name), undecoded else."""
    start = body.find(b"\0") + 1
    end = body.find(b"\0", start)
    return body[start : end if end >= 0 else start].decode("utf-8", "replace")


def _text_params(msg: Bind) -> tuple[str | None, ...]:
    formats = msg.param_formats
    out: list[str | None] = []
    for i, value in enumerate(msg.params):
        code = formats[0] if len(formats) == 1 else formats[i] if formats else 0
        if value is None or code != 0:
            out.append(None)
            continue
        try:
            out.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError:
            out.append(None)
    return tuple(out)
