"""A statement's access facts, made on the recorder's writer thread from what the gateway decided.

The data path keeps only references to what it already has (``AccessContext``,
built once per connection, and the masking plans of the statement's results,
``MaskHooks`` keep them on the statement); :func:`access_facts` turns them into
the ``access`` part of the statement's recording event
(``server.audit.access``) when the recorder's writer makes the event:

* the relations read and written come from the statement's analysis with the
  session's search path -- the very analysis the guard made before the
  statement ran, handed over by reference (``Relay.keep_analysis``), never
  made again here: a long text was read in a worker process, and reading it
  on the writer thread would hold the interpreter lock, and stall every
  connection, for as long (only a short text whose analysis went missing is
  analysed again, from the cache if it is there).  Only what runs
  now counts: not a PREPARE's body nor what a plain EXPLAIN plans.  An
  unqualified name the analysis resolves to several schemas of the path is
  settled by the target's catalog where the session has one; otherwise the
  session role's own schema (``$user``, which a role made for the session
  does not own) is left out when another remains;
* the columns written come from the same analysis (``columns_written``: SET
  targets, INSERT column lists; an INSERT without one writes every column the
  catalog holds), in every session;
* the columns it decides rows by (``columns_filtered``: WHERE, JOIN ON,
  GROUP BY, ORDER BY, ...) come from the same analysis too, as a ``filter``
  of the relation the text names, or, where it names none, of every relation
  read whose catalog columns have that name; they count as clear (exempt in
  an exempt session, where a rule names them);
* the columns read come from the masking plans of the statement's results: each
  result column's origin (``schema.table.column``, or the base columns it is
  derived from) and whether it left masked.  A view's column is named, and
  so are the base columns it stands for, in the state it left in, so that a
  read through a view answers for the base tables too: the catalog knows
  which base columns a view reads (through views of views too) but not which
  feeds which view column, so a masked view column stands for the masked
  ones among them (what masked it, as a computed column's ``derived from``
  names them), a clear one for the others.  A session exempt from masking
  has plans made with the rules it is exempt from (``masking.exempted``):
  what they would have masked is ``exempt``, and the facts say what exempts
  the session (``exemption``).  A session without masking rules has no
  plans, so its facts name relations without columns;
* rows are the command tag's count, the decision the gateway's, the
  approval the statement review's it ran under (the guard leaves it in
  ``Relay.reviewed``), else the session's access request.

Only a statement the gateway let run has access facts.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from operator import is_
from typing import Final

from server.audit.access import (
    FILTER,
    READ,
    WRITE,
    Facts,
    FactsTemplate,
    RelationAccess,
    SessionFacts,
    facts_template,
)
from server.gateway.analysis_pool import PROCESS_MIN_CHARS
from server.gateway.catalog import CatalogSnapshot
from server.gateway.masking import (
    NO_MASKING,
    Action,
    ColumnRef,
    FieldPlan,
    MaskingRules,
    MaskPlan,
    masks,
)
from server.gateway.sqlcheck import ANY_COLUMN, Analysis, Execution, Statement, analyze

log = logging.getLogger(__name__)

_DERIVED: Final = "derived from "
# The longest text analysed again when the guard's analysis is missing: one that
# costs the writer thread at most a few milliseconds (``analysis_pool``'s
# threshold for reading in a worker process).
REREAD_MAX: Final = PROCESS_MIN_CHARS
ALLOWED: Final = "allowed"


@dataclass(frozen=True, slots=True)
class AccessContext:
    """What every statement of one connection shares: who, the search path, the approval."""

    session: SessionFacts
    search_path: tuple[str, ...]
    role: str  # the session's database role (whose ``$user`` schema does not exist)
    approval: str | None = None
    # The session's masking rules (for an exempt session, those it is exempt
    # from): which base columns a view column stands for.
    rules: MaskingRules = NO_MASKING
    exemption: str | None = None  # what exempts the session from masking (``group G``)
    # The connection's last statement's template, with what it was made of (one
    # tuple, read and replaced whole): a connection sends one shape again and
    # again, and finding it here costs half of what the shared caches' lookup
    # does, on the writer thread, which holds the interpreter lock the event
    # loop waits for.
    # Each context's own (not an argument: ``replace`` makes a new one); it names
    # the context it was made for by its id (a copy's is not taken for its own,
    # and the context is not in a cycle with itself), and the catalog snapshot
    # by a weak reference (the shared caches hold contexts: a snapshot is not
    # kept alive by the connections that last read it).
    last: list[_Last] = dataclass_field(default_factory=list, init=False, compare=False, repr=False)


# AccessContext.last's: the context's id, the analysis or its shape, the snapshot
# (None: none), the results' plans, the template.
_Last = tuple[
    int,
    object,
    "weakref.ref[CatalogSnapshot] | None",
    tuple[MaskPlan, ...],
    FactsTemplate | None,
]


def _columns_of(source: str) -> list[tuple[str, str, str]]:
    """The catalog columns a plan's ``source`` names (``s.t.c``, or ``derived from s.t.c, ...``)."""
    text = source.removeprefix(_DERIVED)
    found = []
    for part in text.split(", "):
        pieces = part.split(".")
        if len(pieces) == 3 and all(pieces):
            found.append((pieces[0], pieces[1], pieces[2]))
    return found


