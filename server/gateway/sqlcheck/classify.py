"""Statement by statement, what kind of thing each does: the driver and the grammars.

:func:`analyze_uncached` is the analysis without caches, a pure function of its
arguments and the CPU time it may take (so it can run in another process, see
``analysis_pool``): budgets, tokens, the lexical check, the split (``lexing``),
then one ``_Analyzer`` per statement.  Whatever goes wrong fails closed: an
``_Unknown``, a parse error or a RecursionError makes that statement UNKNOWN and
leaves the others analysed; any other exception makes the whole input UNKNOWN;
running past the CPU budget gives :func:`over_budget_analysis`, never cached.

**Dispatch on the leading keyword** (``_LEADS``), never on sqlglot's guess.
Statements with a small grammar of their own (SET/RESET/SHOW, transaction
control, EXPLAIN, PREPARE/EXECUTE, COPY, DO, CALL, LISTEN/NOTIFY, cursors,
maintenance, GRANT/REVOKE, roles) are read from the tokens here; queries, DML
and most DDL go through sqlglot, whose tree must have the type the keyword
promises, and whose facts ``facts`` reads.  sqlglot's ``Command`` fallback, parse
errors and unexpected tree types are UNKNOWN, except for DDL whose class the
leading words settle (``ALTER SEQUENCE``, ``CREATE EXTENSION``, ...; the
``_OBJECTS`` table): those keep their class and carry :attr:`Feature.UNPARSED`,
and any ``name(`` in them counts as a call (``_token_calls``).

A FunctionCall message names its function by OID only:
:func:`analyze_function_call` recognises the large-object functions libpq calls
that way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from server.gateway.sqlcheck.budgets import (
    DEFAULT_MAX_LEN,
    DEFAULT_TIME_BUDGET,
    MAX_TOKENS,
    cpu_clock,
)
from server.gateway.sqlcheck.facts import (
    _DML_ROOTS,
    _QUERY_ROOTS,
    _ROLE_SETTINGS,
    _syntax_before_paren,
    _TreeFacts,
)
from server.gateway.sqlcheck.lexing import (
    _L_PAREN,
    _NAME_TOKENS,
    _STRING_TOKENS,
    _VAR,
    _delimiters,
    _ident,
    _is_name,
    _is_word,
    _kw,
    _lexical_problem,
    _parse,
    _qualified_at,
    _split,
    _tokenize,
    _Tokens,
)
from server.gateway.sqlcheck.model import (
    Analysis,
    CopyEndpoint,
    CopySpec,
    Execution,
    Feature,
    Statement,
    StatementClass,
    _graver,
    _Options,
    _text,
    _Unknown,
    _unknown,
)
from server.gateway.sqlcheck.names import Name, relation_schemas


def failed_analysis(sql: str, reason: str) -> Analysis:
    """The analysis of a statement whose reading could not finish (``reason``):
    one UNKNOWN statement, never cached (the text may be fine)."""
    return Analysis((_unknown(0, sql, reason),), failed=reason)


# Large-object functions a client reaches through the FunctionCall message ('F'),
# by the fixed OIDs libpq uses; PostgreSQL never renumbers built-in functions.
_FASTPATH_FUNCTIONS = {
    715: "lo_create",
    764: "lo_import",
    765: "lo_export",
    767: "lo_import",
    952: "lo_open",
    953: "lo_close",
    954: "loread",
    955: "lowrite",
    956: "lo_lseek",
    957: "lo_creat",
    958: "lo_tell",
    964: "lo_unlink",
    1004: "lo_truncate",
    3170: "lo_lseek64",
    3171: "lo_tell64",
    3172: "lo_truncate64",
}


def analyze_function_call(oid: int) -> Analysis:
    """A FunctionCall message names its function by OID only; the large-object
    functions libpq calls this way are recognised, anything else is UNKNOWN."""
    name = _FASTPATH_FUNCTIONS.get(oid)
    if name is None:
        return Analysis(
            (
                _unknown(
                    0,
                    f"function call by OID {oid}",
                    f"FunctionCall of OID {oid}: only large-object functions are recognised",
                ),
            )
        )
    return Analysis(
        (
            Statement(
                index=0,
                text=f"FunctionCall {oid} ({name})",
                kind=StatementClass.UTILITY,
                command="FUNCTION CALL",
                functions=(Name(("pg_catalog", name)),),
            ),
        )
    )


class _OverBudget(Exception):
    pass


def analyze_uncached(
    sql: str,
    search_path: tuple[str, ...] = ("public",),
    max_len: int = DEFAULT_MAX_LEN,
    params: tuple[str | None, ...] | None = None,
    time_budget: float = DEFAULT_TIME_BUDGET,
) -> tuple[Analysis, bool]:
    """The analysis itself, without the caches (a pure function of its arguments
    and the CPU time it may take, so it can run in another process), and whether
    it may be cached (not when it stopped at the budget)."""
    deadline = cpu_clock() + time_budget
    try:
        analysis = _analyze(sql, search_path, max_len, params, deadline)
    except _OverBudget:
        return over_budget_analysis(sql, time_budget), False
    except RecursionError:
        return _whole_unknown(sql, "statement nested too deeply to analyse"), True
    except Exception as error:  # fail closed on anything the analysis did not foresee
        return _whole_unknown(sql, f"analysis failed: {type(error).__name__}"), True
    if cpu_clock() > deadline:
        return over_budget_analysis(sql, time_budget), False
    return analysis, True


def over_budget_analysis(sql: str, time_budget: float) -> Analysis:
    """The analysis of a statement whose reading ran past ``time_budget``."""
    reason = f"analysis took more than {time_budget:g}s of CPU"
    return Analysis((_unknown(0, sql, reason),), over_budget=True)


def _whole_unknown(sql: str, reason: str) -> Analysis:
    return Analysis((_unknown(0, sql, reason),))


def _analyze(
    sql: str,
    search_path: tuple[str, ...],
    max_len: int,
    params: tuple[str | None, ...] | None,
    deadline: float,
) -> Analysis:
    if len(sql) > max_len:
        return _whole_unknown(sql, f"statement text longer than {max_len} characters")
    if "\x00" in sql:
        return _whole_unknown(sql, "statement text contains a NUL character")
    if _delimiters(sql) > MAX_TOKENS:
        return _whole_unknown(sql, f"more than {MAX_TOKENS} tokens")
    try:
        tokens = _tokenize(sql)
    except SqlglotError:
        return _whole_unknown(sql, "cannot tokenize (unterminated string, comment or identifier?)")
    if len(tokens) > MAX_TOKENS:
        return _whole_unknown(sql, f"more than {MAX_TOKENS} tokens")
    problem = _lexical_problem(sql, tokens)
    if problem:
        return _whole_unknown(sql, problem)
    options = _Options(
        relation_schemas(search_path), relation_schemas(search_path, catalog=True), params
    )
    statements: list[Statement] = []
    for chunk in _split(tokens):
        if cpu_clock() > deadline:
            raise _OverBudget
        index = len(statements)
        text = sql[chunk[0].start : chunk[-1].end + 1]
        try:
            statement = _Analyzer(sql, chunk, options).statement()
        except _Unknown as why:
            statement = _unknown(index, text, str(why))
        except RecursionError:
            statement = _unknown(index, text, "statement nested too deeply to analyse")
        except SqlglotError as error:
            statement = _unknown(index, text, f"cannot parse: {_first_line(error)}")
        statements.append(replace(statement, index=index, text=_text(text)))
    return Analysis(tuple(statements))


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


_SELECTS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
_PREPARABLE = _SELECTS | {"INSERT", "UPDATE", "DELETE", "MERGE"}
_EXPLAINABLE = _PREPARABLE | {"DECLARE", "CREATE", "REFRESH", "EXECUTE"}


class _Analyzer:
    """Analyses one statement: ``sql`` is the whole input, ``tokens`` the statement's."""

    def __init__(self, sql: str, tokens: list[Token], options: _Options) -> None:
        self.sql = sql
        self.tokens = tokens
        self.options = options

    def sub(self, tokens: list[Token]) -> _Analyzer:
        if not tokens:
            raise _Unknown("statement ends too early")
        return _Analyzer(self.sql, tokens, self.options)

    def synthetic(self, prefix: str, tokens: list[Token], suffix: str = "") -> _Analyzer:
        """An analyzer over ``prefix`` + the source text of ``tokens`` + ``suffix``,
        for pieces of a statement that sqlglot only parses inside a query."""
        body = self.sql[tokens[0].start : tokens[-1].end + 1] if tokens else ""
        text = prefix + body + suffix
        return _Analyzer(text, _tokenize(text), self.options)

    def statement(self, allowed: frozenset[str] | None = None) -> Statement:
        """The statement's summary; ``allowed`` limits the leading keywords, for
        statements inside others (PREPARE, EXPLAIN, COPY, DECLARE)."""
        first = self.tokens[0]
        lead = "(" if first.token_type is _L_PAREN else first.text.upper()
        if allowed is not None and (lead not in allowed or not (lead == "(" or _is_word(first))):
            raise _Unknown(f"{first.text!r} cannot start a statement here")
        if lead == "(":
            return self.query("(")
        if not _is_word(first):
            raise _Unknown(f"statement starts with {first.text!r}")
        handler = _LEADS.get(lead)
        if handler is None:
            raise _Unknown(f"unrecognised statement {lead}")
        statement: Statement = handler(self, lead)
        return statement

    # -- parsing with sqlglot ----------------------------------------------

    def parse(self) -> exp.Expr:
        parsed = _parse(self.tokens, self.sql)
        if len(parsed) != 1 or parsed[0] is None:
            raise _Unknown("not a single statement")
        return parsed[0]

    # -- queries and DML ---------------------------------------------------

    def query(self, lead: str) -> Statement:
        # UPDATE/DELETE ... WHERE CURRENT OF cursor: one row, which sqlglot cannot parse.
        current_of = False
        tokens = self.tokens
        if (
            lead in ("UPDATE", "DELETE")
            and len(tokens) > 4
            and _kw(tokens[-4], "WHERE")
            and _kw(tokens[-3], "CURRENT")
            and _kw(tokens[-2], "OF")
            and _is_name(tokens[-1])
        ):
            current_of = True
            tokens = tokens[:-4]
        analyzer = self.sub(tokens)
        tree = analyzer.parse()
        expected: tuple[type[exp.Expr], ...]
        if lead in ("SELECT", "VALUES", "TABLE", "("):
            expected = _QUERY_ROOTS
        elif lead == "WITH":
            expected = _QUERY_ROOTS + _DML_ROOTS
        else:
            expected = {
                "INSERT": (exp.Insert,),
                "UPDATE": (exp.Update,),
                "DELETE": (exp.Delete,),
                "MERGE": (exp.Merge,),
            }[lead]
        if not isinstance(tree, expected):
            raise _Unknown(f"{lead} statement not understood (parsed as {type(tree).__name__})")
        statement = analyzer.from_tree(tree)
        if current_of:
            statement = replace(statement, restricting_where=True)
        return statement

    def from_tree(
        self,
        tree: exp.Expr,
        *,
        command: str | None = None,
        kind: StatementClass | None = None,
        features: frozenset[Feature] = frozenset(),
        embedded: bool = False,
    ) -> Statement:
        facts = _TreeFacts(self, tree, embedded=embedded)
        if kind is None:
            kind, default_command = facts.query_kind()
            command = command or default_command
        kind = _graver(kind, facts.extra_kind())
        return Statement(
            index=0,
            text="",
            kind=kind,
            command=command or "",
            reads=facts.reads(),
            writes=facts.writes(),
            columns_written=facts.columns_written(),
            columns_filtered=facts.columns_filtered(),
            restricting_where=facts.restricting_where(tree),
            functions=facts.functions,
            settings=facts.settings(),
            features=features | facts.features(),
            nested=facts.nested(),
        )

    # -- data definition -------------------------------------------------------

    def ddl(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        if lead == "CREATE":
            while cursor.accept(*_CREATE_MODIFIERS):
                if _kw(cursor.tokens[cursor.i - 1], "OR"):
                    cursor.expect("REPLACE")
        words, spec = _object_spec(cursor)
        command = f"{lead} {' '.join(words)}"
        if Feature.CODE in spec.features.get(lead, ()) and any(
            _kw(a, "BEGIN") and _kw(b, "ATOMIC")
            for a, b in zip(self.tokens, self.tokens[1:], strict=False)
        ):
            # The body's semicolons end statements for the splitter but not for
            # PostgreSQL, so the pieces seen here are not what runs.
            raise _Unknown("BEGIN ATOMIC function bodies are not supported")
        kind, features = spec.kind, frozenset(spec.features.get(lead, ()))
        if spec.command_override:
            command = spec.command_override
        if words == ("EXTENSION",) and lead == "CREATE":
            cursor.accept_seq("IF", "NOT", "EXISTS")
            ext = cursor.peek()
            if ext is not None and _is_name(ext) and _ident(ext) in _FOREIGN_EXTENSIONS:
                features |= {Feature.FOREIGN}
        inner: Statement | None = None
        if spec.embeds_query and lead == "CREATE":
            # The query of CREATE TABLE/MATERIALIZED VIEW ... AS is read with the
            # statement dispatch (sqlglot misreads AS EXECUTE name).
            found = _query_after_as(self.tokens)
            if found is not None:
                inner = replace(self.sub(found[0]).statement(), execution=found[1])
                if inner.kind is StatementClass.UNKNOWN:
                    raise _Unknown(f"{command} query not understood: {inner.reason}")
        tree: exp.Expr | None
        try:
            tree = self.parse()
        except (SqlglotError, _Unknown):
            tree = None
        root_type = _DDL_ROOTS.get(lead)
        if tree is not None and root_type is not None and isinstance(tree, root_type):
            statement = self.from_tree(
                tree, command=command, kind=kind, features=features, embedded=inner is not None
            )
            if spec.relation and not statement.writes:
                statement = replace(statement, writes=self.object_name(cursor))
        elif spec.safe_unparsed or inner is not None or lead != "CREATE":
            statement = self.unparsed(cursor, command, kind, features, spec)
        else:
            what = type(tree).__name__ if tree is not None else "a parse error"
            raise _Unknown(f"{command} not understood (parsed as {what})")
        return _with_nested(statement, inner)

    def unparsed(
        self,
        cursor: _Tokens,
        command: str,
        kind: StatementClass,
        features: frozenset[Feature],
        spec: _ObjectSpec,
    ) -> Statement:
        """DDL classified by its leading words, whose calls are every ``name(``."""
        if any(_kw(t, "GRANT", "REVOKE") for t in self.tokens):
            kind = _graver(kind, StatementClass.PRIVILEGE)
        return Statement(
            index=0,
            text="",
            kind=kind,
            command=command,
            writes=self.object_name(cursor) if spec.relation else (),
            functions=_token_calls(self.tokens, skip=_object_name_index(cursor)),
            features=features | {Feature.UNPARSED},
        )

    def object_name(self, cursor: _Tokens) -> tuple[Name, ...]:
        probe = _Tokens(cursor.tokens)
        probe.i = cursor.i
        probe.accept_seq("IF", "NOT", "EXISTS") or probe.accept_seq("IF", "EXISTS")
        probe.accept("CONCURRENTLY")
        probe.accept("ONLY")
        token = probe.peek()
        if token is None or not _is_name(token) or _kw(token, "ON"):
            return ()
        try:
            return self.resolve(probe.name())
        except _Unknown:
            return ()

    def truncate(self, lead: str) -> Statement:
        tree = self.parse()
        if not isinstance(tree, exp.TruncateTable):
            raise _Unknown(f"TRUNCATE not understood (parsed as {type(tree).__name__})")
        return self.from_tree(tree, command="TRUNCATE", kind=StatementClass.WRITE)

    def resolve(self, name: Name) -> tuple[Name, ...]:
        """The relations a name may be: itself when qualified, else one per
        schema of the search path it may resolve to."""
        if len(name.parts) > 1:
            return (name,)
        options = self.options
        schemas = options.catalog_schemas if name.name.startswith("pg_") else options.schemas
        return tuple(Name((schema, name.name)) for schema in schemas)

    # -- statements read from the tokens -------------------------------------

    def simple(
        self,
        kind: StatementClass,
        command: str,
        *,
        features: frozenset[Feature] = frozenset(),
        settings: tuple[str, ...] = (),
        functions: tuple[Name, ...] = (),
        prepared_name: str | None = None,
        writes: tuple[Name, ...] = (),
        reads: tuple[Name, ...] = (),
    ) -> Statement:
        return Statement(
            index=0,
            text="",
            kind=kind,
            command=command,
            features=features,
            settings=settings,
            functions=functions,
            prepared_name=prepared_name,
            writes=writes,
            reads=reads,
        )

    def privilege(self, lead: str) -> Statement:
        words = [lead]
        if lead in ("SECURITY", "REASSIGN"):
            words.append(self.tokens[1].text.upper() if len(self.tokens) > 1 else "")
        return self.simple(StatementClass.PRIVILEGE, " ".join(words))

    def comment(self, lead: str) -> Statement:
        return self.simple(StatementClass.DDL, "COMMENT")

    def import_foreign(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        cursor.expect("FOREIGN")
        cursor.expect("SCHEMA")
        return self.simple(
            StatementClass.DDL, "IMPORT FOREIGN SCHEMA", features=frozenset({Feature.FOREIGN})
        )

    def set_(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        if cursor.accept_seq("SESSION", "CHARACTERISTICS"):
            cursor.expect("AS")
            cursor.expect("TRANSACTION")
            names = _transaction_modes(cursor, default=True)
            return self.simple(
                StatementClass.TRANSACTION, "SET SESSION CHARACTERISTICS", settings=names
            )
        if cursor.accept("TRANSACTION"):
            if cursor.accept("SNAPSHOT"):
                _expect_string(cursor)
                _expect_end(cursor)
                return self.simple(
                    StatementClass.TRANSACTION,
                    "SET TRANSACTION",
                    settings=("transaction_snapshot",),
                )
            names = _transaction_modes(cursor, default=False)
            return self.simple(StatementClass.TRANSACTION, "SET TRANSACTION", settings=names)
        if cursor.accept("CONSTRAINTS"):
            _expect_plain(cursor)
            return self.simple(StatementClass.TRANSACTION, "SET CONSTRAINTS")
        # SET SESSION AUTHORIZATION is a statement of its own, SESSION before
        # anything else is the scope.
        if not _kw(cursor.peek(1), "AUTHORIZATION"):
            cursor.accept("SESSION", "LOCAL")
        if cursor.accept_seq("SESSION", "AUTHORIZATION"):
            _expect_plain(cursor)
            return self.simple(
                StatementClass.PRIVILEGE,
                "SET SESSION AUTHORIZATION",
                settings=("session_authorization",),
            )
        for words, setting in _SET_FORMS.items():
            if all(_kw(cursor.peek(k), w) for k, w in enumerate(words)):
                cursor.i += len(words)
                # SET role TO x is the generic form of SET ROLE x: the same change.
                if not cursor.accept("TO"):
                    cursor.accept_type(TokenType.EQ)
                _expect_plain(cursor)
                return self.setting_statement("SET", setting)
        name = _setting_name(cursor)
        if not (cursor.accept("TO") or cursor.accept_type(TokenType.EQ)):
            raise _Unknown("SET without TO or =")
        _expect_plain(cursor)
        return self.setting_statement("SET", name)

    def setting_statement(self, verb: str, setting: str) -> Statement:
        if setting in _ROLE_SETTINGS:
            command = f"{verb} ROLE" if setting == "role" else f"{verb} SESSION AUTHORIZATION"
            return self.simple(StatementClass.PRIVILEGE, command, settings=(setting,))
        return self.simple(StatementClass.SESSION_STATE, verb, settings=(setting,))

    def reset(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        if cursor.accept("ALL"):
            _expect_end(cursor)
            return self.simple(StatementClass.SESSION_STATE, "RESET ALL", settings=("all",))
        for words, setting in (
            (("SESSION", "AUTHORIZATION"), "session_authorization"),
            (("TIME", "ZONE"), "timezone"),
            (("TRANSACTION", "ISOLATION", "LEVEL"), "transaction_isolation"),
            (("ROLE",), "role"),
        ):
            if cursor.accept_seq(*words):
                _expect_end(cursor)
                return self.setting_statement("RESET", setting)
        name = _setting_name(cursor)
        _expect_end(cursor)
        return self.setting_statement("RESET", name)

    def show(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        _expect_plain(cursor)
        return self.simple(StatementClass.READ, "SHOW")

    def discard(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        what = cursor.expect("ALL", "PLANS", "SEQUENCES", "TEMP", "TEMPORARY").text.upper()
        _expect_end(cursor)
        what = "TEMP" if what == "TEMPORARY" else what
        settings = ("all",) if what == "ALL" else ()
        return self.simple(StatementClass.SESSION_STATE, f"DISCARD {what}", settings=settings)

    def transaction(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        kind = StatementClass.TRANSACTION
        if lead in ("BEGIN", "START"):
            if lead == "START":
                cursor.expect("TRANSACTION")
            else:
                cursor.accept("WORK", "TRANSACTION")
            names = _transaction_modes(cursor, default=False)
            return self.simple(
                kind, "BEGIN" if lead == "BEGIN" else "START TRANSACTION", settings=names
            )
        if lead in ("COMMIT", "ROLLBACK") and cursor.accept("PREPARED"):
            _expect_string(cursor)
            _expect_end(cursor)
            return self.simple(kind, f"{lead} PREPARED")
        if lead == "PREPARE":
            cursor.expect("TRANSACTION")
            _expect_string(cursor)
            _expect_end(cursor)
            return self.simple(kind, "PREPARE TRANSACTION")
        if lead == "SAVEPOINT":
            _expect_name(cursor)
            _expect_end(cursor)
            return self.simple(kind, "SAVEPOINT")
        if lead == "RELEASE":
            cursor.accept("SAVEPOINT")
            _expect_name(cursor)
            _expect_end(cursor)
            return self.simple(kind, "RELEASE")
        cursor.accept("WORK", "TRANSACTION")
        if lead in ("ROLLBACK", "ABORT") and cursor.accept("TO"):
            cursor.accept("SAVEPOINT")
            _expect_name(cursor)
            _expect_end(cursor)
            return self.simple(kind, "ROLLBACK TO SAVEPOINT")
        if cursor.accept("AND"):
            cursor.accept("NO")
            cursor.expect("CHAIN")
        _expect_end(cursor)
        return self.simple(kind, "COMMIT" if lead in ("COMMIT", "END") else "ROLLBACK")

    def prepare(self, lead: str) -> Statement:
        if _kw(self.tokens[1] if len(self.tokens) > 1 else None, "TRANSACTION"):
            return self.transaction(lead)
        cursor = _Tokens(self.tokens)
        cursor.take()
        name = _expect_name(cursor)
        if cursor.next_is(_L_PAREN):
            cursor.skip_parens()
        cursor.expect("AS")
        body = replace(self.sub(cursor.rest()).statement(_PREPARABLE), execution=Execution.LATER)
        if body.kind is StatementClass.UNKNOWN:
            raise _Unknown(f"PREPARE body: {body.reason}")
        return Statement(
            index=0,
            text="",
            kind=StatementClass.UTILITY,
            command="PREPARE",
            functions=body.functions,
            nested=(body,),
            prepared_name=name,
        )

    def execute(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        name = _expect_name(cursor)
        functions: tuple[Name, ...] = ()
        settings: tuple[str, ...] = ()
        kind = StatementClass.UTILITY
        if not cursor.at_end():
            args = cursor.rest()
            if args[0].token_type is not TokenType.L_PAREN:
                raise _Unknown("EXECUTE arguments not understood")
            cursor.skip_parens()
            _expect_end(cursor)
            inner = self.synthetic("SELECT ", args).query("SELECT")
            functions, settings = inner.functions, inner.settings
            kind = _graver(kind, inner.kind)
        return Statement(
            index=0,
            text="",
            kind=kind,
            command="EXECUTE",
            functions=functions,
            settings=settings,
            prepared_name=name,
        )

    def deallocate(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        cursor.accept("PREPARE")
        if cursor.accept("ALL"):
            _expect_end(cursor)
            return self.simple(StatementClass.UTILITY, "DEALLOCATE ALL")
        name = _expect_name(cursor)
        _expect_end(cursor)
        return self.simple(StatementClass.UTILITY, "DEALLOCATE", prepared_name=name)

    def explain(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        analyze_ = False
        first = cursor.peek()
        if first is not None and first.token_type is TokenType.L_PAREN:
            analyze_ = _explain_options(cursor)
        else:
            while True:
                if cursor.accept("ANALYZE", "ANALYSE"):
                    analyze_ = True
                elif not cursor.accept("VERBOSE"):
                    break
        inner = self.sub(cursor.rest()).statement(_EXPLAINABLE)
        if inner.kind is StatementClass.UNKNOWN:
            raise _Unknown(f"EXPLAIN of a statement not understood: {inner.reason}")
        if analyze_:
            return Statement(
                index=0,
                text="",
                kind=inner.kind,
                command="EXPLAIN ANALYZE",
                reads=inner.reads,
                writes=inner.writes,
                columns_written=inner.columns_written,
                columns_filtered=inner.columns_filtered,
                functions=inner.functions,
                settings=inner.settings,
                features=inner.features,
                nested=(inner,),
            )
        return Statement(
            index=0,
            text="",
            kind=StatementClass.READ,
            command="EXPLAIN",
            functions=inner.functions,
            nested=(replace(inner, execution=Execution.NEVER),),
        )

    def copy(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        inner: Statement | None = None
        table: tuple[Name, ...] | None = None
        start = cursor.peek()
        if start is not None and start.token_type is TokenType.L_PAREN:
            open_at = cursor.i
            cursor.skip_parens()
            inner = self.sub(cursor.tokens[open_at + 1 : cursor.i - 1]).statement(_PREPARABLE)
            if inner.kind is StatementClass.UNKNOWN:
                raise _Unknown(f"COPY query not understood: {inner.reason}")
        else:
            cursor.accept("BINARY")
            table = self.resolve(cursor.name())
            columns = cursor.peek()
            if columns is not None and columns.token_type is TokenType.L_PAREN:
                cursor.skip_parens()
        direction_token = cursor.expect("FROM", "TO")
        direction = direction_token.text.lower()
        if inner is not None and direction != "to":
            raise _Unknown("COPY (query) FROM")
        program = cursor.accept("PROGRAM") is not None
        target = cursor.take()
        if target.token_type in _STRING_TOKENS:
            endpoint = CopyEndpoint.PROGRAM if program else CopyEndpoint.FILE
        elif not program and _kw(target, "STDIN", "STDOUT"):
            endpoint = CopyEndpoint.STDIO
        else:
            raise _Unknown("COPY source or destination not understood")
        options = cursor.rest()
        where: list[Token] = []
        for k, token in enumerate(options):
            if _kw(token, "WHERE"):
                options, where = options[:k], options[k + 1 :]
                break
        settings: tuple[str, ...] = ()
        for k, token in enumerate(options):
            following = options[k + 1] if k + 1 < len(options) else None
            if (
                following is not None
                and following.token_type is TokenType.L_PAREN
                and token.token_type in _NAME_TOKENS
                and token.text.upper() not in _COPY_LIST_OPTIONS
            ):
                raise _Unknown("COPY options not understood")
            if _kw(token, "ENCODING"):
                # The data the gateway relays would no longer be UTF-8.
                settings = ("client_encoding",)
        functions: tuple[Name, ...] = ()
        if where:
            if direction != "from":
                raise _Unknown("COPY TO with WHERE")
            condition = self.synthetic("SELECT 1 WHERE ", where).query("SELECT")
            functions, settings = condition.functions, _union(settings, condition.settings)
        spec = CopySpec(direction, endpoint)
        if inner is not None:
            return Statement(
                index=0,
                text="",
                kind=inner.kind,
                command="COPY",
                reads=inner.reads,
                writes=inner.writes,
                columns_written=inner.columns_written,
                columns_filtered=inner.columns_filtered,
                functions=inner.functions,
                settings=_union(inner.settings, settings),
                features=inner.features,
                nested=(inner,),
                copy=spec,
            )
        assert table is not None
        return Statement(
            index=0,
            text="",
            kind=StatementClass.WRITE if direction == "from" else StatementClass.READ,
            command="COPY",
            reads=table if direction == "to" else (),
            writes=table if direction == "from" else (),
            functions=functions,
            settings=settings,
            copy=spec,
        )

    def do(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        seen_code = False
        while not cursor.at_end():
            if cursor.accept("LANGUAGE"):
                _expect_name(cursor)
            elif not seen_code and cursor.next_is(*_STRING_TOKENS):
                cursor.take()
                seen_code = True
            else:
                raise _Unknown("DO not understood")
        if not seen_code:
            raise _Unknown("DO without code")
        return self.simple(
            StatementClass.UTILITY, "DO", features=frozenset({Feature.CODE, Feature.OPAQUE})
        )

    def call(self, lead: str) -> Statement:
        rest = self.tokens[1:]
        inner = self.synthetic("SELECT ", rest).query("SELECT")
        if not inner.functions:
            raise _Unknown("CALL not understood")
        return Statement(
            index=0,
            text="",
            kind=StatementClass.UTILITY,
            command="CALL",
            functions=inner.functions,
            settings=inner.settings,
            features=frozenset({Feature.OPAQUE}),
        )

    def listen(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        if lead == "UNLISTEN" and cursor.accept_type(TokenType.STAR):
            _expect_end(cursor)
            return self.simple(StatementClass.UTILITY, "UNLISTEN")
        _expect_name(cursor)
        if lead == "NOTIFY" and cursor.accept_type(TokenType.COMMA):
            _expect_string(cursor)
        _expect_end(cursor)
        features = {"LISTEN": {Feature.LISTEN}, "NOTIFY": {Feature.NOTIFY}}.get(lead, set())
        return self.simple(StatementClass.UTILITY, lead, features=frozenset(features))

    def maintenance(self, lead: str) -> Statement:
        # Options, tables and column lists only: nothing in these statements is
        # an expression.
        lead = "ANALYZE" if lead == "ANALYSE" else lead
        return self.simple(StatementClass.UTILITY, lead)

    def load(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        _expect_string(cursor)
        _expect_end(cursor)
        return self.simple(StatementClass.UTILITY, "LOAD", features=frozenset({Feature.CODE}))

    def refresh(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        cursor.expect("MATERIALIZED")
        cursor.expect("VIEW")
        cursor.accept("CONCURRENTLY")
        view = self.resolve(cursor.name())
        if cursor.accept("WITH"):
            cursor.accept("NO")
            cursor.expect("DATA")
        _expect_end(cursor)
        return self.simple(StatementClass.WRITE, "REFRESH MATERIALIZED VIEW", writes=view)

    def lock(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        cursor.accept("TABLE")
        tables: list[Name] = []
        while True:
            cursor.accept("ONLY")
            tables.extend(self.resolve(cursor.name()))
            cursor.accept_type(TokenType.STAR)
            if not cursor.accept_type(TokenType.COMMA):
                break
        mode: list[str] = []
        if cursor.accept("IN"):
            while not cursor.accept("MODE"):
                mode.append(cursor.take().text.upper())
        cursor.accept("NOWAIT")
        _expect_end(cursor)
        if mode == ["ACCESS", "SHARE"]:
            return self.simple(
                StatementClass.READ,
                "LOCK TABLE",
                reads=tuple(tables),
                features=frozenset({Feature.ROW_LOCK}),
            )
        return self.simple(
            StatementClass.WRITE,
            "LOCK TABLE",
            writes=tuple(tables),
            features=frozenset({Feature.ROW_LOCK}),
        )

    def declare(self, lead: str) -> Statement:
        cursor = _Tokens(self.tokens)
        cursor.take()
        _expect_name(cursor)
        while not cursor.accept("CURSOR"):
            cursor.expect("BINARY", "ASENSITIVE", "INSENSITIVE", "NO", "SCROLL")
        if cursor.accept("WITH", "WITHOUT"):
            cursor.expect("HOLD")
        cursor.expect("FOR")
        inner = self.sub(cursor.rest()).statement(_SELECTS)
        if inner.kind is StatementClass.UNKNOWN:
            raise _Unknown(f"DECLARE query not understood: {inner.reason}")
        return replace(inner, command="DECLARE CURSOR", nested=(inner,), restricting_where=None)

    def cursor_op(self, lead: str) -> Statement:
        _no_calls(self.tokens)
        if any(t.token_type is TokenType.L_PAREN for t in self.tokens):
            raise _Unknown(f"{lead} not understood")
        if lead == "CLOSE":
            return self.simple(StatementClass.UTILITY, "CLOSE")
        return self.simple(StatementClass.READ, lead)


def _expect_end(cursor: _Tokens) -> None:
    if not cursor.at_end():
        raise _Unknown(f"unexpected {cursor.take().text!r}")


def _expect_name(cursor: _Tokens) -> str:
    token = cursor.take()
    if not _is_name(token):
        raise _Unknown(f"expected a name, found {token.text!r}")
    return _ident(token)


def _expect_string(cursor: _Tokens) -> None:
    if cursor.take().token_type not in _STRING_TOKENS:
        raise _Unknown("expected a string")


def _expect_plain(cursor: _Tokens) -> None:
    """The rest is values only (names, strings, numbers, commas, signs): no
    expressions, so nothing can run."""
    plain = (
        _NAME_TOKENS
        | _STRING_TOKENS
        | {TokenType.NUMBER, TokenType.COMMA, TokenType.DASH, TokenType.PLUS, TokenType.DOT}
    )
    for token in cursor.rest():
        if token.token_type not in plain and not _is_word(token):
            raise _Unknown(f"unexpected {token.text!r} in a setting value")
    cursor.i = len(cursor.tokens)


def _setting_name(cursor: _Tokens) -> str:
    token = cursor.take()
    if not _is_name(token):
        raise _Unknown(f"expected a setting name, found {token.text!r}")
    # Setting names are case-insensitive even when quoted.
    parts = [token.text.lower()]
    while cursor.accept_type(TokenType.DOT):
        token = cursor.take()
        if not _is_name(token):
            raise _Unknown("expected a setting name")
        parts.append(token.text.lower())
    return ".".join(parts)


def _transaction_modes(cursor: _Tokens, *, default: bool) -> tuple[str, ...]:
    prefix = "default_" if default else ""
    names: list[str] = []
    while not cursor.at_end():
        if cursor.accept_seq("ISOLATION", "LEVEL"):
            if not (
                cursor.accept("SERIALIZABLE")
                or cursor.accept_seq("REPEATABLE", "READ")
                or cursor.accept_seq("READ", "COMMITTED")
                or cursor.accept_seq("READ", "UNCOMMITTED")
            ):
                raise _Unknown("isolation level not understood")
            names.append(prefix + "transaction_isolation")
        elif cursor.accept_seq("READ", "ONLY") or cursor.accept_seq("READ", "WRITE"):
            names.append(prefix + "transaction_read_only")
        elif cursor.accept_seq("NOT", "DEFERRABLE") or cursor.accept("DEFERRABLE"):
            names.append(prefix + "transaction_deferrable")
        elif not cursor.accept_type(TokenType.COMMA):
            raise _Unknown(f"transaction mode not understood: {cursor.take().text!r}")
    return tuple(dict.fromkeys(names))


def _explain_options(cursor: _Tokens) -> bool:
    """Reads ``( option [value], ... )``; True when ANALYZE is on, or when the
    options cannot be read (then the statement is assumed to run)."""
    start = cursor.i
    cursor.skip_parens()
    inside = cursor.tokens[start + 1 : cursor.i - 1]
    analyze_ = False
    options: list[list[Token]] = [[]]
    for token in inside:
        if token.token_type is TokenType.COMMA:
            options.append([])
        else:
            options[-1].append(token)
    for option in options:
        if not option or not _kw(option[0], "ANALYZE", "ANALYSE"):
            continue
        value = option[1:]
        if not value:
            analyze_ = True
        elif len(value) == 1 and value[0].text.lower() in ("false", "off", "0", "no"):
            analyze_ = False
        else:
            analyze_ = True
    return analyze_


def _no_calls(tokens: list[Token]) -> None:
    if _token_calls(tokens):
        raise _Unknown("unexpected expression")


def _token_calls(tokens: list[Token], skip: int | None = None) -> tuple[Name, ...]:
    """Every ``name(`` in the tokens, as a call: an over-approximation used where
    there is no tree to tell calls from column lists.  ``skip`` is the position
    of the object a definition names (``CREATE AGGREGATE a (int)``)."""
    calls = []
    for i in range(len(tokens) - 1):
        token = tokens[i]
        if (
            tokens[i + 1].token_type is _L_PAREN
            and token.token_type in _NAME_TOKENS
            and i != skip
            and not (token.token_type is _VAR and token.text.upper() in _DDL_WORDS_BEFORE_PAREN)
            and not _syntax_before_paren(tokens, i, token.text.upper())
        ):
            calls.append(_qualified_at(tokens, i))
    return tuple(dict.fromkeys(calls))


# Words of DDL syntax that sqlglot tokenizes as names and that take a list.
_DDL_WORDS_BEFORE_PAREN = frozenset({"ALSO", "INSTEAD", "OPTIONS", "CHECK", "CAST"})


def _object_name_index(cursor: _Tokens) -> int | None:
    """Where the name of the object a DDL statement defines ends."""
    probe = _Tokens(cursor.tokens)
    probe.i = cursor.i
    probe.accept_seq("IF", "NOT", "EXISTS") or probe.accept_seq("IF", "EXISTS")
    probe.accept("CONCURRENTLY")
    probe.accept("ONLY")
    token = probe.peek()
    if token is None or not _is_name(token):
        return None
    try:
        probe.name()
    except _Unknown:
        return None
    return probe.i - 1


def _query_after_as(tokens: list[Token]) -> tuple[list[Token], Execution] | None:
    """The query of ``CREATE ... AS query [WITH [NO] DATA]`` and whether it runs now."""
    depth = 0
    for i, token in enumerate(tokens):
        if token.token_type is TokenType.L_PAREN:
            depth += 1
        elif token.token_type is TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and _kw(token, "AS") and i + 1 < len(tokens):
            following = tokens[i + 1]
            if following.token_type is TokenType.L_PAREN or _kw(
                following, "SELECT", "WITH", "VALUES", "TABLE", "EXECUTE"
            ):
                body = tokens[i + 1 :]
                tail = [t.text.upper() if _is_word(t) else "" for t in body[-3:]]
                if len(body) > 3 and tail == ["WITH", "NO", "DATA"]:
                    return body[:-3], Execution.NEVER
                if len(body) > 2 and _kw(body[-1], "DATA") and _kw(body[-2], "WITH"):
                    body = body[:-2]
                return body, Execution.NOW
    return None


def _union(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(a + b))


def _with_nested(statement: Statement, inner: Statement | None) -> Statement:
    """``statement`` holding ``inner``, which replaces whatever sqlglot nested."""
    if inner is None:
        return statement
    merged = replace(
        statement, nested=(inner,), functions=_union(statement.functions, inner.functions)
    )
    if inner.execution is not Execution.NOW:
        return merged
    return replace(
        merged,
        kind=_graver(statement.kind, inner.kind),
        reads=_union(statement.reads, inner.reads),
        writes=_union(statement.writes, inner.writes),
        columns_written=_union(statement.columns_written, inner.columns_written),
        columns_filtered=_union(statement.columns_filtered, inner.columns_filtered),
        settings=_union(statement.settings, inner.settings),
        features=statement.features | (inner.features - {Feature.UNPARSED}),
    )


# SET forms with a grammar of their own, and the parameter each one sets.
_SET_FORMS = {
    ("ROLE",): "role",
    ("TIME", "ZONE"): "timezone",
    ("SCHEMA",): "search_path",
    ("NAMES",): "client_encoding",
    ("SEED",): "seed",
    ("XML", "OPTION"): "xmloption",
}
_COPY_LIST_OPTIONS = frozenset({"FORCE_QUOTE", "FORCE_NOT_NULL", "FORCE_NULL"})
_FOREIGN_EXTENSIONS = frozenset({"dblink", "postgres_fdw", "file_fdw"})
_CREATE_MODIFIERS = (
    "OR",
    "TEMP",
    "TEMPORARY",
    "UNLOGGED",
    "GLOBAL",
    "LOCAL",
    "UNIQUE",
    "TRUSTED",
    "PROCEDURAL",
    "RECURSIVE",
    "DEFAULT",
    "CONSTRAINT",
)
_DDL_ROOTS: dict[str, type[exp.Expr]] = {
    "CREATE": exp.Create,
    "DROP": exp.Drop,
    "ALTER": exp.Alter,
}


@dataclass(frozen=True)
class _ObjectSpec:
    kind: StatementClass = StatementClass.DDL
    # Features by leading verb: creating a function is code, dropping one is not.
    features: Mapping[str, tuple[Feature, ...]] = field(default_factory=dict)
    relation: bool = False  # the object is a table-like relation: report it as written
    embeds_query: bool = False  # CREATE ... AS query runs the query now
    # Whether an unparsed body is acceptable: nothing in it runs now but
    # expressions, whose calls the token scan finds.
    safe_unparsed: bool = True
    command_override: str | None = None


_CODE = {"CREATE": (Feature.CODE,), "ALTER": (Feature.CODE,)}
_FOREIGN = {"CREATE": (Feature.FOREIGN,), "ALTER": (Feature.FOREIGN,)}
_PRIV = _ObjectSpec(kind=StatementClass.PRIVILEGE)
_OBJECTS: dict[tuple[str, ...], _ObjectSpec] = {
    ("ACCESS", "METHOD"): _ObjectSpec(features=_CODE),
    ("AGGREGATE",): _ObjectSpec(),
    ("CAST",): _ObjectSpec(),
    ("COLLATION",): _ObjectSpec(),
    ("CONVERSION",): _ObjectSpec(),
    ("DATABASE",): _ObjectSpec(),
    ("DEFAULT", "PRIVILEGES"): _PRIV,
    ("DOMAIN",): _ObjectSpec(),
    ("EVENT", "TRIGGER"): _ObjectSpec(),
    ("EXTENSION",): _ObjectSpec(features=_CODE),
    ("FOREIGN", "DATA", "WRAPPER"): _ObjectSpec(features=_FOREIGN),
    ("FOREIGN", "TABLE"): _ObjectSpec(features=_FOREIGN, relation=True),
    ("FUNCTION",): _ObjectSpec(features=_CODE),
    ("GROUP",): _PRIV,
    ("INDEX",): _ObjectSpec(),
    ("LANGUAGE",): _ObjectSpec(features=_CODE),
    ("LARGE", "OBJECT"): _ObjectSpec(),
    ("MATERIALIZED", "VIEW"): _ObjectSpec(relation=True, embeds_query=True),
    ("OPERATOR", "CLASS"): _ObjectSpec(),
    ("OPERATOR", "FAMILY"): _ObjectSpec(),
    ("OPERATOR",): _ObjectSpec(),
    ("OWNED",): _PRIV,
    ("POLICY",): _PRIV,
    ("PROCEDURE",): _ObjectSpec(features=_CODE),
    ("PUBLICATION",): _ObjectSpec(),
    ("ROLE",): _PRIV,
    ("ROUTINE",): _ObjectSpec(features=_CODE),
    ("RULE",): _ObjectSpec(),
    ("SCHEMA",): _ObjectSpec(),
    ("SEQUENCE",): _ObjectSpec(relation=True),
    ("SERVER",): _ObjectSpec(features=_FOREIGN),
    ("STATISTICS",): _ObjectSpec(),
    ("SUBSCRIPTION",): _ObjectSpec(features=_FOREIGN),
    ("SYSTEM",): _ObjectSpec(command_override="ALTER SYSTEM"),
    ("TABLE",): _ObjectSpec(relation=True, embeds_query=True, safe_unparsed=False),
    ("TABLESPACE",): _ObjectSpec(),
    ("TEXT", "SEARCH", "CONFIGURATION"): _ObjectSpec(),
    ("TEXT", "SEARCH", "DICTIONARY"): _ObjectSpec(),
    ("TEXT", "SEARCH", "PARSER"): _ObjectSpec(),
    ("TEXT", "SEARCH", "TEMPLATE"): _ObjectSpec(),
    ("TRANSFORM",): _ObjectSpec(features=_CODE),
    ("TRIGGER",): _ObjectSpec(),
    ("TYPE",): _ObjectSpec(),
    ("USER", "MAPPING"): _ObjectSpec(features=_FOREIGN),
    ("USER",): _PRIV,
    ("VIEW",): _ObjectSpec(relation=True),
}
_OBJECT_KEYS = sorted(_OBJECTS, key=len, reverse=True)


def _object_spec(cursor: _Tokens) -> tuple[tuple[str, ...], _ObjectSpec]:
    for words in _OBJECT_KEYS:
        if all(_kw(cursor.peek(k), w) for k, w in enumerate(words)):
            cursor.i += len(words)
            return words, _OBJECTS[words]
    token = cursor.peek()
    raise _Unknown(f"unrecognised object type {token.text if token else ''!r}")


_LEADS: dict[str, Any] = {
    "SELECT": _Analyzer.query,
    "WITH": _Analyzer.query,
    "VALUES": _Analyzer.query,
    "TABLE": _Analyzer.query,
    "INSERT": _Analyzer.query,
    "UPDATE": _Analyzer.query,
    "DELETE": _Analyzer.query,
    "MERGE": _Analyzer.query,
    "CREATE": _Analyzer.ddl,
    "ALTER": _Analyzer.ddl,
    "DROP": _Analyzer.ddl,
    "TRUNCATE": _Analyzer.truncate,
    "COMMENT": _Analyzer.comment,
    "GRANT": _Analyzer.privilege,
    "REVOKE": _Analyzer.privilege,
    "SECURITY": _Analyzer.privilege,
    "REASSIGN": _Analyzer.privilege,
    "IMPORT": _Analyzer.import_foreign,
    "SET": _Analyzer.set_,
    "RESET": _Analyzer.reset,
    "SHOW": _Analyzer.show,
    "DISCARD": _Analyzer.discard,
    "BEGIN": _Analyzer.transaction,
    "START": _Analyzer.transaction,
    "COMMIT": _Analyzer.transaction,
    "END": _Analyzer.transaction,
    "ABORT": _Analyzer.transaction,
    "ROLLBACK": _Analyzer.transaction,
    "SAVEPOINT": _Analyzer.transaction,
    "RELEASE": _Analyzer.transaction,
    "PREPARE": _Analyzer.prepare,
    "EXECUTE": _Analyzer.execute,
    "DEALLOCATE": _Analyzer.deallocate,
    "EXPLAIN": _Analyzer.explain,
    "COPY": _Analyzer.copy,
    "DO": _Analyzer.do,
    "CALL": _Analyzer.call,
    "LISTEN": _Analyzer.listen,
    "UNLISTEN": _Analyzer.listen,
    "NOTIFY": _Analyzer.listen,
    "VACUUM": _Analyzer.maintenance,
    "ANALYZE": _Analyzer.maintenance,
    "ANALYSE": _Analyzer.maintenance,
    "CLUSTER": _Analyzer.maintenance,
    "REINDEX": _Analyzer.maintenance,
    "CHECKPOINT": _Analyzer.maintenance,
    "LOAD": _Analyzer.load,
    "REFRESH": _Analyzer.refresh,
    "LOCK": _Analyzer.lock,
    "DECLARE": _Analyzer.declare,
    "FETCH": _Analyzer.cursor_op,
    "MOVE": _Analyzer.cursor_op,
    "CLOSE": _Analyzer.cursor_op,
}
