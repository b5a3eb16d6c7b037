"""Masking and statement recording in the relay: the server-side hooks of one connection.

``MaskingHooks`` is sans-IO and belongs to one client connection.  It watches
the client messages that start a result (Query, Parse, Bind, Describe,
Execute, Close, Sync, FunctionCall) to know, for every RowDescription and
DataRow the server sends, which statement or portal it belongs to, and

* on RowDescription (``T``) builds a :class:`~server.gateway.masking.MaskPlan`
  from the fields' origins (the target's catalog, ``Catalog.current``) with
  ``touched`` from the statement's sqlcheck ``reads``/``writes``: a column
  without an origin is blocked when the statement touches a table with masked
  columns, or when what it touches cannot be told (``FETCH``, ``EXECUTE``, a
  table the catalog does not know yet);
* rewrites the RowDescription (masked non-text columns become ``text``) and
  every DataRow of a masking plan; a binary value that cannot be masked as
  such becomes NULL (the masker's fallback), never the clear value;
* on a blocked plan, or on DataRows of a portal whose shape is unknown (an
  Execute without any Describe), replaces the message with an ErrorResponse
  (42501) and drops everything the server sends up to the ReadyForQuery;
* redacts ErrorResponse and NoticeResponse texts (``redact_report``);
* records one ``statement`` event per simple Query and per Execute
  (``service.recorder``; text redacted, tag, rows, SQLSTATE, decision, masked
  fields).

Sessions without masking register only the few hooks recording needs (no
DataRow hook), so their rows keep the relay's fast path.

Known limits: lineage for expressions is not computed (they are blocked
instead when masked data is touched); a function that reads a masked column
itself (``select f()``) is not seen; COPY TO STDOUT is not masked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from server.audit.recording import statement_event
from server.gateway import pgwire
from server.gateway.catalog import Catalog
from server.gateway.masking import (
    ColumnRef,
    MaskingRules,
    MaskPlan,
    load_key,
    plan_for_row_description,
    redact_report,
)
from server.gateway.pgwire import (
    Bind,
    Close,
    Describe,
    ErrorResponse,
    Execute,
    NoticeResponse,
    Parse,
    Query,
    RawMessage,
    RowDescription,
)
from server.gateway.relay import Hook, Relay
from server.gateway.sqlcheck import Analysis, analyze
from server.sessions.service import LiveSession, SessionService

log = logging.getLogger(__name__)

SQLSTATE = "42501"
BLOCK_HINT = "select the column itself or ask for review"
# Commands whose result columns come from a statement the analysis does not see.
_OPAQUE_COMMANDS = frozenset({"EXECUTE", "FETCH", "MOVE"})
# Server messages that belong to a statement's response (dropped after a block).
_RESPONSE_TYPES = b"TDCnsIE123tHdcVZN"
_RECORD_TYPES = b"CIEZ"
REFRESH_INTERVAL = 5.0

Touched = Callable[[], Iterable[ColumnRef] | None]


@dataclass
class _Item:
    """Something the client sent that the server answers, in order."""

    kind: str  # Q, DS (describe statement), DP (describe portal), X (execute), SYNC
    name: str = ""
    sql: str = ""
    analysis: Analysis | None = None
    started: float = 0.0
    started_at: datetime | None = None
    plan: MaskPlan | None = None
    formats: tuple[int, ...] = ()
    rows: int = 0
    tag: str | None = None
    sqlstate: str | None = None
    decision: str = "allowed"
    masked: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Portal:
    statement: str
    formats: tuple[int, ...]
    plan: MaskPlan | None = None


class MaskingHooks:
    def __init__(
        self,
        rules: MaskingRules,
        catalog: Catalog | None,
        *,
        session_id: str,
        record: Callable[[str, str, dict[str, object]], object] | None = None,
        search_path: tuple[str, ...] = ("public",),
    ) -> None:
        self.rules = rules
        self.masking = rules.active
        self.catalog = catalog
        self.session_id = session_id
        self._record_event = record
        self.search_path = search_path
        self.pending: deque[_Item] = deque()
        self.statements: dict[str, tuple[str, Analysis | None]] = {}
        self.statement_plans: dict[str, MaskPlan] = {}
        self.portals: dict[str, _Portal] = {}
        self.dropping = False
        self._refreshed = float("-inf")

    # -- installing ---------------------------------------------------------------
    def install(self, relay: Relay) -> None:
        client: dict[bytes, Callable[[RawMessage, Relay], None]] = {
            b"Q": self._on_query,
            b"P": self._on_parse,
            b"B": self._on_bind,
            b"D": self._on_describe,
            b"E": self._on_execute,
            b"C": self._on_close,
            b"S": self._on_sync,
            b"F": self._on_sync,
        }
        for types, hook in client.items():
            _chain_client(relay, types, hook)
        for t in _RESPONSE_TYPES if self.masking else _RECORD_TYPES:
            _chain_server(relay, bytes((t,)), self._on_server)

    # -- client messages ------------------------------------------------------------
    def _on_query(self, raw: RawMessage, relay: Relay) -> None:
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Query)
        item = _Item("Q", sql=msg.query)
        item.analysis = self._analyze(msg.query)
        self._start(item)
        self.pending.append(item)

    def _on_parse(self, raw: RawMessage, relay: Relay) -> None:
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Parse)
        self.statement_plans.pop(msg.name, None)
        self.statements[msg.name] = (msg.query, self._analyze(msg.query))

    def _analyze(self, sql: str) -> Analysis | None:
        # Only masking needs it (the guard analyses every statement for itself).
        return analyze(sql, search_path=self.search_path) if self.masking else None

    def _on_bind(self, raw: RawMessage, relay: Relay) -> None:
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Bind)
        self.portals[msg.portal] = _Portal(msg.statement, tuple(msg.result_formats))

    def _on_describe(self, raw: RawMessage, relay: Relay) -> None:
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Describe)
        kind = "DS" if msg.kind == "S" else "DP"
        statement = msg.name if kind == "DS" else self._portal_statement(msg.name)
        sql, analysis = self.statements.get(statement, ("", None))
        self.pending.append(_Item(kind, name=msg.name, sql=sql, analysis=analysis))

    def _on_execute(self, raw: RawMessage, relay: Relay) -> None:
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Execute)
        sql, analysis = self.statements.get(self._portal_statement(msg.portal), ("", None))
        item = _Item("X", name=msg.portal, sql=sql, analysis=analysis)
        self._start(item)
        self.pending.append(item)

    def _on_close(self, raw: RawMessage, relay: Relay) -> None:
        msg = pgwire.decode_frontend(raw)
        assert isinstance(msg, Close)
        if msg.kind == "S":
            self.statements.pop(msg.name, None)
            self.statement_plans.pop(msg.name, None)
        else:
            self.portals.pop(msg.name, None)

    def _on_sync(self, raw: RawMessage, relay: Relay) -> None:
        self.pending.append(_Item("SYNC"))

    def _portal_statement(self, portal: str) -> str:
        found = self.portals.get(portal)
        return found.statement if found is not None else "\0unknown"

    def _start(self, item: _Item) -> None:
        if self._record_event is not None:
            item.started = time.monotonic()
            item.started_at = datetime.now(UTC)

    # -- server messages --------------------------------------------------------------
    def _on_server(self, raw: RawMessage, relay: Relay) -> bytes | None:
        t = raw.type
        if t == 90:  # Z
            self.dropping = False
            self._ready()
            return None
        if t == 78:  # N
            return self._redacted(raw) if self.masking else None
        if self.dropping:
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
        if t == 69:  # E
            return self._on_error(raw, head)
        if t in (67, 115, 73):  # C, s, I
            if head is not None and head.kind in ("Q", "X"):
                if t == 67:
                    tag = pgwire.decode_backend(raw)
                    head.tag = getattr(tag, "tag", None)
                    head.rows += _rows(head.tag)
                if head.kind == "X":
                    self.pending.popleft()
                    self._finish(head)
                else:
                    head.plan = None
            return None
        if t == 110 and head is not None and head.kind in ("DS", "DP"):  # n: NoData
            self.pending.popleft()
        return None

    def _on_row_description(self, raw: RawMessage, head: _Item | None) -> bytes | None:
        msg = pgwire.decode_backend(raw)
        assert isinstance(msg, RowDescription)
        if head is None or head.kind not in ("Q", "DS", "DP"):
            return self._block(head, "a result whose statement the gateway cannot tell")
        plan = self._plan(msg, head)
        if head.kind != "Q":
            self.pending.popleft()
        if plan.blocked is not None:
            return self._block(head, plan.block_message() or "", plan=plan)
        formats = tuple(f.format for f in msg.fields)
        if head.kind == "Q":
            head.plan, head.formats = plan, formats
        elif head.kind == "DS":
            self.statement_plans[head.name] = plan
        else:
            portal = self.portals.get(head.name)
            if portal is not None:
                portal.plan = plan
                portal.formats = formats
        if plan.clear:
            return None
        if head.kind == "Q":
            head.masked.extend(plan.summary())
        if any(f.retype for f in plan.fields):
            return RowDescription(plan.row_description(msg.fields)).encode()
        return None

    def _on_row(self, raw: RawMessage, head: _Item | None) -> bytes | None:
        plan: MaskPlan | None = None
        formats: tuple[int, ...] = ()
        if head is not None and head.kind == "Q":
            plan, formats = head.plan, head.formats
        elif head is not None and head.kind == "X":
            portal = self.portals.get(head.name)
            if portal is not None:
                plan = portal.plan or self.statement_plans.get(portal.statement)
                formats = portal.formats
                if plan is not None and not plan.clear and not head.masked:
                    head.masked.extend(plan.summary())
        if plan is None:
            return self._block(
                head,
                "rows of a portal whose columns were not described",
                hint="describe the portal (or the statement) before executing it",
            )
        if plan.clear:
            return None
        return plan.masker(formats).message(raw.body)

    def _on_error(self, raw: RawMessage, head: _Item | None) -> bytes | None:
        out = self._redacted(raw) if self.masking else None
        msg = pgwire.decode_backend(raw)
        fields: dict[str, str] = msg.fields if isinstance(msg, ErrorResponse) else {}
        if head is not None and head.kind in ("Q", "X"):
            head.sqlstate = fields.get("C")
            if head.sqlstate == SQLSTATE and fields.get("M", "").startswith("dbaccess:"):
                head.decision = "blocked"
        self._skip_to_sync()
        return out

    def _redacted(self, raw: RawMessage) -> bytes | None:
        msg = pgwire.decode_backend(raw)
        if not isinstance(msg, ErrorResponse | NoticeResponse):
            return None
        cleaned = redact_report(msg.fields, touches_masked=True)
        if cleaned == msg.fields:
            return None
        return type(msg)(cleaned).encode()

    # -- deciding -----------------------------------------------------------------------
    def _plan(self, msg: RowDescription, item: _Item) -> MaskPlan:
        snapshot = self.catalog.current if self.catalog is not None else None

        def origin(oid: int, attnum: int) -> ColumnRef | None:
            return snapshot.origin(oid, attnum) if snapshot is not None else None

        return plan_for_row_description(
            msg.fields, origin, self.rules, lambda: None, touched=lambda: self._touched(item)
        )

    def _touched(self, item: _Item) -> list[ColumnRef] | None:
        """The columns of every relation the statement reads or writes; None: cannot tell."""
        snapshot = self.catalog.current if self.catalog is not None else None
        if snapshot is None or item.analysis is None or item.analysis.unknown:
            return None
        columns: list[ColumnRef] = []
        for statement in item.analysis.walk_all():
            if statement.command in _OPAQUE_COMMANDS:
                return None
            for name in (*statement.reads, *statement.writes):
                schema = name.schema or self.search_path[0]
                found = snapshot.columns_of(schema, name.name)
                if not found:
                    self._refresh_catalog()
                    return None  # a relation the catalog does not know (yet)
                columns.extend(found)
        return columns

    def _refresh_catalog(self) -> None:
        """Reload the catalog in a thread of its own (at most every few seconds per
        connection), so that a relation created since it was loaded is known soon."""
        catalog = self.catalog
        now = time.monotonic()
        if catalog is None or now - self._refreshed < REFRESH_INTERVAL:
            return
        self._refreshed = now
        catalog.invalidate()
        threading.Thread(target=_refresh_quietly, args=(catalog,), daemon=True).start()

    def _touches_masked(self, item: _Item) -> bool:
        if not self.masking:
            return False
        touched = self._touched(item)
        return touched is None or any(self.rules.rule_for(c) is not None for c in touched)

    def _block(
        self,
        item: _Item | None,
        why: str,
        *,
        plan: MaskPlan | None = None,
        hint: str = BLOCK_HINT,
    ) -> bytes:
        blocked = plan.blocked if plan is not None else None
        if blocked is not None:
            message = f"result column {blocked.name!r} may derive from masked data"
            detail: str | None = blocked.source or why
        else:
            message = f"refused {why}: masking applies to this session"
            detail = None
        if item is not None and item.kind in ("Q", "X"):
            item.sqlstate = SQLSTATE
            item.decision = "masking_blocked"
            if plan is not None:
                item.masked.extend(plan.summary())
        self.dropping = True
        self._skip_to_sync()
        return pgwire.error_response(
            "ERROR", SQLSTATE, f"dbaccess: {message}", hint=hint, detail=detail
        )

    # -- bookkeeping -----------------------------------------------------------------------
    def _skip_to_sync(self) -> None:
        """After an error in the extended protocol the server skips to the next Sync."""
        pending = self.pending
        while pending and pending[0].kind not in ("Q", "SYNC"):
            item = pending.popleft()
            if item.kind == "X":
                item.sqlstate = item.sqlstate or "error"
                self._finish(item)

    def _ready(self) -> None:
        pending = self.pending
        while pending:
            item = pending.popleft()
            if item.kind == "X":
                self._finish(item)
            if item.kind in ("Q", "SYNC"):
                if item.kind == "Q":
                    self._finish(item)
                return

    def _finish(self, item: _Item) -> None:
        record = self._record_event
        if record is None or item.started_at is None:
            return
        try:
            data = statement_event(
                item.sql,
                started_at=item.started_at,
                duration_ms=(time.monotonic() - item.started) * 1000,
                rows=item.rows,
                tag=item.tag,
                sqlstate=item.sqlstate,
                decision=item.decision,
                masked_fields=item.masked,
                all_literals=self._touches_masked(item),
            )
            record(self.session_id, "statement", data)
        except Exception:  # recording problems never break the relay
            log.exception("recording a statement failed")


def _refresh_quietly(catalog: Catalog) -> None:
    try:
        catalog.refresh(only_if_stale=True)
    except Exception:
        log.warning("reloading the masking catalog failed", exc_info=True)


def _rows(tag: str | None) -> int:
    if not tag:
        return 0
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() and " " in tag else 0


def _chain_client(relay: Relay, types: bytes, hook: Callable[[RawMessage, Relay], None]) -> None:
    before = relay.client_hook(types[0])

    def chained(raw: RawMessage, r: Relay) -> bytes | None:
        hook(raw, r)
        return before(raw, r) if before is not None else None

    relay.on_client(types, chained)


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
        out = [hook(m, r) for m in msgs]
        return b"".join(
            pgwire.encode_raw(m.type, m.body) if o is None else o
            for m, o in zip(msgs, out, strict=True)
        )

    relay.on_server(types, chained)


# -- wiring -----------------------------------------------------------------------------


class MaskingSetup:
    """The gateway's per-session preparation (in a worker thread) and per-connection setup."""

    def __init__(self, service: SessionService) -> None:
        self.service = service
        self.catalogs: dict[str, Catalog] = {}
        self.sessions: dict[str, tuple[MaskingRules, Catalog | None]] = {}

    def _rules(self, live: LiveSession) -> tuple[MaskingRules, Catalog | None]:
        record = live.record
        target = self.service.policy.targets.get(record.target)
        policy = target.masking if target is not None else None
        if target is None or policy is None:
            return MaskingRules(), None
        key = load_key(policy, target.name)
        rules = MaskingRules.for_session(policy, record.scope, record.groups, key)
        if not rules.active:
            return rules, None
        catalog = self.catalogs.get(target.name)
        if catalog is None:
            catalog = self.catalogs.setdefault(target.name, Catalog.for_target(target))
        return rules, catalog

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
        recorder = self.service.recorder
        MaskingHooks(
            rules,
            catalog,
            session_id=live.id,
            record=recorder.record,
        ).install(relay)
