"""Masking's refusals before a statement runs, for the guard to apply like its own rules.

The masking hooks judge a result when the server sends it, which is too late
for what a statement does besides answering: by then ``INSERT INTO t SELECT
ssn FROM people`` has copied the clear values.  So in a session where masking
applies, :func:`masking_decision` judges each statement before it is relayed,
and the guard (``server.gateway.statements``) refuses it the way it refuses a
guardrail's block (the message replaced by one PostgreSQL rejects, its error
swapped for 42501 with the rule and a hint).  Rules, first match wins, over
every statement of the input and every statement nested in one (also those a
PREPARE runs later and those a plain EXPLAIN only plans):

``masking.statistics``
    a statement that reads the planner's statistics (``pg_stats``,
    ``pg_stats_ext``, ``pg_stats_ext_exprs``, ``pg_statistic``): their most
    common values and histogram bounds are values of the columns, masked ones
    included, and PostgreSQL shows them to whoever may read the column.
``masking.dynamic_sql``
    a call of a function that runs a query given as text (``query_to_xml``,
    ``table_to_xml``, ``ts_stat``, ...; guardrails' dynamic-SQL list), even in
    a scope whose guardrails allow them: its result has no origin to mask by.
``masking.untrusted_function``
    a call of a function outside ``pg_catalog`` and ``information_schema``
    that the policy's ``trusted_functions`` does not list: a function reads
    any table it likes, masked columns included, and hands back its own
    result with no column origin the masking could follow.  An unqualified
    call counts as built-in only when no schema other than those two has a
    function of that name (``functions`` of the catalog: PostgreSQL chooses
    among every function of the name on the path, by argument types, so a
    same-named ``public.lower(int)`` could win); while those names are not
    known, every unqualified call outside the trusted list is refused.  A call
    in attribute notation (``select t.f from t`` runs ``f(t)``), which the
    analysis takes for a column, counts too: a name after a dot
    (``sqlcheck.dotted_names``) that is such a function and neither a column
    nor a relation the statement names.
``masking.write_from_masked``
    a statement that writes (INSERT, UPDATE, MERGE, DELETE, COPY FROM, CREATE
    TABLE AS, SELECT INTO, a view or a data-modifying CTE) and reads a relation
    with masked columns (a view counts when one of its sources does).  The
    relation an UPDATE or an ``INSERT ... ON CONFLICT`` writes counts as read
    when the values it assigns or its RETURNING name one of its masked columns,
    or a name that is not a clear column of it or of a relation the statement
    reads (a whole-row reference, ``*``, a subquery's alias): ``update people
    set name = ssn`` would copy the clear value into a clear column, ``set
    name = 'x'`` copies nothing.  So does the relation of an INSERT or DELETE
    nested in another statement whose RETURNING names such a column, as the
    statement around it may write what it returns elsewhere (``with d as
    (delete ... returning ssn) insert into log select ssn from d``).  A MERGE,
    and a statement whose text is too long to have been kept whole, always
    count their target as read.  A relation read that the catalog does not
    hold cannot be told and is refused too.
``masking.inference`` (refused, or sent for review with ``inference: review``;
not applied with ``inference: allow``)
    a statement that reads a relation with masked columns and names a masked
    column where it decides which rows come back, or their groups or order
    (``sqlcheck.predicate_columns``: WHERE, HAVING, JOIN ON/USING, GROUP BY,
    ORDER BY, DISTINCT ON, PARTITION BY): ``where ssn like '123%'`` answers
    a question about the clear value.  Column names are matched without their
    table (aliases are not resolved), so a clear column that shares its name
    with a masked one of another relation read counts as masked, and so does a
    name none of them has (a whole-row reference, a CTE's column); a text the
    gateway cannot read is refused.  Then, with names resolved through
    subqueries and CTEs (``sqlcheck.computed_uses``): a predicate, grouping
    or ordering on a derived column whose lineage holds a masked column
    (``select id from (select id, ssn as name from people) s where name like
    '1%'``), a set operation that compares rows (UNION, INTERSECT, EXCEPT)
    and DISTINCT over one.
``masking.computed`` (as ``inference``: refused, reviewed or not applied)
    a statement that reads a relation with masked columns and uses one other
    than as a bare output: a select-list or RETURNING item that is the column
    itself (aliased, parenthesised, ``*``, ``t.*``), passed on untouched
    through subqueries, CTEs and UNION ALL.  A masked column may be selected,
    not computed with: a function, operator, cast, CASE, aggregate,
    set-returning function, LIMIT or scalar subquery over it tells its value
    through an error or none, an error text, a row count, the time taken or
    a lock, whatever its output is masked to.  A statement whose uses
    ``computed_uses`` cannot establish (a name no relation in scope has, a
    recursive CTE, MERGE, an unreadable text) is refused too.

Relations are resolved as the masking hooks resolve them
(``masking_relay.touched_relations``): the statement is analysed with
``masking_relay.UNQUALIFIED`` as its search_path, and an unqualified name is
the first schema of the session's path that holds it.

The advisory-lock functions, whose keys ``pg_locks`` shows, are refused in
every masked session by the guardrails (``guardrails.SIDE_CHANNELS``), with
``set_config`` and ``pg_notify``: with ``inference: allow`` nothing here stops a
masked value from being computed into a key.

Known limits: a user-defined operator or cast, a trigger, a column default or a view
over a function runs functions that the statement does not name; a function
created after the catalog was loaded is not among the known names until the
next reload (five minutes at most; creating one needs a scope that allows code).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from server.gateway import analysis_pool
from server.gateway.guardrails import (
    ALLOWED,
    CHANGING_FUNCTIONS,
    DYNAMIC_SQL_FUNCTIONS,
    READING_FUNCTIONS,
    Decision,
    Outcome,
    _Pattern,
    _patterns,
)
from server.gateway.sqlcheck import (
    ANY_COLUMN,
    DEFAULT_TIME_BUDGET,
    MAX_TEXT,
    PREDICATE,
    Analysis,
    CopyEndpoint,
    Name,
    Statement,
    StatementClass,
    analyze_function_call,
    computed_uses,
    dotted_names,
    passed_on_columns,
    predicate_columns,
    relation_schemas,
)

# A schema name PostgreSQL cannot have (it holds a NUL).  Analysed with it as
# the whole search_path, a statement reports its unqualified relations in this
# schema and its qualified ones in their own: which names were written without
# a schema, which the analysis with the session's path cannot tell (it reports
# every schema such a name may resolve to, as a qualified name would be).
UNQUALIFIED = "\x00"
# Functions of these schemas read only what the session's own SQL names.
BUILTIN_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
_COPIES_TARGET = frozenset({"UPDATE", "MERGE"})
_RETURNS = frozenset({"INSERT", "DELETE"})
_CONFLICT = re.compile(r"\bconflict\b", re.IGNORECASE)
_RETURNING = re.compile(r"\breturning\b", re.IGNORECASE)
FUNCTION_HINT = (
    "call built-in functions only, or ask an administrator to list the function "
    "under masking.trusted_functions once it is known not to read masked columns"
)
WRITE_HINT = (
    "read the masked columns without writing them elsewhere, or ask for review in "
    "a session where masking does not apply"
)
INFERENCE_HINT = (
    "filter, join, group and sort on clear columns only, or ask for a statement review "
    "in a scope where masking does not apply"
)
COMPUTED_HINT = (
    "select the masked column itself: computations on it (functions, operators, casts, "
    "CASE, set-returning functions, LIMIT) reveal its value through errors, row counts, "
    "timing or locks; or ask for a statement review in a scope where masking does not apply"
)
STATISTICS_HINT = "read planner statistics in a scope where masking does not apply"
DYNAMIC_HINT = "run the query itself, where masking sees it"
# The planner's statistics: most common values and histogram bounds are values
# of the column, and PostgreSQL shows them to anyone who may read the column.
STATISTICS = frozenset(
    {"pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data"}
)
# Functions that run a query given as text: whatever it reads, the result
# carries no origin and the text no lineage (even where a scope allows them).
_RUNS_SQL = _patterns(DYNAMIC_SQL_FUNCTIONS)
_CHANGES = _patterns(CHANGING_FUNCTIONS)
_READS_ONLY = _patterns(READING_FUNCTIONS)


def _changes(call: Name) -> bool:
    return any(p.denies(call) for p in _CHANGES) and not any(p.denies(call) for p in _READS_ONLY)


def may_have_changed(statement: Statement, functions: frozenset[str] | None) -> bool:
    """Whether a statement that ran may have changed something: any but a read, and a
    read that calls a built-in function that changes something
    (``guardrails.CHANGING_FUNCTIONS``: ``select nextval('s')``) or a function that
    is not built-in, which may do anything (``functions``: the names of those
    outside the built-in schemas).  ``statement.functions`` holds the calls of its
    nested statements that run with it.

    Where those names are not known (None: a session with content detectors only,
    whose target's catalog is not loaded, or before its first load) an unqualified
    call is taken for the built-in it usually is: counting every ``lower(x)`` would
    end the connection for a plain read, and telling the client its read
    committed something.  A masked session refuses such calls before they run
    unless the policy trusts them."""
    if statement.kind is not StatementClass.READ:
        return True
    if statement.copy is not None and statement.copy.endpoint is not CopyEndpoint.STDIO:
        return True  # COPY ... TO a file or a program on the server
    for call in statement.functions:
        if _changes(call):
            return True
        if call.schema is None:
            if functions is not None and call.name in functions:
                return True
        elif call.schema not in BUILTIN_SCHEMAS:
            return True
    return False


def call_may_have_changed(oid: int) -> bool:
    """Whether a FunctionCall message of the function ``oid`` that ran may have
    changed something: unless it is a large-object function that only reads
    (``sqlcheck.analyze_function_call`` knows those libpq calls by OID; any other
    may do anything)."""
    (statement,) = analyze_function_call(oid).statements
    return not statement.functions or any(_changes(call) for call in statement.functions)


UNKNOWN_HINT = "try again in a few seconds (the gateway reloads its catalog), or qualify the name"


@dataclass(frozen=True)
class MaskedSession:
    """What the decision needs to know about a masked session.

    ``holds`` says whether the catalog holds a relation, ``masked`` whether one
    has masked columns; ``functions`` are the names of the functions outside
    the built-in schemas (None: not known).  ``trusted`` are the policy's
    ``trusted_functions`` entries.
    """

    search_path: tuple[str, ...]
    holds: Callable[[Name], bool]
    masked: Callable[[Name], bool]
    functions: frozenset[str] | None
    trusted: frozenset[str] = frozenset()
    catalog_first: bool = True
    # Column name -> masked, of a relation the catalog holds (for ``inference``).
    columns: Callable[[Name], Mapping[str, bool]] = lambda _name: {}
    # What a masked column in a predicate, grouping or ordering gets (ALLOW: not looked for).
    inference: Outcome = Outcome.BLOCK
    # Told of a relation no schema of the path holds (``_resolve``).
    missing: Callable[[Name], None] = lambda _name: None
    _trusted: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_trusted", _patterns(self.trusted))

    def trusts(self, call: Name) -> bool:
        if any(p.allows(call, self.catalog_first) for p in self._trusted):
            return True
        if call.schema is not None:
            return call.schema in BUILTIN_SCHEMAS
        return self.functions is not None and call.name not in self.functions


def masking_decision(written: Analysis, session: MaskedSession, sql: str | None = None) -> Decision:
    """The decision for an input analysed with ``UNQUALIFIED`` as its search_path
    (``ALLOWED`` when no rule refuses it); ``sql`` is its text, which the
    inference rule reads (without it that rule is not applied)."""
    for top in written.statements:
        for statement, _ in top.walk():
            for name in statement.reads:
                if name.name in STATISTICS and name.schema in (UNQUALIFIED, "pg_catalog"):
                    return Decision(
                        Outcome.BLOCK,
                        "masking.statistics",
                        f"{name.name} holds sample values of table columns, masked ones included",
                        STATISTICS_HINT,
                        top.index,
                    )
            for call in statement.functions:
                if any(p.denies(call) for p in _RUNS_SQL):
                    return Decision(
                        Outcome.BLOCK,
                        "masking.dynamic_sql",
                        f"{call}() runs SQL text it is given, which masking cannot follow",
                        DYNAMIC_HINT,
                        top.index,
                    )
                if not session.trusts(call):
                    return Decision(
                        Outcome.BLOCK,
                        "masking.untrusted_function",
                        f"{call}() is not a function masking trusts: it could read masked "
                        "columns itself",
                        FUNCTION_HINT,
                        top.index,
                    )
        for statement, _ in top.walk():
            if not statement.writes:
                continue
            for name in _sources(statement, session, nested=statement is not top):
                resolved = _resolve(name, session)
                if resolved is None:
                    return Decision(
                        Outcome.BLOCK,
                        "masking.write_from_masked",
                        f"{statement.command} reads {_shown(name)}, which the gateway does "
                        "not know, so it cannot tell whether masked columns would be "
                        "written elsewhere",
                        UNKNOWN_HINT,
                        top.index,
                    )
                masked = next((n for n in resolved if session.masked(n)), None)
                if masked is not None:
                    return Decision(
                        Outcome.BLOCK,
                        "masking.write_from_masked",
                        f"{statement.command} writes and reads {masked}, which has masked "
                        "columns: their clear values would be written",
                        WRITE_HINT,
                        top.index,
                    )
    if sql is not None:
        attribute = _attribute_call(written, session, sql)
        if attribute is not None:
            return attribute
    if session.inference is not Outcome.ALLOW and sql is not None:
        return _inference(written, session, sql)
    return ALLOWED


def _attribute_call(written: Analysis, session: MaskedSession, sql: str) -> Decision | None:
    """A function called in attribute notation (``select t.f from t`` runs
    ``f(t)``), which the analysis reports as a column: a name after a dot that
    is a function outside the built-in schemas and neither a column nor a
    relation the statement names."""
    if "." not in sql:
        return None  # nothing after a dot: no attribute notation
    dotted = analysis_pool.read(sql, dotted_names, None, DEFAULT_TIME_BUDGET)
    if dotted is None:
        return None  # the analysis would not have understood it either
    functions = session.functions
    candidates = dotted if functions is None else dotted & functions
    if not candidates:
        return None
    names: set[str] = set()
    columns: set[str] = set()
    for statement in written.walk_all():
        for relation_name in (*statement.reads, *statement.writes):
            names.add(relation_name.name)
            for relation in _resolve(relation_name, session) or ():
                columns.update(session.columns(relation))
        names.update(f.name for f in statement.functions)  # judged above
    for word in sorted(candidates - names - columns):
        if not session.trusts(Name((word,))):
            return Decision(
                Outcome.BLOCK,
                "masking.untrusted_function",
                f"x.{word} may call the function {word}() on x, which masking does not "
                "trust: it could read masked columns itself",
                FUNCTION_HINT,
                0,
            )
    return None


def _columns_read(written: Analysis, session: MaskedSession) -> tuple[set[str], set[str]]:
    """The columns of the relations the statements name that the catalog holds,
    and which of them are masked."""
    masked: set[str] = set()
    known: set[str] = set()
    for statement in written.walk_all():
        for name in (*statement.reads, *statement.writes):
            # A relation the catalog does not hold had no masked columns when it
            # was loaded; what a write would copy is the other rule's business.
            for relation in _resolve(name, session) or ():
                for column, is_masked in session.columns(relation).items():
                    known.add(column)
                    if is_masked:
                        masked.add(column)
    return known, masked


def reads_masked(written: Analysis, session: MaskedSession) -> bool:
    """Whether a statement names a relation with masked columns: only then does
    :func:`masking_decision` read its text for inference and computed uses."""
    return bool(_columns_read(written, session)[1])


def _inference(written: Analysis, session: MaskedSession, sql: str) -> Decision:
    known, masked = _columns_read(written, session)
    if not masked:
        return ALLOWED
    referenced = analysis_pool.read(sql, predicate_columns, None, DEFAULT_TIME_BUDGET)
    if referenced is None:
        why = "the gateway cannot read which columns it filters, groups or sorts on"
    else:
        # A name no relation has (an output alias, a whole-row reference, a
        # CTE's column) may stand for a masked column: counted as one.
        hits = sorted(c for c in referenced if c in masked or c not in known or c == ANY_COLUMN)
        if not hits:
            return _computed(session, sql)
        shown = hits[0] if hits[0] != ANY_COLUMN else "every column of a relation"
        why = f"it filters, joins, groups or sorts on {shown}"
    return Decision(
        session.inference,
        "masking.inference",
        f"{why}, in a statement that reads masked columns: the result would tell "
        "what the masked values are",
        INFERENCE_HINT,
        0,
    )


def _computed(session: MaskedSession, sql: str) -> Decision:
    """``masking.computed``, and ``masking.inference`` for a predicate on a
    column derived from a masked one (``sqlcheck.computed_uses``, which
    resolves names through subqueries and CTEs)."""

    def lookup(name: Name) -> list[str] | None:
        found = session.columns(name) if session.holds(name) else {}
        return list(found) or None

    uses = computed_uses(sql, session.search_path, lookup)
    if uses is None:
        return Decision(
            session.inference,
            "masking.computed",
            "the gateway cannot tell how this statement uses the masked columns it reads, "
            "so it cannot tell whether it computes with them",
            COMPUTED_HINT,
            0,
        )
    for kind, sources in uses:
        hit = sorted(f"{n.name}.{c}" for n, c in sources if session.columns(n).get(c, False))
        if not hit:
            continue
        if kind == PREDICATE:
            return Decision(
                session.inference,
                "masking.inference",
                f"it filters, joins, groups, sorts or compares on a value of {hit[0]}, which "
                "is masked: the result would tell what the masked values are",
                INFERENCE_HINT,
                0,
            )
        return Decision(
            session.inference,
            "masking.computed",
            f"it computes with {hit[0]}, which is masked: a masked column may be selected, "
            "not computed with, as errors, row counts, timing or locks would tell its value",
            COMPUTED_HINT,
            0,
        )
    return ALLOWED


def _sources(statement: Statement, session: MaskedSession, *, nested: bool) -> Iterable[Name]:
    """What a writing statement reads, for ``write_from_masked``: its reads, and
    the relation it writes when it passes on values of that relation's masked
    columns (see :func:`_passes_on_masked`)."""
    yield from statement.reads
    command, text = statement.command, statement.text
    cut = len(text) >= MAX_TEXT  # cut for messages: past the cut is not seen
    if not (
        command in _COPIES_TARGET
        or (command == "INSERT" and (cut or _CONFLICT.search(text)))
        # Nested, its RETURNING feeds the statement around it, which may write
        # what it gets elsewhere: ``with d as (delete ... returning ssn)
        # insert into log select ssn from d``.
        or (nested and command in _RETURNS and (cut or _RETURNING.search(text)))
    ):
        return
    passed_on = None if cut or command == "MERGE" else passed_on_columns(text)
    for target in statement.writes:
        if passed_on is None or _passes_on_masked(passed_on, target, statement, session):
            yield target


def _passes_on_masked(
    passed_on: frozenset[str], target: Name, statement: Statement, session: MaskedSession
) -> bool:
    """Whether the values an UPDATE assigns or a RETURNING hands on may hold a
    masked column of ``target``: a name that is masked there, or that neither
    it nor another relation the statement reads has as a clear column (a
    whole-row reference, ``*``, an alias)."""
    relations = _resolve(target, session)
    if relations is None:
        return True  # the caller reports it as unknown
    columns: dict[str, bool] = {}
    for relation in relations:
        for column, masked in session.columns(relation).items():
            columns[column] = columns.get(column, False) or masked
    clear_elsewhere: set[str] = set()
    for name in statement.reads:
        for relation in _resolve(name, session) or ():
            clear_elsewhere.update(c for c, m in session.columns(relation).items() if not m)
    return any(
        name == ANY_COLUMN
        or columns.get(name, False)
        or (name not in columns and name not in clear_elsewhere)
        for name in passed_on
    )


def resolve_name(
    name: Name, search_path: tuple[str, ...], holds: Callable[[Name], bool]
) -> list[Name] | None:
    """The relations a name of an analysis with :data:`UNQUALIFIED` as its
    search_path is, as PostgreSQL resolves it with ``search_path``; None when
    the catalog holds none.  An unqualified name is the first schema of the
    path that holds it.  A ``pg_*`` name shows as ``pg_catalog``'s whether it
    was written so or not: both are taken."""
    catalog = name.name.startswith("pg_")
    if name.schema != UNQUALIFIED and not (catalog and name.schema == "pg_catalog"):
        return [name] if holds(name) else None
    found: list[Name] = []
    for schema in relation_schemas(search_path, catalog=catalog):
        candidate = Name((schema, name.name))
        if holds(candidate):
            found.append(candidate)
            break
    if name.schema == "pg_catalog" and holds(name) and name not in found:
        found.append(name)
    return found or None


def _resolve(name: Name, session: MaskedSession) -> list[Name] | None:
    found = resolve_name(name, session.search_path, session.holds)
    if found is None:
        session.missing(name)
    return found


def _shown(name: Name) -> str:
    return name.name if name.schema == UNQUALIFIED else str(name)