def _command(analysis: Analysis, tag: str | None) -> str:
    commands = list(dict.fromkeys(s.command for s in analysis.statements if s.command))
    if commands:
        return "; ".join(commands)[:60]
    return (tag or "").split(" ")[0]


# What the facts of one statement shape are, by the identity of what they are made
# of: texts the cache gives one analysis, and results one kept plan, make the same
# relations, so the writer makes them once, and encodes what the statements of the
# shape share once (a template: None where they touch no relation).  Per catalog
# snapshot (a few kept: one per target, and the one before it), each bounded and
# emptied when full.
_Made = dict[tuple[int, ...], tuple[tuple[object, ...], FactsTemplate | None]]
_MADE: dict[int, tuple[CatalogSnapshot | None, _Made]] = {}
_SNAPSHOTS_KEPT: Final = 16
_MADE_MAX: Final = 1_024


def _made_for(snapshot: CatalogSnapshot | None) -> _Made:
    found = _MADE.get(id(snapshot))
    if found is not None and found[0] is snapshot:
        return found[1]
    if len(_MADE) >= _SNAPSHOTS_KEPT:
        _MADE.pop(next(iter(_MADE)))
    made: _Made = {}
    _MADE[id(snapshot)] = (snapshot, made)
    return made


def access_facts(
    ctx: AccessContext,
    sql: str,
    guarded: Analysis | None,
    plans: Sequence[MaskPlan],
    snapshot: CatalogSnapshot | None,
    *,
    rows: int | None,
    tag: str | None,
    decision: str,
    approval: str | None = None,
) -> Facts | None:
    """The ``access`` part of a statement's event (made by the recorder: in full, or
    as a reference to an earlier statement's), or None for one that did not run;
    ``guarded`` is the guard's analysis of ``sql``, ``approval`` the statement
    review's it ran under, else the session's counts."""
    if decision != ALLOWED or not sql:
        return None
    analysis = guarded
    if analysis is None:
        if len(sql) > REREAD_MAX:
            log.warning("no analysis of a statement of %d characters: no access facts", len(sql))
            return None
        analysis = analyze(sql, search_path=ctx.search_path)
    # A text read from a shape comes as a new analysis each time, equal to the
    # others of its shape but for its text: the shape stands for it, so that a
    # statement sent again with other numbers is made once too.
    first: object = analysis.shape if analysis.shape is not None else analysis
    memo = ctx.last
    last = memo[0] if memo else None
    # Kept by identity: the very objects, not others made since at their addresses.
    if (
        last is not None
        and last[0] == id(ctx)
        and last[1] is first
        and (last[2] is None if snapshot is None else last[2] is not None and last[2]() is snapshot)
        and len(last[3]) == len(plans)
        and all(map(is_, last[3], plans))
    ):
        template = last[4]
    else:
        parts = (first, ctx, *plans)
        key = tuple(map(id, parts))
        known = _made_for(snapshot)
        made = known.get(key)
        if made is None or not all(map(is_, made[0], parts)):
            relations = _relations(ctx, analysis, plans, snapshot)
            made_template = (
                _template(ctx, _command(analysis, tag), relations) if relations else None
            )
            if len(known) >= _MADE_MAX:
                known.clear()
            made = known[key] = (parts, made_template)
        template = made[1]
        held = None if snapshot is None else weakref.ref(snapshot)
        memo[:] = [(id(ctx), first, held, tuple(plans), template)]
    if template is None:
        return None
    return template.facts(rows, decision, None, approval or ctx.approval)


# The templates of the facts by what they say: texts that have no shape in common
# (strings differ, not only numbers) but read the same columns share one too, and
# the index rows made from it (``access.column_rows``).  Bounded, emptied when full.
_TEMPLATES: dict[
    tuple[int, str, tuple[RelationAccess, ...]], tuple[AccessContext, FactsTemplate]
] = {}


def _template(
    ctx: AccessContext, command: str, relations: tuple[RelationAccess, ...]
) -> FactsTemplate:
    key = (id(ctx), command, relations)
    found = _TEMPLATES.get(key)
    if found is not None and found[0] is ctx:
        return found[1]
    template = facts_template(
        ctx.session,
        command=command,
        # Shared by the events of the template, never changed.
        relations=[r.to_json() for r in relations],
        exemption=ctx.exemption,
    )
    if len(_TEMPLATES) >= _MADE_MAX:
        _TEMPLATES.clear()
    _TEMPLATES[key] = (ctx, template)
    return template


