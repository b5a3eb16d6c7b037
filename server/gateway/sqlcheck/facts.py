"""What a sqlglot tree of one statement touches, believed only where the tokens agree.

``_TreeFacts`` walks the tree once and collects the tables (split into read and
written), the DML nodes (data-modifying CTEs are nested statements that run
NOW), row locks, ``SELECT INTO``, CTE names and function calls, then answers the
``_Analyzer``'s questions: the statement's kind and command, the relations read
and written after ``search_path`` resolution, the settings ``set_config`` writes,
whether an UPDATE/DELETE/MERGE restricts rows (``predicates``), the nested
statements.

**Every call accounted for.**  Each ``name(`` in the tokens must be a function
call in the tree, a relation or type name that takes a parenthesised list, or a
call sqlglot parses with special syntax (``CAST``, ``TRIM``, ...; PostgreSQL
keywords that take a list, ``_KEYWORDS_BEFORE_PAREN``); a call sqlglot dropped or
turned into something else makes the statement UNKNOWN.  Function names are taken
from the tokens as written, so ``pg_catalog.set_config`` and ``"pg_read_file"``
are reported as PostgreSQL would resolve their spelling.

The facts read the statement's tokens and resolve names through the analyzer
that made them (``_Reader``), which is all they know of ``classify``.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Any, Protocol

from sqlglot import exp
from sqlglot.tokenizer_core import Token, TokenType

from server.gateway.sqlcheck.lexing import (
    _DML_TOKENS,
    _EXECUTE,
    _FUNCTION_PARSERS,
    _L_PAREN,
    _NAME_TOKENS,
    _R_PAREN,
    _is_word,
    _kw,
    _qualified_at,
)
from server.gateway.sqlcheck.model import (
    Feature,
    Statement,
    StatementClass,
    _graver,
    _Options,
    _text,
    _Unknown,
)
from server.gateway.sqlcheck.names import ANY_COLUMN, Name, _fold
from server.gateway.sqlcheck.predicates import _predicate, _restricts

_QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)
_DML_ROOTS = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_DML_COMMAND = {
    exp.Insert: "INSERT",
    exp.Update: "UPDATE",
    exp.Delete: "DELETE",
    exp.Merge: "MERGE",
}
_PG_SETTINGS = Name(("pg_catalog", "pg_settings"))
_ROLE_SETTINGS = frozenset({"role", "session_authorization"})
_ANY_SETTING = "*"


class _Reader(Protocol):
    """What the facts read from the analyzer of the statement (``classify._Analyzer``)."""

    tokens: list[Token]
    options: _Options

    def resolve(self, name: Name) -> tuple[Name, ...]: ...


class _Role(Enum):
    OTHER = 0
    TABLE = 1
    FUNC = 2
    IDENT = 3
    DML = 4
    LOCK = 5
    INTO = 6
    CTE = 7
    DECIDING = 8  # a clause that decides rows: see columns_filtered


_DECIDING = (
    exp.Where,
    exp.Having,
    exp.Join,
    exp.Distinct,
    exp.Window,
    exp.OnConflict,
    exp.Group,
    exp.Order,
)
# isinstance against sqlglot's classes is slow; a node's role is looked up by its type.
_ROLES: dict[type, _Role] = {}
_NAMING_PARENTS = frozenset({exp.Table, exp.TableAlias, exp.DataType, exp.Schema})


def _role_of(cls: type) -> _Role:
    for base, role in (
        (exp.Table, _Role.TABLE),
        (exp.Func, _Role.FUNC),
        (exp.Identifier, _Role.IDENT),
        (_DML_ROOTS, _Role.DML),
        (exp.Lock, _Role.LOCK),
        (exp.Into, _Role.INTO),
        (exp.CTE, _Role.CTE),
        (_DECIDING, _Role.DECIDING),
    ):
        if issubclass(cls, base):
            return role
    return _Role.OTHER


class _TreeFacts:
    """One pass over a sqlglot tree, cross-checked against the statement's tokens.

    ``check_calls`` is off for the sub-trees of nested statements, whose calls
    the enclosing statement has already accounted for; ``embedded`` is on when
    the statement's query was analysed from the tokens (CREATE TABLE ... AS).
    """

    def __init__(
        self,
        analyzer: _Reader,
        tree: exp.Expr,
        *,
        check_calls: bool = True,
        embedded: bool = False,
    ) -> None:
        self.analyzer = analyzer
        self.tree = tree
        self.tables: list[exp.Table] = []
        self.dml: list[exp.Expr] = []
        self.locks = False
        self.into: exp.Into | None = None
        self.cte_names: set[str] = set()
        func_starts: set[int] = set()
        ident_starts: set[int] = set()
        self.funcs: list[exp.Func] = []
        self.deciding: list[exp.Expr] = []
        self._resolved: dict[int, tuple[Name, ...]] = {}  # by table node (see _table_names)
        for node in tree.walk():
            role = _ROLES.get(type(node))
            if role is None:
                role = _ROLES[type(node)] = _role_of(type(node))
            if role is _Role.OTHER:
                continue
            if role is _Role.TABLE:
                self.tables.append(node)  # type: ignore[arg-type]
            elif role is _Role.FUNC:
                self.funcs.append(node)  # type: ignore[arg-type]
                start = _meta_start(node)
                if start is not None:
                    func_starts.add(start)
            elif role is _Role.IDENT:
                start = _meta_start(node)
                if start is not None and type(node.parent) in _NAMING_PARENTS:
                    ident_starts.add(start)
            elif role is _Role.DML:
                # MERGE's WHEN ... THEN UPDATE/INSERT are actions, not statements.
                if node is not tree and not isinstance(node.parent, exp.When):
                    self.dml.append(node)
            elif role is _Role.LOCK:
                self.locks = True
            elif role is _Role.INTO:
                self.into = node  # type: ignore[assignment]
            elif role is _Role.CTE:
                name = _alias_name(node)
                if name is not None:
                    self.cte_names.add(name)
            elif role is _Role.DECIDING:
                self.deciding.append(node)
        self.functions: tuple[Name, ...] = ()
        if check_calls:
            self.functions = self._calls(func_starts, ident_starts)
            self._check_statements(embedded)
        self.targets = self._targets()
        self._settings: tuple[str, ...] | None = None

    # -- calls ----------------------------------------------------------------

    def _calls(self, func_starts: set[int], ident_starts: set[int]) -> tuple[Name, ...]:
        tokens = self.analyzer.tokens
        calls: list[Name] = []
        for i in range(len(tokens) - 1):
            if tokens[i + 1].token_type is not _L_PAREN:
                continue
            token = tokens[i]
            if token.start in func_starts:
                word = token.text.upper() if _is_word(token) else ""
                if word not in _SYNTAX_NOT_CALLS and not (
                    word in ("RANGE", "LIST", "HASH") and _syntax_before_paren(tokens, i, word)
                ):
                    calls.append(_qualified_at(tokens, i))
            elif token.token_type not in _NAME_TOKENS:
                # sqlglot gives UNNEST a keyword token and no position.
                if _kw(token, "UNNEST"):
                    calls.append(_qualified_at(tokens, i))
            elif token.token_type in _NAME_TOKENS:
                word = token.text.upper() if token.token_type is TokenType.VAR else ""
                if word in _FUNCTION_PARSERS:
                    if word not in _SYNTAX_NOT_CALLS:
                        calls.append(_qualified_at(tokens, i))
                elif token.start in ident_starts or _syntax_before_paren(tokens, i, word):
                    continue
                else:
                    raise _Unknown(f"call of {token.text!r} not understood")
        return tuple(dict.fromkeys(calls))

    def _check_statements(self, embedded: bool) -> None:
        """Every statement the tokens start must be in the tree: sqlglot must not
        have dropped a data-modifying CTE or read ``EXECUTE name`` as something else."""
        tokens = self.analyzer.tokens
        starts = 0
        for i, token in enumerate(tokens):
            kind = token.token_type
            if kind in _DML_TOKENS:
                before = tokens[i - 1] if i else None
                if (
                    before is None
                    or before.token_type is _L_PAREN
                    or before.token_type is _R_PAREN
                    or _kw(before, "MATERIALIZED")
                ):
                    starts += 1
            elif kind is _EXECUTE and not embedded:
                following = tokens[i + 1] if i + 1 < len(tokens) else None
                if not _kw(following, "FUNCTION", "PROCEDURE"):
                    raise _Unknown("EXECUTE inside a statement not understood")
        found = len(self.dml) + (1 if isinstance(self.tree, _DML_ROOTS) else 0)
        if starts > found and not embedded:
            raise _Unknown("data-modifying statement not understood")

    # -- classes ----------------------------------------------------------------

    def query_kind(self) -> tuple[StatementClass, str]:
        tree = self.tree
        for dml_type, command in _DML_COMMAND.items():
            if isinstance(tree, dml_type):
                return StatementClass.WRITE, command
        if self.into is not None:
            return StatementClass.DDL, "SELECT INTO"
        if isinstance(tree, exp.Values):
            return StatementClass.READ, "VALUES"
        return StatementClass.READ, "SELECT"

    def extra_kind(self) -> StatementClass:
        kind = StatementClass.READ
        if self.dml or self.locks:
            kind = StatementClass.WRITE
        settings = self.settings()
        if settings:
            kind = _graver(kind, StatementClass.SESSION_STATE)
        if any(s in _ROLE_SETTINGS or s == _ANY_SETTING for s in settings):
            kind = _graver(kind, StatementClass.PRIVILEGE)
        return kind

    def features(self) -> frozenset[Feature]:
        return frozenset({Feature.ROW_LOCK}) if self.locks else frozenset()

    # -- tables -------------------------------------------------------------------

    def _targets(self) -> list[exp.Table]:
        targets: list[exp.Table] = []
        for node in (self.tree, *self.dml):
            if isinstance(node, _DML_ROOTS):
                _add_table(targets, node.this)
                # sqlglot keeps DELETE's target here when FROM is left out.
                for table in node.args.get("tables") or ():
                    _add_table(targets, table)
            elif isinstance(node, exp.Create):
                kind = str(node.args.get("kind") or "").upper()
                if kind in _RELATION_KINDS:
                    _add_table(targets, node.this)
                elif kind == "INDEX" and isinstance(node.this, exp.Index):
                    _add_table(targets, node.this.args.get("table"))
                elif kind == "TRIGGER":
                    trigger = node.find(exp.TriggerProperties)
                    if trigger is not None:
                        _add_table(targets, trigger.args.get("table"))
            elif isinstance(node, exp.Alter):
                if str(node.args.get("kind") or "").upper() in _RELATION_KINDS | {"INDEX"}:
                    _add_table(targets, node.this)
            elif isinstance(node, exp.Drop):
                if str(node.args.get("kind") or "").upper() in _RELATION_KINDS | {"INDEX"}:
                    for table in node.args.get("tables") or [node.this]:
                        _add_table(targets, table)
            elif isinstance(node, exp.TruncateTable):
                for table in node.expressions:
                    _add_table(targets, table)
        if self.into is not None:
            _add_table(targets, self.into.this)
        return targets

    def _table_names(self, table: exp.Table) -> tuple[Name, ...]:
        # Asked again for each column a filter names: resolved once a table.
        known = self._resolved.get(id(table))
        if known is not None:
            return known
        this = table.this
        if not isinstance(this, exp.Identifier):
            return ()  # a table function: its call is reported as a function
        # A database name before the schema (``db.public.people``) is dropped:
        # PostgreSQL runs such a name only in that database, as its schema-qualified
        # name, and refuses any other ("cross-database references are not
        # implemented").  Kept, it would be a name no catalog holds by its schema.
        parts = [
            _fold(part.this, bool(part.quoted))
            for part in (table.args.get("db"), this)
            if isinstance(part, exp.Identifier)
        ]
        if len(parts) == 1 and parts[0] in self.cte_names:
            names: tuple[Name, ...] = ()
        else:
            names = self.analyzer.resolve(Name(tuple(parts)))
        self._resolved[id(table)] = names
        return names

    def writes(self) -> tuple[Name, ...]:
        return self._names(self.targets)

    def columns_written(self) -> tuple[tuple[Name, str], ...]:
        """The columns the INSERTs and UPDATEs of the tree (its own and those nested
        in it) set, with the relation they write: an UPDATE's SET targets and an
        ``ON CONFLICT DO UPDATE``'s, an INSERT's column list.  :data:`ANY_COLUMN`
        stands for every column: an INSERT without a column list, a SET target
        the analysis does not read.  MERGE, COPY and the rest name none."""
        found: list[tuple[Name, str]] = []
        for node in (self.tree, *self.dml):
            if not isinstance(node, exp.Insert | exp.Update):
                continue
            target = node.this
            columns: list[str] = []
            if isinstance(target, exp.Schema):
                columns += [_column_name(c) for c in target.expressions]
                target = target.this
            elif isinstance(node, exp.Insert):
                columns.append(ANY_COLUMN)
            owner = node if isinstance(node, exp.Update) else node.args.get("conflict")
            if isinstance(owner, exp.Expr):
                for assignment in owner.expressions:
                    left = assignment.this if isinstance(assignment, exp.EQ) else None
                    parts = left.expressions if isinstance(left, exp.Tuple) else [left]
                    columns += [_column_name(part) for part in parts]
            if isinstance(target, exp.Table):
                for name in self._table_names(target):
                    found += [(name, column) for column in columns]
        return tuple(dict.fromkeys(found))

    def columns_filtered(self) -> tuple[tuple[Name | None, str], ...]:
        """The columns the tree decides rows by -- WHERE and HAVING, JOIN ON and
        USING, GROUP BY, ORDER BY, DISTINCT ON, window PARTITION BY, ON CONFLICT's
        target, in every query of it -- with the relation each is a column of where
        the text says: its qualifier is a table of its query (or of a query around
        it) or that table's alias, or, unqualified, its query reads one table and
        nothing else.  None where the text does not say (the catalog may)."""
        found: list[tuple[Name | None, str]] = []
        # Each node's query, found once for a whole chain of parents: a WHERE of
        # thousands of ORs nests its columns thousands of levels deep.
        scopes: dict[int, exp.Expr | None] = {}
        tables: dict[int, tuple[dict[str, exp.Table], set[str]]] = {}
        # A WHERE's columns include those of the clauses of its subqueries, which
        # are deciding clauses of their own: each column is placed once.
        placed: set[int] = set()
        for node in self.deciding:
            if type(node) is exp.Join:
                # USING names a column of both sides: which tables, the catalog says.
                found += [
                    (None, _fold(part.this, bool(part.quoted)))
                    for part in node.args.get("using") or ()
                    if isinstance(part, exp.Identifier)
                ]
            for column in _deciding(node):
                if id(column) in placed:
                    continue
                placed.add(id(column))
                name = _fold(column.this.this, bool(column.this.quoted))
                owners = self._owners(column, scopes, tables)
                found += [(owner, name) for owner in owners] if owners else [(None, name)]
        return tuple(dict.fromkeys(found))

    def _owners(
        self,
        column: exp.Column,
        scopes: dict[int, exp.Expr | None],
        known: dict[int, tuple[dict[str, exp.Table], set[str]]],
    ) -> tuple[Name, ...]:
        qualifier = column.args.get("table")
        wanted = (
            _fold(qualifier.this, bool(qualifier.quoted))
            if isinstance(qualifier, exp.Identifier)
            else None
        )
        scope = _scope_of(column, scopes)
        while scope is not None:
            found = known.get(id(scope))
            if found is None:
                found = known[id(scope)] = _scope_tables(scope)
            tables, opaque = found
            if wanted is None:
                # Unqualified: its own query's one table, or nothing known.
                if len(tables) == 1 and not opaque:
                    return self._table_names(next(iter(tables.values())))
                return ()
            if wanted in tables:
                return self._table_names(tables[wanted])
            if wanted in opaque:
                return ()  # a subquery's or a function's alias
            scope = _scope_of(scope, scopes)
        return ()

    def _names(self, tables: list[exp.Table]) -> tuple[Name, ...]:
        """Distinct table names in the order they are written."""
        ordered = sorted(tables, key=lambda t: _meta_start(t.this) or 0)
        return tuple(dict.fromkeys(n for t in ordered for n in self._table_names(t)))

    def reads(self) -> tuple[Name, ...]:
        tables: list[exp.Table]
        if isinstance(self.tree, (exp.Create, exp.Alter, exp.Drop, exp.TruncateTable)):
            # Definitions name objects without reading them; a query inside
            # (CREATE TABLE/VIEW ... AS) reads its tables.
            query = self.tree.args.get("expression")
            tables = list(query.find_all(exp.Table)) if isinstance(query, exp.Query) else []
        else:
            tables = self.tables
        targets = {id(t) for t in self.targets}
        return self._names(
            [t for t in tables if id(t) not in targets and not isinstance(t.parent, exp.Lock)]
        )

    # -- settings ------------------------------------------------------------------

    def settings(self) -> tuple[str, ...]:
        if self._settings is None:
            names: list[str] = []
            for func in self.funcs:
                if _func_name(func) != "set_config":
                    continue
                args = func.expressions if isinstance(func, exp.Anonymous) else []
                names.append(self._setting_arg(args[0] if args else None))
            if _PG_SETTINGS in self.writes():
                names.append(_ANY_SETTING)
            self._settings = tuple(dict.fromkeys(names))
        return self._settings

    def _setting_arg(self, arg: exp.Expr | None) -> str:
        if type(arg) is exp.Literal and arg.is_string:
            return str(arg.this).lower()
        params = self.analyzer.options.params
        if isinstance(arg, exp.Parameter) and params is not None:
            number = arg.this
            if isinstance(number, exp.Literal) and not number.is_string:
                position = int(str(number.this)) - 1
                value = params[position] if 0 <= position < len(params) else None
                if value is not None:
                    return value.lower()
        return _ANY_SETTING

    # -- nested statements ---------------------------------------------------------

    def nested(self) -> tuple[Statement, ...]:
        out = []
        for node in self.dml:
            facts = _TreeFacts(self.analyzer, node, check_calls=False)
            kind, command = facts.query_kind()
            out.append(
                Statement(
                    index=0,
                    text=_text(node.sql(dialect="postgres")),
                    kind=kind,
                    command=command,
                    reads=facts.reads(),
                    writes=facts.writes(),
                    restricting_where=facts.restricting_where(node),
                    settings=facts.settings(),
                )
            )
        return tuple(out)

    # -- WHERE ------------------------------------------------------------------------

    def restricting_where(self, node: exp.Expr) -> bool | None:
        if isinstance(node, (exp.Update, exp.Delete)):
            where = node.args.get("where")
            if not isinstance(where, exp.Where):
                return False
            return _restricts(_predicate(where.this, _outer_names(node), 0))
        if isinstance(node, exp.Merge):
            whens = node.args.get("whens")
            changes = any(
                isinstance(w, exp.When) and w.args.get("matched") and _merge_changes(w)
                for w in (whens.expressions if isinstance(whens, exp.Whens) else [])
            )
            if not changes:
                return None
            on = node.args.get("on")
            if not isinstance(on, exp.Expr):
                return False
            return _restricts(_predicate(on, _outer_names(node), 0))
        return None


def _column_name(node: Any) -> str:
    """The column a SET target or an INSERT column list names, folded as PostgreSQL
    folds it (``set a.f = 1`` sets field ``f`` of column ``a``); :data:`ANY_COLUMN`
    when it is anything else."""
    if isinstance(node, exp.Column):
        node = node.args.get("table") or node.this
    if isinstance(node, exp.Identifier):
        return _fold(node.this, bool(node.quoted))
    return ANY_COLUMN


def _add_table(targets: list[exp.Table], node: Any) -> None:
    if isinstance(node, exp.Schema):
        node = node.this
    if isinstance(node, exp.Table):
        targets.append(node)


def _deciding(node: exp.Expr) -> Iterator[exp.Column]:
    """The columns ``node`` (one clause) decides rows, their groups or order by
    (``uses.predicate_columns`` names the same places, for masking)."""
    parts: list[Any] = []
    if isinstance(node, exp.Where | exp.Having):
        parts.append(node.this)
    elif isinstance(node, exp.Join | exp.Distinct):
        parts.append(node.args.get("on"))
    elif isinstance(node, exp.Window):
        parts += node.args.get("partition_by") or []
    elif isinstance(node, exp.OnConflict):
        parts += node.args.get("conflict_keys") or []
    elif isinstance(node, exp.Group | exp.Order):
        parts += node.expressions
    for part in parts:
        if not isinstance(part, exp.Expr):
            continue
        for column in [part] if isinstance(part, exp.Column) else part.find_all(exp.Column):
            if isinstance(column, exp.Column) and isinstance(column.this, exp.Identifier):
                yield column


_SCOPES = (exp.Select, exp.Update, exp.Delete, exp.Insert)


def _scope_of(node: exp.Expr, known: dict[int, exp.Expr | None]) -> exp.Expr | None:
    """The query (or UPDATE, DELETE, INSERT) ``node`` is in, above it; ``known``
    keeps the answer for every node on the way, for the next column to find."""
    path: list[exp.Expr] = []
    current = node.parent
    scope: exp.Expr | None = None
    while current is not None:
        if isinstance(current, _SCOPES):
            scope = current
            break
        if id(current) in known:
            scope = known[id(current)]
            break
        path.append(current)
        current = current.parent
    for passed in path:
        known[id(passed)] = scope
    return scope


def _scope_tables(node: exp.Expr) -> tuple[dict[str, exp.Table], set[str]]:
    """The tables a query's own FROM list names (an UPDATE's, a DELETE's and an
    INSERT's target too), by the name its columns are qualified with (alias, else
    table name); and the names of the rest of the list (subqueries, functions),
    which stand for no table."""
    tables: dict[str, exp.Table] = {}
    opaque: set[str] = set()
    items: list[Any] = []
    if isinstance(node, exp.Insert):
        target = node.this
        items.append(target.this if isinstance(target, exp.Schema) else target)
    if isinstance(node, exp.Update | exp.Delete):
        items.append(node.this)
        items += node.args.get("using") or []
    source = node.args.get("from_")
    if isinstance(source, exp.From):
        items.append(source.this)
    items += [join.this for join in node.args.get("joins") or [] if isinstance(join, exp.Join)]
    for item in items:
        if not isinstance(item, exp.Expr):
            continue
        alias = _alias_name(item)
        if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
            key = alias or _fold(item.this.this, bool(item.this.quoted))
            tables[key] = item
        else:
            opaque.add(alias or "")
    return tables, opaque


def _alias_name(node: exp.Expr) -> str | None:
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias) and isinstance(alias.this, exp.Identifier):
        return _fold(alias.this.this, bool(alias.this.quoted))
    return None


def _outer_names(node: exp.Expr) -> frozenset[str]:
    """Names a column may be qualified with to refer to the rows being changed
    (the target and the FROM/USING tables, and their aliases)."""
    names: set[str] = set()
    items = [node.this, node.args.get("using")]
    for key in ("from", "from_", "joins"):
        value = node.args.get(key)
        items.extend(value if isinstance(value, list) else [value])
    for item in items:
        if not isinstance(item, exp.Expr):
            continue
        for table in [item, *item.find_all(exp.Table, exp.Subquery)]:
            if isinstance(table, exp.Table) and isinstance(table.this, exp.Identifier):
                names.add(_fold(table.this.this, bool(table.this.quoted)))
            alias = _alias_name(table)
            if alias:
                names.add(alias)
    return frozenset(names)


_RELATION_KINDS = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "INDEX", "SEQUENCE"})
# sqlglot parses these as functions; in PostgreSQL they are syntax.
_SYNTAX_NOT_CALLS = ("ROW", "CAST", "ARRAY", "EXISTS")
# PostgreSQL keywords that sqlglot tokenizes as names and that take a
# parenthesised list, with the word that must precede them (None: any).
_KEYWORDS_BEFORE_PAREN: dict[str, tuple[str, ...] | None] = {
    "CONFLICT": ("ON",),
    "SYSTEM": ("TABLESAMPLE",),
    "BERNOULLI": ("TABLESAMPLE",),
    "REPEATABLE": None,
    "ROLLUP": None,
    "CUBE": None,
    "SETS": ("GROUPING",),
    "INCLUDE": None,
    "RANGE": ("PARTITION", "BY"),
    "LIST": ("PARTITION", "BY"),
    "HASH": ("PARTITION", "BY"),
    "OPTIONS": None,
    "GROUP": ("WITHIN",),
    "MATERIALIZED": ("AS", "NOT"),
    "CHECK": None,
    "TO": None,
}


def _syntax_before_paren(tokens: list[Token], i: int, word: str) -> bool:
    if i > 0 and _kw(tokens[i - 1], "USING") and _kw(tokens[0], "CREATE", "ALTER"):
        return True  # an index access method: USING gin (...)
    if word not in _KEYWORDS_BEFORE_PAREN:
        return False
    before = _KEYWORDS_BEFORE_PAREN[word]
    if before is None:
        return True
    if len(before) == 2 and before[0] == "PARTITION":
        # sqlglot reads PARTITION BY as one token.
        return (i > 0 and tokens[i - 1].text.upper().split() == ["PARTITION", "BY"]) or (
            i > 1 and _kw(tokens[i - 2], "PARTITION") and _kw(tokens[i - 1], "BY")
        )
    return i > 0 and _kw(tokens[i - 1], *before)


def _meta_start(node: Any) -> int | None:
    if not isinstance(node, exp.Expr):
        return None
    start = node.meta_get("start")
    return start if isinstance(start, int) else None


def _func_name(func: exp.Func) -> str:
    if isinstance(func, exp.Anonymous):
        this = func.this
        if isinstance(this, exp.Identifier):
            return _fold(this.this, bool(this.quoted))
        return _fold(str(this), False)
    return func.sql_name().lower()


def _merge_changes(when: exp.When) -> bool:
    then = when.args.get("then")
    if isinstance(then, exp.Update):
        return True
    return isinstance(then, exp.Var) and str(then.this).upper() == "DELETE"
