"""Which base columns each result column of a statement may be computed from.

``result_lineage(sql, search_path, columns)`` names, for each result column of
the one statement of ``sql`` that returns rows, the base columns (relation,
column) its value may be computed from: through expressions, aggregates, whole
rows, ``*``, subqueries, CTEs, set operations and RETURNING, over-approximated.
``columns`` looks up a relation's ordered column names (the catalog the caller
holds).  None when that cannot be established, for masking to fail closed on:
anything sqlglot does not parse, a relation or column not found, a reference
whose meaning is not certain here.  ``result_lineage_of`` does the same for a
parsed tree.

``_Lineage`` is the walk.  What a name means at one point of a query is a
``_Scope``: the relations of each query level, innermost first (so correlated
references find the outer ones), each a ``_Rel`` with its columns and their
sources, and the CTEs visible there.  ``uses``
extends the same walk.  Trees are parsed once per text (an LRU of 1024).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token

from server.gateway.sqlcheck.budgets import _CACHE_MAX_KEY, DEFAULT_MAX_LEN
from server.gateway.sqlcheck.facts import _QUERY_ROOTS
from server.gateway.sqlcheck.lexing import _L_PAREN, _is_word, _kw, _parse, _readable_tokens, _split
from server.gateway.sqlcheck.model import _Unknown
from server.gateway.sqlcheck.names import Name, _fold, relation_schemas

# A base column a result value may be computed from: (relation, column name).
Source = tuple[Name, str]
# Per result position, the base columns its value may depend on.
Lineage = tuple[frozenset[Source], ...]
# The ordered column names of a schema-qualified relation; None: no such relation.
ColumnLookup = Callable[[Name], Sequence[str] | None]

# Statements around the one that returns rows in a simple Query, which return none.
_NO_ROWS_LEADS = frozenset(
    {"BEGIN", "START", "COMMIT", "END", "ABORT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET", "RESET"}
)
_QUERY_LEADS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
_DML_LEADS = frozenset({"INSERT", "UPDATE", "DELETE"})
# Where sqlglot keeps a word it reads as a unit, not as a column.
_UNIT_PARENTS = (exp.Extract, exp.Interval, exp.TimestampTrunc, exp.DateTrunc, exp.DataType)
# Reserved words PostgreSQL reads as the session's user or role, never as a
# column, which sqlglot reads as column names.
_USER_KEYWORDS = frozenset({"user", "current_role", "system_user"})
# No reference can name a result column whose PostgreSQL name is not certain here.
_UNNAMED = "\x00"


class _NoLineage(Exception):
    """Something the lineage does not understand: the caller fails closed."""


def result_lineage(
    sql: str,
    search_path: tuple[str, ...],
    columns: ColumnLookup,
    *,
    max_len: int = DEFAULT_MAX_LEN,
) -> Lineage | None:
    """For the statement of ``sql`` that returns rows, the base columns each of
    its result columns may be computed from, or None when that cannot be
    established (never raises).

    ``columns(name)`` gives a schema-qualified relation's column names in
    PostgreSQL's order (a view's are its own: the caller follows a view column
    to what it reads); an unqualified name is the first schema of
    ``search_path`` whose relation ``columns`` knows, as PostgreSQL takes it,
    and a name in a WITH is the CTE.  The answer over-approximates: a column
    counts wherever its value may reach a result column, through expressions,
    functions, aggregates, window functions, scalar subqueries (their output
    columns), set operations (every branch), subqueries in FROM, LATERAL, CTEs,
    VALUES, ``*`` and ``t.*`` (expanded in the order PostgreSQL expands them,
    USING and NATURAL joins included) and whole-row references (every column
    of the relation); an unqualified name that may be several columns, in this
    query or an outer one, is all of them.  What decides only which rows come
    out (WHERE, JOIN ON, GROUP BY, ORDER BY, LIMIT) is not lineage.

    Read: SELECT, VALUES, TABLE, WITH, INSERT/UPDATE/DELETE ... RETURNING and
    the query of DECLARE ... CURSOR FOR.  Transaction control and SET around
    the statement are passed over (``begin; select ...; commit``).  None for
    anything else: several statements that may return rows, EXPLAIN, MERGE,
    recursive CTEs, a relation ``columns`` does not know, a name no relation
    in scope has, ``*`` over a function's result, a form sqlglot reads in a
    way this does not expect.
    """
    if len(sql) > max_len:
        return None
    tree = _lineage_tree_cached(sql) if len(sql) <= _CACHE_MAX_KEY else _lineage_tree(sql)
    if tree is None:
        return None
    try:
        found = _Lineage(search_path, columns).statement(tree)
    except (_NoLineage, RecursionError):
        return None
    except Exception:  # a tree shape not foreseen: fail closed, as the analysis does
        logging.getLogger(__name__).warning("result lineage failed", exc_info=True)
        return None
    return tuple(sources for _, sources in found)


def result_lineage_of(
    sql: str,
    search_path: tuple[str, ...],
    columns: Mapping[Name, Sequence[str]],
    max_len: int = DEFAULT_MAX_LEN,
) -> Lineage | None:
    """:func:`result_lineage` with the relations' columns given as a mapping (what
    can be sent to another process)."""
    return result_lineage(sql, search_path, columns.get, max_len=max_len)


@functools.lru_cache(maxsize=1024)
def _lineage_tree_cached(sql: str) -> exp.Expr | None:
    # A prepared statement's text comes with every Describe of it; sqlglot's
    # tree is only read, never changed, so one serves every call.
    return _lineage_tree(sql)


def _lineage_tree(sql: str) -> exp.Expr | None:
    tokens = _readable_tokens(sql)
    if tokens is None:
        return None
    try:
        chunks = [c for c in _split(tokens) if not _kw(c[0], *_NO_ROWS_LEADS)]
        if len(chunks) != 1:
            return None
        chunk = chunks[0]
        lead = "(" if chunk[0].token_type is _L_PAREN else chunk[0].text.upper()
        if lead == "DECLARE":
            chunk = _cursor_query(chunk)
            lead = "(" if chunk[0].token_type is _L_PAREN else chunk[0].text.upper()
        if lead not in _QUERY_LEADS and lead not in _DML_LEADS:
            return None
        if lead != "(" and not _is_word(chunk[0]):
            return None
        trees = _parse(chunk, sql)
    except (SqlglotError, RecursionError, _Unknown, _NoLineage):
        return None
    if len(trees) != 1 or trees[0] is None:
        return None
    tree = trees[0]
    wanted: tuple[type[exp.Expr], ...] = _QUERY_ROOTS
    if lead == "WITH":
        wanted = (*_QUERY_ROOTS, exp.Insert, exp.Update, exp.Delete)
    elif lead in _DML_LEADS:
        wanted = (exp.Insert, exp.Update, exp.Delete)
    return tree if isinstance(tree, wanted) else None


def _cursor_query(chunk: list[Token]) -> list[Token]:
    """The query of ``DECLARE name ... CURSOR ... FOR query``."""
    for i, token in enumerate(chunk[:-1]):
        if _kw(token, "FOR") and i > 2 and _kw(chunk[i - 1], "CURSOR", "HOLD"):
            return chunk[i + 1 :]
    raise _NoLineage("DECLARE without a query")


@dataclass(frozen=True)
class _Rel:
    """A relation in a query's FROM (or a DML's target): the name a qualified
    column uses (alias, or the relation's own name), the relation when it is a
    catalog one, and its columns with their sources (None: not known, as a
    function's result)."""

    ref: str | None
    relation: Name | None
    columns: tuple[tuple[str, frozenset[Source]], ...] | None
    whole: frozenset[Source]

    def named(self, column: str) -> frozenset[Source] | None:
        if self.columns is None:
            return self.whole
        found = [sources for name, sources in self.columns if name == column]
        if not found:
            return None
        return frozenset().union(*found)


_Columns = tuple[tuple[str, frozenset[Source]], ...]
_EMPTY: frozenset[Source] = frozenset()


@dataclass(frozen=True)
class _Scope:
    """What names mean at one point of a query: the relations of each query
    level (innermost first) and the CTEs visible there."""

    levels: tuple[tuple[_Rel, ...], ...] = ()
    ctes: tuple[tuple[str, _Columns | None], ...] = ()

    def inner(self, rels: tuple[_Rel, ...]) -> _Scope:
        return _Scope((rels, *self.levels), self.ctes)

    def cte(self, name: str) -> tuple[bool, _Columns | None]:
        for cte_name, found in self.ctes:
            if cte_name == name:
                return True, found
        return False, None


def _folded(ident: Any) -> str:
    if not isinstance(ident, exp.Identifier):
        raise _NoLineage(f"not a name: {type(ident).__name__}")
    return _fold(str(ident.this), bool(ident.quoted))


def _all_of(parts: Iterable[frozenset[Source]]) -> frozenset[Source]:
    out: set[Source] = set()
    for part in parts:
        out |= part
    return frozenset(out)


class _Lineage:
    def __init__(self, search_path: tuple[str, ...], columns: ColumnLookup) -> None:
        self.schemas = relation_schemas(search_path)
        self.catalog_schemas = relation_schemas(search_path, catalog=True)
        self.lookup = columns

    # -- statements and queries ----------------------------------------------

    def statement(self, tree: exp.Expr) -> _Columns:
        return self.query(tree, _Scope())

    def query(self, tree: exp.Expr, scope: _Scope) -> _Columns:
        if isinstance(tree, exp.Subquery):
            if tree.args.get("with_") is not None:
                scope = self.with_(tree.args["with_"], scope)
            return self.query(tree.this, scope)
        with_ = tree.args.get("with_")
        if with_ is not None:
            scope = self.with_(with_, scope)
        if isinstance(tree, exp.Select):
            return self.select(tree, scope)
        if isinstance(tree, exp.SetOperation):
            left = self.query(tree.this, scope)
            right = self.query(tree.expression, scope)
            if len(left) != len(right):
                raise _NoLineage("set operation branches of different widths")
            return tuple((name, a | b) for (name, a), (_, b) in zip(left, right, strict=True))
        if isinstance(tree, exp.Values):
            return self.values(tree, scope)
        if isinstance(tree, exp.Insert | exp.Update | exp.Delete):
            return self.dml(tree, scope)
        raise _NoLineage(f"query of type {type(tree).__name__}")

    def with_(self, with_: exp.Expr, scope: _Scope) -> _Scope:
        if with_.args.get("recursive"):
            raise _NoLineage("recursive CTE")
        ctes = list(scope.ctes)
        for cte in with_.expressions:
            if not isinstance(cte, exp.CTE):
                raise _NoLineage("WITH entry not understood")
            alias = cte.args.get("alias")
            if not isinstance(alias, exp.TableAlias):
                raise _NoLineage("CTE without a name")
            name = _folded(alias.this)
            body = self.query(cte.this, _Scope(scope.levels, tuple(ctes)))
            ctes.insert(0, (name, _renamed(body, alias)))
        return _Scope(scope.levels, tuple(ctes))

    def values(self, tree: exp.Values, scope: _Scope) -> _Columns:
        rows: list[list[frozenset[Source]]] = []
        for row in tree.expressions:
            items = row.expressions if isinstance(row, exp.Tuple) else [row]
            rows.append([self.expression(item, scope) for item in items])
        if not rows or any(len(r) != len(rows[0]) for r in rows):
            raise _NoLineage("VALUES rows of different widths")
        return tuple((f"column{i + 1}", _all_of(r[i] for r in rows)) for i in range(len(rows[0])))

    def select(self, tree: exp.Select, scope: _Scope) -> _Columns:
        groups = self.from_(tree, scope)
        rels = tuple(rel for group in groups for rel, _ in group)
        inner = scope.inner(rels)
        out: list[tuple[str, frozenset[Source]]] = []
        for item in tree.expressions:
            out.extend(self.output(item, inner, groups))
        return tuple(out)

    def dml(self, tree: exp.Expr, scope: _Scope) -> _Columns:
        target = tree.this
        if isinstance(target, exp.Schema):
            target = target.this
        if not isinstance(target, exp.Table) or not isinstance(target.this, exp.Identifier):
            raise _NoLineage("DML target not understood")
        # The target is always a relation of the catalog, never a CTE of its name.
        rel = self.table(target, _Scope(scope.levels))
        rel = self.written(tree, rel, scope)
        groups: list[list[tuple[_Rel, _Columns | None]]] = [[(rel, rel.columns)]]
        if isinstance(tree, exp.Update):
            groups.extend(self.from_(tree, scope.inner((rel,))))
        elif isinstance(tree, exp.Delete):
            for using in tree.args.get("using") or []:
                other = self.from_item(using, scope.inner((rel,)))
                groups.append([(other, other.columns)])
        returning = tree.args.get("returning")
        if returning is None:
            return ()
        rels = tuple(r for group in groups for r, _ in group)
        inner = scope.inner(rels)
        out: list[tuple[str, frozenset[Source]]] = []
        for item in returning.expressions:
            out.extend(self.output(item, inner, groups))
        return tuple(out)

    def written(self, tree: exp.Expr, rel: _Rel, scope: _Scope) -> _Rel:
        """The target as RETURNING sees it: each column may hold any value the
        statement writes (the rows it inserts, what SET assigns)."""
        values: set[Source] = set()
        if isinstance(tree, exp.Insert):
            source = tree.args.get("expression")
            if source is not None:
                for _, sources in self.query(source, scope):
                    values |= sources
            conflict = tree.args.get("conflict")
            if conflict is not None:
                excluded = _Rel("excluded", None, rel.columns, rel.whole | values)
                assignments = [conflict]
                inner = scope.inner((rel, excluded))
                for assignment in assignments:
                    values |= self.expression(assignment, inner)
        elif isinstance(tree, exp.Update):
            inner = scope.inner((rel, *(r for g in self.from_(tree, scope) for r, _ in g)))
            for assignment in tree.expressions:
                if not isinstance(assignment, exp.EQ):
                    raise _NoLineage("SET item not understood")
                values |= self.expression(assignment.expression, inner)
        if not values or rel.columns is None:
            return rel
        columns = tuple((name, sources | values) for name, sources in rel.columns)
        return _Rel(rel.ref, rel.relation, columns, rel.whole | values)

    # -- FROM -----------------------------------------------------------------

    def from_(self, tree: exp.Expr, scope: _Scope) -> list[list[tuple[_Rel, _Columns | None]]]:
        """The FROM list as groups of relations joined with JOIN (a comma starts
        a new group), each relation with the columns ``*`` shows of it there."""
        if tree.args.get("laterals") or tree.args.get("pivots"):
            raise _NoLineage("lateral view or pivot")
        from_ = tree.args.get("from_")
        groups: list[list[tuple[_Rel, _Columns | None]]] = []
        if from_ is None:
            if tree.args.get("joins"):
                raise _NoLineage("joins without FROM")
            return groups
        seen: list[_Rel] = []

        def add(item: exp.Expr) -> _Rel:
            # Every FROM item sees the ones before it, as LATERAL ones do; a
            # reference PostgreSQL would refuse only adds sources.
            rel = self.from_item(item, scope.inner(tuple(seen)))
            seen.append(rel)
            return rel

        first = add(from_.this)
        groups.append([(first, first.columns)])
        for join in tree.args.get("joins") or []:
            rel = add(join.this)
            using = join.args.get("using")
            natural = str(join.args.get("method") or "").upper() == "NATURAL"
            comma = not (
                join.args.get("kind")
                or join.args.get("side")
                or join.args.get("method")
                or join.args.get("on")
                or using
            )
            if comma:
                groups.append([(rel, rel.columns)])
                continue
            if using or natural:
                groups[-1] = _merged(groups[-1], rel, using, natural)
            else:
                groups[-1].append((rel, rel.columns))
        return groups

    def from_item(self, item: exp.Expr, scope: _Scope) -> _Rel:
        if item.args.get("joins") or item.args.get("pivots"):
            raise _NoLineage("parenthesised join")
        alias = item.args.get("alias")
        if isinstance(item, exp.Table):
            if item.args.get("rows_from"):
                raise _NoLineage("ROWS FROM")
            if isinstance(item.this, exp.Identifier):
                return self.table(item, scope)
            if isinstance(item.this, exp.Func):
                return self.function(item.this, alias, scope)
            raise _NoLineage("FROM item not understood")
        if isinstance(item, exp.Lateral):
            inner = item.this
            if isinstance(inner, exp.Subquery | exp.Select | exp.SetOperation | exp.Values):
                columns = self.query(inner, scope)
                return _derived(alias, columns)
            if isinstance(inner, exp.Func):
                return self.function(inner, alias, scope)
            raise _NoLineage("LATERAL item not understood")
        if isinstance(item, exp.Subquery | exp.Values):
            body = item.this if isinstance(item, exp.Subquery) else item
            if isinstance(item, exp.Subquery) and not isinstance(
                body, exp.Select | exp.SetOperation | exp.Values | exp.Subquery
            ):
                raise _NoLineage("parenthesised FROM item")
            columns = self.query(body if isinstance(item, exp.Subquery) else item, scope)
            return _derived(alias, columns)
        if isinstance(item, exp.Unnest | exp.Func):
            return self.function(item, alias, scope)
        raise _NoLineage(f"FROM item of type {type(item).__name__}")

    def function(self, func: exp.Expr, alias: Any, scope: _Scope) -> _Rel:
        # Its columns are not known here: any name may be one of them, and
        # each is computed from the arguments.
        whole = self.expression(func, scope)
        ref = _folded(alias.this) if isinstance(alias, exp.TableAlias) and alias.this else None
        if ref is None and isinstance(func, exp.Anonymous):
            ref = _fold(str(func.this), False)
        return _Rel(ref, None, None, whole)

    def table(self, table: exp.Table, scope: _Scope) -> _Rel:
        if table.args.get("catalog"):
            raise _NoLineage("database-qualified name")
        name = _folded(table.this)
        db = table.args.get("db")
        alias = table.args.get("alias")
        columns: _Columns | None
        relation: Name | None = None
        if db is None:
            is_cte, columns = scope.cte(name)
            if not is_cte:
                relation, columns = self.relation(Name((name,)))
        else:
            relation, columns = self.relation(Name((_folded(db), name)))
        if columns is None:
            raise _NoLineage(f"relation {name} not known")
        if isinstance(alias, exp.TableAlias):
            columns = _renamed(columns, alias)
            ref = _folded(alias.this) if alias.this else name
        else:
            ref = name
        return _Rel(ref, relation, columns, _all_of(s for _, s in columns))

    def relation(self, name: Name) -> tuple[Name, _Columns]:
        if name.schema is not None:
            candidates = [name]
        else:
            schemas = self.catalog_schemas if name.name.startswith("pg_") else self.schemas
            candidates = [Name((schema, name.name)) for schema in schemas]
        # The first schema of the path that holds the name, as touched_relations
        # and masking_guard take it.
        for candidate in candidates:
            found = self.lookup(candidate)
            if found is not None:
                return candidate, tuple((c, frozenset({(candidate, c)})) for c in found)
        raise _NoLineage(f"relation {name} not known")

    # -- select lists and expressions ---------------------------------------

    def output(
        self,
        item: exp.Expr,
        scope: _Scope,
        groups: list[list[tuple[_Rel, _Columns | None]]],
    ) -> Iterator[tuple[str, frozenset[Source]]]:
        if isinstance(item, exp.Star):
            if not groups:
                raise _NoLineage("* without FROM")
            for group in groups:
                for _, columns in group:
                    if columns is None:
                        raise _NoLineage("* over a relation whose columns are not known")
                    yield from columns
            return
        if isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
            rel = self.qualified_rel(item, scope)
            if rel.columns is None:
                raise _NoLineage("t.* over a relation whose columns are not known")
            yield from rel.columns
            return
        bare = item.this if isinstance(item, exp.Alias) else item
        if isinstance(bare, exp.Dot) and isinstance(bare.expression, exp.Star):
            # As many columns as the composite has fields.
            raise _NoLineage("(x).* in a select list")
        if isinstance(item, exp.Alias):
            yield _folded(item.args.get("alias")), self.expression(item.this, scope)
            return
        name = _UNNAMED
        if isinstance(item, exp.Column) and isinstance(item.this, exp.Identifier):
            name = _folded(item.this)
        yield name, self.expression(item, scope)

    def qualified_rel(self, column: exp.Column, scope: _Scope) -> _Rel:
        """The relation of ``t.*`` (only the innermost level that has it)."""
        ref = _folded(column.args.get("table"))
        db = column.args.get("db")
        if column.args.get("catalog"):
            raise _NoLineage("database-qualified column")
        for rels in scope.levels:
            found = [r for r in rels if _matches(r, ref, db)]
            if len(found) == 1:
                return found[0]
            if found:
                raise _NoLineage(f"{ref} names several relations")
        raise _NoLineage(f"no relation {ref} in scope")

    def expression(self, node: exp.Expr, scope: _Scope) -> frozenset[Source]:
        found: set[Source] = set()
        stack: list[Any] = [node]
        while stack:
            current = stack.pop()
            if isinstance(current, exp.Column):
                found |= self.column(current, scope)
                continue
            if isinstance(current, exp.Select | exp.SetOperation | exp.Values):
                # A subquery's result is what it passes on; its WHERE, as any
                # predicate, is masking_guard's inference rule's business.
                for _, sources in self.query(current, scope):
                    found |= sources
                continue
            if isinstance(current, exp.Subquery):
                stack.append(current.this)
                continue
            if isinstance(current, exp.Star):
                if not isinstance(current.parent, exp.Count):
                    raise _NoLineage("* inside an expression")
                continue
            if isinstance(current, exp.Var) and not isinstance(current.parent, _UNIT_PARENTS):
                raise _NoLineage(f"word {current.name!r} read as neither column nor keyword")
            if isinstance(current, exp.Table):
                raise _NoLineage("a relation inside an expression")
            if isinstance(current, exp.Dot) and isinstance(current.expression, exp.Star):
                stack.append(current.this)
                continue
            stack.extend(current.iter_expressions())
        return frozenset(found)

    def column(self, column: exp.Column, scope: _Scope) -> frozenset[Source]:
        if column.args.get("catalog"):
            raise _NoLineage("database-qualified column")
        table = column.args.get("table")
        if isinstance(column.this, exp.Star):
            return _all_of(r.whole for r in self.rels_named(_folded(table), column, scope))
        name = _folded(column.this)
        if table is None:
            if name in _USER_KEYWORDS and not column.this.quoted:
                return _EMPTY
            return self.unqualified(name, scope)
        ref = _folded(table)
        rels = self.rels_named(ref, column, scope)
        found: set[Source] = set()
        for rel in rels:
            sources = rel.named(name)
            # No such column: PostgreSQL reads ``t.f`` as ``f(t)``, which may
            # read the whole row.
            found |= rel.whole if sources is None else sources
        if column.args.get("db") is not None:
            # ``a.b.c`` is schema.table.column or table.column.field: either.
            field_of = [
                r for rels in scope.levels for r in rels if r.ref == _folded(column.args["db"])
            ]
            if not rels and not field_of:
                raise _NoLineage(f"no relation {ref} in scope")
            found |= _all_of(r.whole for r in field_of)
        return frozenset(found)

    def rels_named(self, ref: str, column: exp.Column, scope: _Scope) -> list[_Rel]:
        db = column.args.get("db")
        found = [r for rels in scope.levels for r in rels if _matches(r, ref, db)]
        if not found and db is None:
            raise _NoLineage(f"no relation {ref} in scope")
        return found

    def unqualified(self, name: str, scope: _Scope) -> frozenset[Source]:
        found: set[Source] = set()
        matched = False
        for rels in scope.levels:
            for rel in rels:
                sources = rel.named(name)
                if sources is not None:
                    found |= sources
                    matched = True
                if rel.ref == name:
                    # A whole-row reference when no column has the name.
                    found |= rel.whole
                    matched = True
        if not matched:
            raise _NoLineage(f"no column {name} in scope")
        return frozenset(found)


def _matches(rel: _Rel, ref: str, db: Any) -> bool:
    if db is None:
        return rel.ref == ref
    # schema.table.column: a catalog relation referenced by its own name.
    return (
        rel.relation is not None
        and rel.ref == rel.relation.name
        and rel.relation == Name((_folded(db), ref))
    )


def _renamed(columns: _Columns, alias: exp.TableAlias) -> _Columns:
    names = [_folded(c) for c in alias.args.get("columns") or []]
    if len(names) > len(columns):
        raise _NoLineage("more column aliases than columns")
    return tuple(
        (names[i] if i < len(names) else name, sources) for i, (name, sources) in enumerate(columns)
    )


def _derived(alias: Any, columns: _Columns) -> _Rel:
    ref: str | None = None
    if isinstance(alias, exp.TableAlias):
        columns = _renamed(columns, alias)
        ref = _folded(alias.this) if alias.this else None
    return _Rel(ref, None, columns, _all_of(s for _, s in columns))


def _merged(
    group: list[tuple[_Rel, _Columns | None]],
    right: _Rel,
    using: Any,
    natural: bool,
) -> list[tuple[_Rel, _Columns | None]]:
    """A group joined to ``right`` with USING or NATURAL: ``*`` shows the merged
    columns first (in USING's order, or the left side's for NATURAL), then the
    rest of the left side, then the rest of the right side."""
    left_columns: list[tuple[str, frozenset[Source]]] = []
    for _, columns in group:
        if columns is None:
            raise _NoLineage("USING/NATURAL join with a relation whose columns are not known")
        left_columns.extend(columns)
    if right.columns is None:
        raise _NoLineage("USING/NATURAL join with a relation whose columns are not known")
    right_names = [n for n, _ in right.columns]
    if natural:
        keys = [n for n, _ in left_columns if n in right_names]
    else:
        keys = [_folded(u.this if isinstance(u, exp.Column) else u) for u in using]
    if len(set(keys)) != len(keys):
        raise _NoLineage("a join column named twice")
    merged: list[tuple[str, frozenset[Source]]] = []
    for key in keys:
        left = [s for n, s in left_columns if n == key]
        right_found = [s for n, s in right.columns if n == key]
        if len(left) != 1 or len(right_found) != 1:
            raise _NoLineage(f"join column {key} not found exactly once on each side")
        merged.append((key, left[0] | right_found[0]))
    rest = tuple((n, s) for n, s in left_columns if n not in keys)
    rest_right = tuple((n, s) for n, s in right.columns if n not in keys)
    # The group's relations stay in scope for qualified names; ``*`` reads
    # the columns of the join as one.
    joined: list[tuple[_Rel, _Columns | None]] = [(rel, ()) for rel, _ in group]
    joined.append((right, (*merged, *rest, *rest_right)))
    return joined