def _relations(
    ctx: AccessContext,
    analysis: Analysis,
    plans: Sequence[MaskPlan],
    snapshot: CatalogSnapshot | None,
) -> tuple[RelationAccess, ...]:
    relations: dict[tuple[str, str, str], tuple[list[str], set[str], set[str]]] = {}

    def relation(schema: str, table: str, action: str) -> tuple[list[str], set[str], set[str]]:
        return relations.setdefault((schema, table, action), ([], set(), set()))

    for top in analysis.statements:
        for statement, when in top.walk():
            if when is not Execution.NOW:
                continue
            for action, names in ((READ, statement.reads), (WRITE, statement.writes)):
                by_table: dict[str, list[str]] = {}
                for name in names:
                    if name.schema is not None:
                        by_table.setdefault(name.name, []).append(name.schema)
                for table, schemas in by_table.items():
                    for schema in _settled(schemas, table, ctx.role, snapshot):
                        relation(schema, table, action)
            written: dict[str, tuple[list[str], list[str]]] = {}  # table: schemas, columns
            for name, column in statement.columns_written:
                if name.schema is not None:
                    schemas, columns = written.setdefault(name.name, ([], []))
                    schemas.append(name.schema)
                    columns.append(column)
            for table, (schemas, columns) in written.items():
                for schema in _settled(list(dict.fromkeys(schemas)), table, ctx.role, snapshot):
                    named = relation(schema, table, WRITE)[0]
                    for column in _each_column(columns, schema, table, snapshot):
                        if column not in named:
                            named.append(column)
            for schema, table, column in _filtered(ctx, statement, snapshot):
                named, _, exempt = relation(schema, table, FILTER)
                if column not in named:
                    named.append(column)
                if ctx.exemption is not None and masks(ctx.rules, ColumnRef(schema, table, column)):
                    exempt.add(column)

    def read(schema: str, table: str, column: str, field: FieldPlan) -> None:
        columns, masked, exempt = relation(schema, table, READ)
        if column not in columns:
            columns.append(column)
        if field.action is Action.MASK:
            masked.add(column)
        elif field.exempt:
            exempt.add(column)

    for plan in plans:
        for field in plan.fields:
            if field.action is Action.BLOCK:
                continue
            masked_now = field.action is Action.MASK or field.exempt
            for schema, table, column in _columns_of(field.source):
                read(schema, table, column, field)
                for base in _bases(snapshot, ctx.rules, schema, table, column, masked_now):
                    read(base.schema, base.table, base.column, field)
    return tuple(
        RelationAccess(
            schema, table, action, tuple(columns), frozenset(masked), frozenset(exempt - masked)
        )
        for (schema, table, action), (columns, masked, exempt) in relations.items()
    )


def _filtered(
    ctx: AccessContext, statement: Statement, snapshot: CatalogSnapshot | None
) -> list[tuple[str, str, str]]:
    """The columns ``statement`` decides rows by, with their relation: the one the
    text names (its schema settled as a read's is), else every relation it reads
    whose catalog columns have that name (none without a catalog)."""
    found: list[tuple[str, str, str]] = []
    by_table: dict[tuple[str, str], list[str]] = {}
    loose: list[str] = []
    for name, column in statement.columns_filtered:
        if name is None:
            loose.append(column)
        elif name.schema is not None:
            by_table.setdefault((name.name, column), []).append(name.schema)
    for (table, column), schemas in by_table.items():
        for schema in _settled(list(dict.fromkeys(schemas)), table, ctx.role, snapshot):
            found.append((schema, table, column))
    if loose and snapshot is not None:
        for name in dict.fromkeys(statement.reads):
            if name.schema is None:
                continue
            have = {c.column for c in snapshot.columns_of(name.schema, name.name)}
            found += [(name.schema, name.name, c) for c in loose if c in have]
    return list(dict.fromkeys(found))


def _bases(
    snapshot: CatalogSnapshot | None,
    rules: MaskingRules,
    schema: str,
    table: str,
    column: str,
    masked: bool,
) -> list[ColumnRef]:
    """The base columns a view column stands for (none for a table's column): of those
    the view reads, the masked ones when it left masked (what masked it), the others
    when it came back clear (a view column vouched for in clear does not show its
    masked sources); all of them when the rules tell none apart."""
    if snapshot is None:
        return []
    for ref in snapshot.columns_of(schema, table):
        if ref.column == column:
            if not ref.derived:
                return []
            sources = sorted(ref.sources, key=str)
            return [s for s in sources if masks(rules, s) is masked] or sources
    return []


def _each_column(
    columns: list[str], schema: str, table: str, snapshot: CatalogSnapshot | None
) -> list[str]:
    """``columns`` with :data:`ANY_COLUMN` (an INSERT without a column list) standing
    for every column of the relation the catalog holds, or for none without it."""
    if ANY_COLUMN not in columns:
        return columns
    every = [c.column for c in snapshot.columns_of(schema, table)] if snapshot is not None else []
    return [c for c in columns if c != ANY_COLUMN] + every


def _settled(
    schemas: list[str], table: str, role: str, snapshot: CatalogSnapshot | None
) -> list[str]:
    """Which of the schemas an unqualified name may be in it is in (see the module's docstring)."""
    if len(schemas) < 2:
        return schemas
    if snapshot is not None:
        for schema in schemas:
            if snapshot.columns_of(schema, table):
                return [schema]
    return [s for s in schemas if s != role] or schemas
