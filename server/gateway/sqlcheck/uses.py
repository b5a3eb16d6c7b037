"""Where a text uses columns other than by handing their values back, for masking.

:func:`predicate_columns` names the columns a text filters, joins, groups or
sorts on (WHERE, HAVING, JOIN ON/USING, GROUP BY, ORDER BY, DISTINCT ON,
PARTITION BY, ON CONFLICT's target), by name only, for masking's inference
rule; :func:`passed_on_columns` the columns whose values an UPDATE, INSERT or
DELETE passes on (SET values, RETURNING).  Both fold names as PostgreSQL does
and give :data:`ANY_COLUMN` for a whole-row reference or ``*``; None when the
text cannot be read.

``computed_uses(sql, search_path, columns)`` walks the statement the way
``lineage`` does (``_Uses`` extends ``_Lineage``) and names every place a base
column is used other than by passing its value on: :data:`PREDICATE` (deciding
which rows come back, their groups or order) or :data:`COMPUTED` (computed with,
compared), for masking's ``computed`` rule; None when it cannot be established.
Texts are read once each (LRUs of 1024).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token

from server.gateway.sqlcheck.budgets import _CACHE_MAX_KEY, DEFAULT_MAX_LEN
from server.gateway.sqlcheck.facts import _QUERY_ROOTS
from server.gateway.sqlcheck.lexing import _L_PAREN, _R_PAREN, _parse, _readable_tokens, _split
from server.gateway.sqlcheck.lineage import (
    _DML_LEADS,
    _EMPTY,
    _NO_ROWS_LEADS,
    _QUERY_LEADS,
    ColumnLookup,
    Source,
    _all_of,
    _Columns,
    _folded,
    _Lineage,
    _NoLineage,
    _Rel,
    _Scope,
)
from server.gateway.sqlcheck.model import _Unknown
from server.gateway.sqlcheck.names import ANY_COLUMN, _fold


def predicate_columns(sql: str, *, max_len: int = DEFAULT_MAX_LEN) -> frozenset[str] | None:
    """The names of the columns ``sql`` refers to where they decide which rows
    are touched, how they are grouped or ordered: WHERE, HAVING, JOIN ON and
    USING, GROUP BY, ORDER BY, DISTINCT ON, window PARTITION BY and the target
    of ON CONFLICT, in every
    statement and subquery.  A position or an output name in GROUP BY / ORDER
    BY stands for the columns of that select-list entry.  Names are folded as
    PostgreSQL folds them, without their table (an alias says nothing without
    the FROM list); :data:`ANY_COLUMN` stands for a reference to every column
    of a relation.  None when the text cannot be read (never raises)."""
    if len(sql) > max_len:
        return None
    if len(sql) <= _CACHE_MAX_KEY:
        return _predicate_columns_cached(sql)
    return _read_predicate_columns(sql)


@functools.lru_cache(maxsize=1024)
def _predicate_columns_cached(sql: str) -> frozenset[str] | None:
    # A statement sent again (a prepared one, a loop) is read once.
    return _read_predicate_columns(sql)


def _read_predicate_columns(sql: str) -> frozenset[str] | None:
    tokens = _readable_tokens(sql)
    if tokens is None:
        return None
    try:
        found: set[str] = set()
        for chunk in _split(tokens):
            if not _chunk_predicates(sql, chunk, found):
                return None
        return frozenset(found)
    except (SqlglotError, RecursionError, _Unknown):
        return None


def passed_on_columns(sql: str, *, max_len: int = DEFAULT_MAX_LEN) -> frozenset[str] | None:
    """The names of the columns whose values one UPDATE, INSERT or DELETE passes
    on from the rows it touches: the values its SET assigns (also an INSERT's
    ``ON CONFLICT DO UPDATE SET``) and what its RETURNING hands back, with
    every subquery in them.  Folded and without their table, as in
    :func:`predicate_columns` (:data:`ANY_COLUMN` for a whole-row reference or
    ``*``).  None when the text is not one such statement sqlglot reads
    (MERGE, several statements, anything else; never raises)."""
    tokens = _readable_tokens(sql) if len(sql) <= max_len else None
    if tokens is None:
        return None
    try:
        chunks = list(_split(tokens))
        if len(chunks) != 1:
            return None
        trees = _parse(chunks[0], sql)
    except (SqlglotError, RecursionError, _Unknown):
        return None
    if len(trees) != 1 or not isinstance(trees[0], exp.Update | exp.Insert | exp.Delete):
        return None
    tree = trees[0]
    values: list[exp.Expr] = []
    owner = tree if isinstance(tree, exp.Update) else tree.args.get("conflict")
    if isinstance(owner, exp.Expr):
        for assignment in owner.expressions:
            if not isinstance(assignment, exp.EQ):
                return None
            if not _is_default(assignment.expression):
                values.append(assignment.expression)
    returning = tree.args.get("returning")
    if isinstance(returning, exp.Expr):
        values.append(returning)
    found: set[str] = set()
    for value in values:
        found.update(_column_names(value))
    return frozenset(found)


def _is_default(value: exp.Expr) -> bool:
    # ``SET a = DEFAULT``: sqlglot reads the keyword as a column, which
    # PostgreSQL cannot have under that name unless it is quoted.
    if not isinstance(value, exp.Column) or value.table:
        return False
    ident = value.this
    return (
        isinstance(ident, exp.Identifier) and not ident.quoted and ident.this.upper() == "DEFAULT"
    )


# Where the query of DECLARE ... FOR, PREPARE ... AS, EXPLAIN ..., COPY (...) starts.
_QUERY_WORDS = frozenset({"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES"})


def _chunk_predicates(sql: str, chunk: list[Token], found: set[str]) -> bool:
    try:
        trees = _parse(chunk, sql)
    except SqlglotError:
        trees = [None]
    if all(tree is not None and not isinstance(tree, exp.Command) for tree in trees):
        for tree in trees:
            assert tree is not None
            _predicate_columns(tree, found)
        return True
    # A statement that holds a query sqlglot does not parse around it: the
    # query from its first word (inside the parentheses for COPY).
    start = next((i for i, t in enumerate(chunk) if t.text.upper() in _QUERY_WORDS), None)
    if start is None or start == 0:
        return False
    inner = chunk[start:]
    if chunk[0].text.upper() == "COPY":
        depth = 1
        for i, token in enumerate(inner):
            depth += {_L_PAREN: 1, _R_PAREN: -1}.get(token.token_type, 0)
            if depth == 0:
                inner = inner[:i]
                break
        else:
            return False
    return bool(inner) and _chunk_predicates(sql, inner, found)


def _column_names(node: exp.Expr) -> Iterator[str]:
    if isinstance(node, exp.Column):
        yield _column_name(node)
    for column in node.find_all(exp.Column):
        if column is not node:
            yield _column_name(column)
    for star in node.find_all(exp.Star):
        if not isinstance(star.parent, exp.Count):
            yield ANY_COLUMN


def _column_name(column: exp.Column) -> str:
    ident = column.this
    if not isinstance(ident, exp.Identifier):
        return ANY_COLUMN
    return _fold(str(ident.this), bool(ident.quoted))


def _predicate_columns(tree: exp.Expr, found: set[str]) -> None:
    for node in tree.walk():
        if isinstance(node, exp.Where | exp.Having):
            found.update(_column_names(node))
        elif isinstance(node, exp.Join):
            for key in ("on", "using"):
                value = node.args.get(key)
                for part in value if isinstance(value, list) else [value]:
                    if isinstance(part, exp.Identifier):
                        found.add(_fold(str(part.this), bool(part.quoted)))
                    elif isinstance(part, exp.Expr):
                        found.update(_column_names(part))
        elif isinstance(node, exp.Distinct):
            on = node.args.get("on")
            if isinstance(on, exp.Expr):
                found.update(_column_names(on))
        elif isinstance(node, exp.Window):
            for part in node.args.get("partition_by") or []:
                found.update(_column_names(part))
        elif isinstance(node, exp.OnConflict):
            # The conflict target decides which row is updated: ``on conflict
            # (email) do update ... returning id`` names the row holding a guess.
            for key in node.args.get("conflict_keys") or []:
                found.update(_column_names(key))
            if node.args.get("constraint") is not None:
                found.add(ANY_COLUMN)  # a constraint's columns are not in the text
        elif isinstance(node, exp.Group | exp.Order):
            for item in node.expressions:
                target = item.this if isinstance(item, exp.Ordered) else item
                found.update(_output_columns(target, node.parent))
                found.update(_column_names(target))


def _output_columns(item: exp.Expr, owner: exp.Expr | None) -> Iterator[str]:
    """The columns a GROUP BY / ORDER BY position or output name stands for."""
    positional = isinstance(item, exp.Literal) and not item.is_string
    named = isinstance(item, exp.Column) and not item.table
    if not positional and not named:
        return
    if not isinstance(owner, exp.Select):
        # A set operation's output, or a window: every column of the statement.
        if owner is not None:
            yield from _column_names(owner)
        yield ANY_COLUMN
        return
    projections = owner.expressions
    if positional:
        index = int(str(item.this)) - 1 if str(item.this).isdigit() else -1
        if not 0 <= index < len(projections):
            yield ANY_COLUMN
            return
        yield from _column_names(projections[index])
        return
    name = _column_name(item)  # type: ignore[arg-type]
    for projection in projections:
        if isinstance(projection, exp.Alias) and _fold(projection.alias, False) == name:
            yield from _column_names(projection.this)


# -- where masked values are computed with ------------------------------------

# Where a use of a column is: deciding which rows come back, their groups or
# order (``PREDICATE``), or anything else than passing the value on (``COMPUTED``).
PREDICATE = "predicate"
COMPUTED = "computed"
# A use: where, and the base columns whose values it may read.
Use = tuple[str, frozenset[Source]]
# Statements whose text holds no column reference a query could compute with.
_NO_QUERY_LEADS = frozenset(
    {
        "SHOW",
        "LISTEN",
        "UNLISTEN",
        "DISCARD",
        "DEALLOCATE",
        "EXECUTE",
        "FETCH",
        "MOVE",
        "CLOSE",
        "TRUNCATE",
        "LOCK",
        "ANALYZE",
        "VACUUM",
        "COPY",
        "GRANT",
        "REVOKE",
        "COMMENT",
        "CHECKPOINT",
    }
)
# Select clauses that are not expressions over the rows.
_SELECT_SKIPPED = frozenset(
    {
        "expressions",
        "from_",
        "joins",
        "with_",
        "kind",
        "locks",
        "into",
        "hint",
        "operation_modifiers",
    }
)
_ORDERING = frozenset({"where", "having", "qualify", "group", "order", "distinct", "windows"})
_DML_SKIPPED = frozenset(
    {"this", "with_", "from_", "joins", "using", "expression", "returning", "kind", "alternative"}
)


def computed_uses(
    sql: str,
    search_path: tuple[str, ...],
    columns: ColumnLookup,
    *,
    max_len: int = DEFAULT_MAX_LEN,
) -> tuple[Use, ...] | None:
    """Every place where ``sql`` uses a base column other than by passing its
    value on untouched, with the base columns that use may read; None when that
    cannot be established (never raises).

    Passing on is a select-list or RETURNING item that is a column itself
    (aliased or not), ``*`` or ``t.*``, through subqueries in FROM, CTEs and
    UNION ALL.  Everything else is a use: an expression, function, cast,
    operator or CASE over a column (also a function in FROM), WHERE, HAVING,
    JOIN ON/USING, GROUP BY, ORDER BY, DISTINCT (ON), windows, LIMIT/OFFSET,
    a scalar or EXISTS subquery's result, SET values, and the outputs of a
    set operation that compares rows (UNION, INTERSECT, EXCEPT).  Names are
    resolved as :func:`result_lineage` resolves them, so a derived column
    counts with the base columns it comes from (``select c from (select ssn
    as c from t) s where c like '1%'`` uses ``ssn``).  Every statement of the
    input is read, and the query inside EXPLAIN, PREPARE, DECLARE, CREATE ...
    AS and COPY (...); a statement of another kind that may hold one, a
    recursive CTE, MERGE or a name no relation in scope has gives None."""
    if len(sql) > max_len:
        return None
    trees = _uses_trees_cached(sql) if len(sql) <= _CACHE_MAX_KEY else _uses_trees(sql)
    if trees is None:
        return None
    try:
        uses = _Uses(search_path, columns)
        for tree in trees:
            uses.query(tree, _Scope())
        return tuple(uses.found)
    except (SqlglotError, RecursionError, _Unknown, _NoLineage):
        return None
    except Exception:  # a tree shape not foreseen: fail closed
        logging.getLogger(__name__).warning("computed uses failed", exc_info=True)
        return None


@functools.lru_cache(maxsize=1024)
def _uses_trees_cached(sql: str) -> tuple[exp.Expr, ...] | None:
    # Checked before every run of a statement in a masked session: the text is
    # parsed once (the trees are only read, as for the lineage); what uses it
    # depends on the catalog and is worked out each time.
    return _uses_trees(sql)


def _uses_trees(sql: str) -> tuple[exp.Expr, ...] | None:
    """The query of each statement of ``sql`` that holds one, or None."""
    tokens = _readable_tokens(sql)
    if tokens is None:
        return None
    trees: list[exp.Expr] = []
    try:
        for chunk in _split(tokens):
            query = _query_of(chunk)
            if query is None:
                continue
            parsed = _parse(query, sql)
            if len(parsed) != 1 or parsed[0] is None:
                return None
            tree = parsed[0]
            if not isinstance(tree, (*_QUERY_ROOTS, exp.Insert, exp.Update, exp.Delete)):
                return None
            trees.append(tree)
    except (SqlglotError, RecursionError, _Unknown, _NoLineage):
        return None
    except Exception:  # a form sqlglot fails on unforeseen: fail closed
        logging.getLogger(__name__).warning("reading a statement's uses failed", exc_info=True)
        return None
    return tuple(trees)


def _query_of(chunk: list[Token]) -> list[Token] | None:
    """The query a statement runs or plans (raises _NoLineage when it may hold
    one this does not find); None: it holds none."""
    lead = "(" if chunk[0].token_type is _L_PAREN else chunk[0].text.upper()
    if lead in _QUERY_LEADS or lead in _DML_LEADS:
        return chunk
    if lead in _NO_ROWS_LEADS and lead != "SET":
        return None
    start = next((i for i, t in enumerate(chunk) if t.text.upper() in _QUERY_WORDS), None)
    if start is None:
        if lead in _NO_QUERY_LEADS or lead == "SET":
            return None
        raise _NoLineage(f"{lead} not understood")
    inner = chunk[start:]
    if lead == "COPY":
        depth = 1
        for i, token in enumerate(inner):
            depth += {_L_PAREN: 1, _R_PAREN: -1}.get(token.token_type, 0)
            if depth == 0:
                return inner[:i]
        raise _NoLineage("COPY query not understood")
    if lead == "SET":
        raise _NoLineage("SET with a query")
    return inner


def _is_all(node: Any) -> bool:
    return isinstance(node, exp.Var) and str(node.this).upper() == "ALL"


def _bare(item: exp.Expr) -> bool:
    """A select-list item that passes a column's value on untouched."""
    node = item.this if isinstance(item, exp.Alias) else item
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Star):
        return True
    return isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier | exp.Star)


class _Uses(_Lineage):
    """The lineage walk, noting every use of a column that is not passing it on."""

    def __init__(self, search_path: tuple[str, ...], columns: ColumnLookup) -> None:
        super().__init__(search_path, columns)
        self.found: list[Use] = []

    def use(self, kind: str, node: Any, scope: _Scope) -> None:
        for part in node if isinstance(node, list) else [node]:
            if isinstance(part, exp.Expr):
                sources = self.expression(part, scope)
                if sources:
                    self.found.append((kind, sources))

    def note(self, kind: str, sources: frozenset[Source]) -> None:
        if sources:
            self.found.append((kind, sources))

    def query(self, tree: exp.Expr, scope: _Scope) -> _Columns:
        out = super().query(tree, scope)
        if isinstance(tree, exp.SetOperation):
            if tree.args.get("distinct") or not isinstance(tree, exp.Union):
                # Rows compared with each other: which come out tells about them.
                for _, sources in out:
                    self.note(PREDICATE, sources)
            self.clauses(tree, scope, out, {"with_", "this", "expression", "distinct", "by_name"})
        return out

    def select(self, tree: exp.Select, scope: _Scope) -> _Columns:
        out = super().select(tree, scope)
        groups = self.from_(tree, scope)
        inner = scope.inner(tuple(rel for group in groups for rel, _ in group))
        for join in tree.args.get("joins") or []:
            self.join(join, inner)
        for item in tree.expressions:
            if not _bare(item) or self.attribute_call(item, inner):
                self.use(COMPUTED, item, inner)
        self.clauses(tree, inner, out, _SELECT_SKIPPED)
        return out

    def attribute_call(self, item: exp.Expr, scope: _Scope) -> bool:
        """``t.f`` where ``t`` has no column ``f``: PostgreSQL runs ``f(t)``."""
        node = item.this if isinstance(item, exp.Alias) else item
        while isinstance(node, exp.Paren):
            node = node.this
        if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
            return False
        table = node.args.get("table")
        if table is None:
            return False
        name = _folded(node.this)
        rels = self.rels_named(_folded(table), node, scope)
        return not rels or any(r.named(name) is None for r in rels)

    def join(self, join: exp.Expr, scope: _Scope) -> None:
        self.use(PREDICATE, join.args.get("on"), scope)
        if str(join.args.get("method") or "").upper() == "NATURAL":
            # Compares every column the two sides share: any of them.
            self.note(PREDICATE, _all_of(r.whole for r in scope.levels[0]))
        for part in join.args.get("using") or []:
            ident = part.this if isinstance(part, exp.Column) else part
            self.note(PREDICATE, self.unqualified(_folded(ident), scope))
        for key, value in join.args.items():
            if key not in {"this", "on", "using", "kind", "side", "method"} and value:
                if not isinstance(value, exp.Expr | list):
                    continue
                self.use(COMPUTED, value, scope)

    def clauses(self, tree: exp.Expr, scope: _Scope, out: _Columns, skipped: Iterable[str]) -> None:
        for key, value in tree.args.items():
            if key in skipped or value is None or isinstance(value, bool | str):
                continue
            kind = PREDICATE if key in _ORDERING else COMPUTED
            if isinstance(value, exp.Limit) and _is_all(value.expression):
                continue  # LIMIT ALL
            if key in {"order", "group"} and isinstance(value, exp.Expr):
                for item in value.expressions:
                    target = item.this if isinstance(item, exp.Ordered) else item
                    self.note(kind, self.ordering(target, scope, out))
                rest = {k: v for k, v in value.args.items() if k != "expressions"}
                for part in rest.values():
                    if isinstance(part, exp.Expr | list):
                        self.use(kind, part, scope)
            elif key == "distinct" and isinstance(value, exp.Distinct):
                on = value.args.get("on")
                if on is None:
                    for _, sources in out:
                        self.note(kind, sources)
                else:
                    for item in on.expressions if isinstance(on, exp.Tuple) else [on]:
                        self.note(kind, self.ordering(item, scope, out))
            else:
                self.use(kind, value, scope)

    def ordering(self, target: exp.Expr, scope: _Scope, out: _Columns) -> frozenset[Source]:
        """An ORDER BY / GROUP BY / DISTINCT ON item: a position or an output
        name stands for that result column."""
        if isinstance(target, exp.Literal) and not target.is_string:
            index = int(str(target.this)) - 1 if str(target.this).isdigit() else -1
            if not 0 <= index < len(out):
                raise _NoLineage("position past the select list")
            return out[index][1]
        if isinstance(target, exp.Column) and not target.args.get("table"):
            name = _folded(target.this) if isinstance(target.this, exp.Identifier) else None
            named = [s for n, s in out if n == name]
            try:
                found = self.expression(target, scope)
            except _NoLineage:
                if not named:
                    raise
                found = _EMPTY
            return _all_of([found, *named])
        return self.expression(target, scope)

    def values(self, tree: exp.Values, scope: _Scope) -> _Columns:
        out = super().values(tree, scope)
        for row in tree.expressions:
            for item in row.expressions if isinstance(row, exp.Tuple) else [row]:
                if not _bare(item):
                    self.use(COMPUTED, item, scope)
        return out

    def function(self, func: exp.Expr, alias: Any, scope: _Scope) -> _Rel:
        rel = super().function(func, alias, scope)
        # A set-returning function's rows depend on its arguments.
        self.note(COMPUTED, rel.whole)
        return rel

    def dml(self, tree: exp.Expr, scope: _Scope) -> _Columns:
        out = super().dml(tree, scope)
        target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        rel = self.written(tree, self.table(target, _Scope(scope.levels)), scope)
        rels: list[_Rel] = [rel]
        if isinstance(tree, exp.Update):
            for join in tree.args.get("joins") or []:
                self.join(join, scope.inner((rel,)))
            rels.extend(r for g in self.from_(tree, scope.inner((rel,))) for r, _ in g)
        elif isinstance(tree, exp.Delete):
            for using in tree.args.get("using") or []:
                rels.append(self.from_item(using, scope.inner((rel,))))
        inner = scope.inner(tuple(rels))
        for key, value in tree.args.items():
            if key in _DML_SKIPPED or value is None or isinstance(value, bool | str):
                continue
            if key == "expressions" and isinstance(tree, exp.Update):
                for assignment in value:
                    self.use(COMPUTED, assignment.expression, inner)
            elif key == "conflict":
                excluded = _Rel("excluded", None, rel.columns, rel.whole)
                self.use(COMPUTED, value, scope.inner((rel, excluded)))
            else:
                self.use(PREDICATE if key == "where" else COMPUTED, value, inner)
        returning = tree.args.get("returning")
        if returning is not None:
            for item in returning.expressions:
                if not _bare(item):
                    self.use(COMPUTED, item, inner)
        return out
