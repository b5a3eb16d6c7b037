"""What a SQL string would do when PostgreSQL runs it, as plain data, failing closed.

``analyze(sql)`` returns an :class:`Analysis`: one :class:`Statement` per statement
of the input, each with its class (read, write, DDL, ...), its command, the tables
it reads and writes, whether an UPDATE/DELETE/MERGE has a WHERE that really
restricts rows, the functions it calls, the settings it changes, what it runs
inside itself (``nested``) and, for anything not understood, ``UNKNOWN`` with a
reason.  The guardrails decide on that data; nothing here decides.

This is the only module that imports sqlglot.  sqlglot is a good parser but not
PostgreSQL's, so everything it produces is checked before it is believed:

1. **Budgets before work.**  Inputs longer than ``max_len``, with too many tokens
   or nested deeper than PostgreSQL code written by people ever is, are UNKNOWN
   before the parser sees them: the compiled parser can recurse past the C stack
   on deep nesting and backtracks exponentially on nested ``ARRAY[``.  A budget
   of CPU time (the thread's, so a busy host does not trip it) is checked between
   statements, and an analysis that overran it is UNKNOWN and not cached.
2. **Same tokens as the server.**  The text is tokenized once with sqlglot's
   PostgreSQL tokenizer, then every gap between two tokens is re-read with
   PostgreSQL's own lexical rules and must hold nothing but PostgreSQL whitespace
   and (nested) comments.  Where the two lexers could disagree on what a token is
   (``U&"..."`` identifiers, ``UESCAPE``, NUL bytes, a no-break space or a vertical
   tab between tokens), the input is UNKNOWN.  sqlglot's habit of reading
   everything after EXPLAIN, CALL, LOCK, FETCH, ... as one string (ended by the
   next semicolon, even one inside a literal) is switched off.
3. **Split where the server splits.**  Statements are separated by semicolons at
   parenthesis depth zero (a rule's ``DO (a; b)`` stays one statement).
4. **Dispatch on the leading keyword**, never on sqlglot's guess.  Statements
   with a small grammar of their own (SET/RESET/SHOW, transaction control,
   EXPLAIN, PREPARE/EXECUTE, COPY, DO, CALL, LISTEN/NOTIFY, cursors, maintenance,
   GRANT/REVOKE, roles) are read from the tokens here; queries, DML and most DDL
   go through sqlglot, whose tree must have the type the keyword promises.
   sqlglot's ``Command`` fallback, parse errors and unexpected tree types are
   UNKNOWN, except for DDL whose class the leading words settle
   (``ALTER SEQUENCE``, ``CREATE EXTENSION``, ...): those keep their class and
   carry :attr:`Feature.UNPARSED`, and any ``name(`` in them counts as a call.
5. **Every call accounted for.**  Each ``name(`` in the tokens must be a function
   call in sqlglot's tree, a relation or type name that takes a parenthesised
   list, or a call sqlglot parses with special syntax (``CAST``, ``TRIM``, ...);
   a call sqlglot dropped or turned into something else makes the statement
   UNKNOWN.  Function names are taken from the tokens as written, so
   ``pg_catalog.set_config`` and ``"pg_read_file"`` are reported as PostgreSQL
   would resolve their spelling.
6. **WHERE that restricts.**  A predicate restricts rows only if it depends on
   the row.  Row-independent parts (``true``, ``1=1``, ``now() > '2000-01-01'``,
   ``EXISTS (SELECT 1)``, ``$1``) may be true for every row, so they do not
   count, and neither do ``x = x``, ``x LIKE '%'``, ``x IS NULL OR x IS NOT NULL``
   or an OR with any such branch.

A statement that runs another is reported with the other in ``nested`` and
``Execution`` saying when it runs: a data-modifying CTE, the statement under
EXPLAIN ANALYZE, the query of COPY or CREATE TABLE AS run NOW; a PREPARE body runs
LATER (at each EXECUTE); under a plain EXPLAIN it runs NEVER.  ``EXECUTE name``
reports the name in ``prepared_name``: what it runs is whatever the session
prepared under that name, which only the caller knows.

Unqualified relation names are resolved with the caller's ``search_path`` (the
session's, with ``$user`` replaced by the role name): a name is reported once
for each schema of the path it may be found in, since which one holds it is
known only to the database (``relation_schemas``).  ``parse_search_path``
reads a ``search_path`` value as PostgreSQL does.

``predicate_columns(sql)`` names the columns a text filters, joins, groups or
sorts on (WHERE, HAVING, JOIN ON/USING, GROUP BY, ORDER BY, DISTINCT ON,
PARTITION BY), for masking's inference rule; None when it cannot be read.

``result_lineage(sql, search_path, columns)`` names, for each result column
of the statement that returns rows, the base columns its value may be
computed from (expressions, aggregates, whole rows, ``*``, subqueries, CTEs,
set operations, RETURNING), over-approximated; None when that cannot be
established, for masking to fail closed on.  ``computed_uses(sql,
search_path, columns)`` walks the same way and names every place a base
column is used other than by passing its value on (computed with, filtered,
grouped, sorted, compared), for masking's ``computed`` rule.

Results are cached by (text, search_path, limits, parameters) in a bounded LRU
(texts up to 16 KiB, 4096 entries, 8 M characters in all) so a statement the
gateway has already seen costs a dictionary lookup.  A single plain read is
cached by its *shape* instead, its text with the numeric literals taken out,
so ``SELECT ... WHERE id = 1`` and ``... WHERE id = 2`` share one analysis
(see ``_shape``).
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from itertools import pairwise
from typing import Any, ClassVar, Generic, TypeVar

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

__all__ = [
    "DEFAULT_MAX_LEN",
    "DEFAULT_TIME_BUDGET",
    "Analysis",
    "CopyEndpoint",
    "CopySpec",
    "Execution",
    "Feature",
    "Lineage",
    "Name",
    "Statement",
    "StatementClass",
    "analyze",
    "analyze_function_call",
    "cache_clear",
    "computed_uses",
    "dotted_names",
    "parse_name",
    "parse_search_path",
    "predicate_columns",
    "relation_schemas",
    "result_lineage",
]

# The gateway's default statement size limit (``analysis_limits``); the guard
# passes the configured one, masking's readers use this.
DEFAULT_MAX_LEN = 262_144
DEFAULT_TIME_BUDGET = 1.0
# Deeper nesting than this is machine-made or hostile; the compiled parser
# recurses once per level and can overflow the C stack long before Python's
# recursion limit would stop it.
MAX_DEPTH = 64
# sqlglot backtracks on nested ARRAY[...] and doubles its work per level.
MAX_BRACKET_DEPTH = 6
MAX_TOKENS = 50_000
# Statement.text is for messages; a longer statement is cut.
MAX_TEXT = 2_000
_CACHE_ENTRIES = 4096
_V = TypeVar("_V")
_CACHE_MAX_KEY = 16_384
_CACHE_CHARS = 8_000_000

_DIALECT = Postgres()
_FUNCTION_PARSERS = frozenset(_DIALECT.parser_class.FUNCTION_PARSERS)


class _Tokenizer(Postgres.Tokenizer):
    # sqlglot swallows everything after EXPLAIN, CALL, LOCK, FETCH, ... as one
    # string token, ending it at the next semicolon even inside a literal; those
    # statements are read token by token here instead.
    COMMANDS: ClassVar[set[TokenType]] = set()


# Building a tokenizer or parser costs more than using one; each thread keeps its own.
_LOCAL = threading.local()


def _tokenize(sql: str) -> list[Token]:
    tokenizer = getattr(_LOCAL, "tokenizer", None)
    if tokenizer is None:
        tokenizer = _LOCAL.tokenizer = _Tokenizer(dialect=_DIALECT)
    tokens: list[Token] = tokenizer.tokenize(sql)
    return tokens


def _parse(tokens: list[Token], sql: str) -> list[exp.Expr | None]:
    parser = getattr(_LOCAL, "parser", None)
    if parser is None:
        parser = _LOCAL.parser = _DIALECT.parser()
    parsed: list[exp.Expr | None] = parser.parse(tokens, sql)
    return parsed


class _DropCommandFallbackWarning(logging.Filter):
    """sqlglot logs a warning for every statement it parses as a Command; those
    statements are handled here and the warning would flood the gateway log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_DropCommandFallbackWarning())


class StatementClass(StrEnum):
    """What kind of thing a statement does, coarsest first for policy."""

    READ = "read"
    WRITE = "write"
    DDL = "ddl"
    PRIVILEGE = "privilege"
    SESSION_STATE = "session_state"
    TRANSACTION = "transaction"
    UTILITY = "utility"
    UNKNOWN = "unknown"


# When a statement has parts of several classes it takes the gravest.
_SEVERITY = {
    StatementClass.READ: 0,
    StatementClass.TRANSACTION: 1,
    StatementClass.UTILITY: 2,
    StatementClass.SESSION_STATE: 3,
    StatementClass.WRITE: 4,
    StatementClass.DDL: 5,
    StatementClass.PRIVILEGE: 6,
    StatementClass.UNKNOWN: 7,
}


def _graver(a: StatementClass, b: StatementClass) -> StatementClass:
    return a if _SEVERITY[a] >= _SEVERITY[b] else b


class Feature(StrEnum):
    """Effects worth a rule of their own, whatever the statement's class."""

    ROW_LOCK = "row_lock"  # SELECT ... FOR UPDATE/SHARE, LOCK
    CODE = "code"  # runs or installs server-side code: DO, CREATE FUNCTION, extensions, LOAD
    OPAQUE = "opaque"  # effects invisible from the text: DO, CALL
    FOREIGN = "foreign"  # foreign servers, user mappings, foreign tables, subscriptions
    LISTEN = "listen"
    NOTIFY = "notify"
    UNPARSED = "unparsed"  # class from the leading keywords; the body was not parsed


class Execution(Enum):
    """When a nested statement runs relative to the statement that holds it."""

    NOW = "now"  # data-modifying CTE, EXPLAIN ANALYZE, COPY (query), CREATE TABLE AS
    LATER = "later"  # PREPARE body: runs at each EXECUTE
    NEVER = "never"  # plain EXPLAIN: planned, not run


class CopyEndpoint(StrEnum):
    STDIO = "stdio"  # STDIN/STDOUT: data flows through the gateway
    FILE = "file"  # a file on the database server
    PROGRAM = "program"  # a shell command on the database server


@dataclass(frozen=True)
class CopySpec:
    direction: str  # "from" (into a table) or "to" (out of a table or query)
    endpoint: CopyEndpoint


@dataclass(frozen=True, order=True)
class Name:
    """A schema-qualified name as PostgreSQL reads it: unquoted parts folded to
    lower case, quoted parts exact.  ``str()`` renders it back, quoting where needed."""

    parts: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def schema(self) -> str | None:
        return self.parts[-2] if len(self.parts) > 1 else None

    def __str__(self) -> str:
        return ".".join(_render_ident(p) for p in self.parts)


@dataclass(frozen=True)
class Statement:
    """One statement's summary.

    ``index`` is its position in the input and ``text`` its source (cut at 2000
    characters, for messages).  ``command`` names it much as PostgreSQL's command
    tag does (``SELECT``, ``CREATE TABLE``), more precisely where that matters
    (``SET ROLE``, ``EXPLAIN ANALYZE``, ``SELECT INTO``).  Tables are resolved to
    a schema (an unqualified one to every schema of the search path it may be
    in); functions keep the qualification they were written with.
    ``restricting_where`` is set for UPDATE, DELETE and MERGE only.  ``settings``
    are lower-cased parameter names (``*`` for one the analysis cannot read,
    ``all`` for RESET ALL / DISCARD ALL).

    The fields describe everything that runs when the statement runs, including
    its nested statements that run NOW; ``nested`` lists those parts again (and
    the ones that run LATER or NEVER) so that rules about a command or a WHERE
    clause can look at each one.
    """

    index: int
    text: str
    kind: StatementClass
    command: str
    reads: tuple[Name, ...] = ()
    writes: tuple[Name, ...] = ()
    restricting_where: bool | None = None
    functions: tuple[Name, ...] = ()
    settings: tuple[str, ...] = ()
    features: frozenset[Feature] = frozenset()
    nested: tuple[Statement, ...] = ()
    execution: Execution = Execution.NOW
    prepared_name: str | None = None
    copy: CopySpec | None = None
    reason: str = ""

    def walk(self) -> Iterator[tuple[Statement, Execution]]:
        """This statement and every nested one, with when each runs (the latest
        of the chain: what is planned but never run inside a PREPARE never runs)."""
        stack: list[tuple[Statement, Execution]] = [(self, self.execution)]
        while stack:
            statement, when = stack.pop()
            yield statement, when
            for child in reversed(statement.nested):
                stack.append((child, _later(when, child.execution)))


def _later(a: Execution, b: Execution) -> Execution:
    order = (Execution.NOW, Execution.LATER, Execution.NEVER)
    return a if order.index(a) >= order.index(b) else b


@dataclass(frozen=True)
class Analysis:
    statements: tuple[Statement, ...]
    # The analysis ran past its CPU budget and stopped (its one statement is
    # UNKNOWN): the text may be fine, it was too costly to read.
    over_budget: bool = False
    # Why the analysis could not finish for a reason other than its budget (the
    # process that ran it ended), or None.
    failed: str | None = None

    @property
    def unknown(self) -> bool:
        return any(s.kind is StatementClass.UNKNOWN for s in self.walk_all())

    def walk_all(self) -> Iterator[Statement]:
        for top in self.statements:
            for statement, _ in top.walk():
                yield statement


# ---------------------------------------------------------------------------
# Names


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PLAIN_IDENT = re.compile(r"(?:[a-z_]|[^\x00-\x7f])(?:[a-z0-9_$]|[^\x00-\x7f])*\Z")
_NAMEDATALEN = 63


def _fold(text: str, quoted: bool) -> str:
    # PostgreSQL folds only ASCII letters and truncates identifiers to 63 bytes.
    name = text if quoted else text.translate(_ASCII_LOWER)
    raw = name.encode("utf-8")
    if len(raw) > _NAMEDATALEN:
        name = raw[:_NAMEDATALEN].decode("utf-8", "ignore")
    return name


def _render_ident(part: str) -> str:
    return part if _PLAIN_IDENT.match(part) else '"' + part.replace('"', '""') + '"'


def parse_name(text: str) -> Name:
    """A dotted name as written in SQL or policy (``pg_catalog.set_config``,
    ``"MyFunc"``) to a :class:`Name`; raises ValueError on anything else."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"unterminated quoted name in {text!r}")
                buf.append(text[j:k])
                if k + 1 < n and text[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            part = "".join(buf)
            if not part:
                raise ValueError(f"empty name in {text!r}")
            parts.append(_fold(part, True))
        else:
            j = i
            while j < n and text[j] not in '."':
                j += 1
            part = text[i:j].strip()
            if not part or any(c.isspace() for c in part):
                raise ValueError(f"not a name: {text!r}")
            parts.append(_fold(part, False))
            i = j
        if i == n:
            return Name(tuple(parts))
        if text[i] != ".":
            raise ValueError(f"not a name: {text!r}")
        i += 1


# ---------------------------------------------------------------------------
# Public entry points


@dataclass(frozen=True)
class _Options:
    schemas: tuple[str, ...]  # where an unqualified relation may be, in search order
    catalog_schemas: tuple[str, ...]  # the same for a pg_* name
    params: tuple[str | None, ...] | None


def analyze(
    sql: str,
    *,
    search_path: tuple[str, ...] = ("public",),
    max_len: int = DEFAULT_MAX_LEN,
    params: tuple[str | None, ...] | None = None,
    time_budget: float = DEFAULT_TIME_BUDGET,
) -> Analysis:
    """Analyse ``sql`` (one or several statements); never raises.

    ``search_path`` resolves unqualified table names: each is reported once for
    every schema of the path it may be found in (see :func:`relation_schemas`).
    ``params`` are the text values of ``$1``, ``$2``, ... once bound (None for NULL or
    a binary value), used where a parameter names a setting.  ``time_budget`` is
    CPU seconds of this thread.
    """
    cached = analysis_cached(sql, search_path=search_path, max_len=max_len, params=params)
    if cached is not None:
        return cached
    result, deterministic = analyze_uncached(sql, search_path, max_len, params, time_budget)
    if deterministic:
        remember(sql, result, search_path=search_path, max_len=max_len, params=params)
    return result


def analysis_cached(
    sql: str,
    *,
    search_path: tuple[str, ...] = ("public",),
    max_len: int = DEFAULT_MAX_LEN,
    params: tuple[str | None, ...] | None = None,
) -> Analysis | None:
    """What :func:`analyze` would answer from its caches alone, or None."""
    cached = _CACHE.get((sql, search_path, max_len, params))
    if cached is not None:
        return cached
    if len(sql) > _CACHE_MAX_KEY:
        return None
    shape = _shape(sql)
    if shape is None:
        return None
    template = _SHAPES.get((shape, search_path, max_len, params))
    return template.fill(sql) if template is not None else None


def remember(
    sql: str,
    analysis: Analysis,
    *,
    search_path: tuple[str, ...] = ("public",),
    max_len: int = DEFAULT_MAX_LEN,
    params: tuple[str | None, ...] | None = None,
) -> None:
    """Keep a deterministic analysis of ``sql`` for :func:`analysis_cached`."""
    if len(sql) > _CACHE_MAX_KEY:
        return
    shape = _shape(sql)
    template = _ShapeTemplate.of(sql, analysis) if shape is not None else None
    if template is not None:
        # One entry serves every literal variant; the exact cache stays for
        # texts whose literals may matter.
        _SHAPES.put((shape, search_path, max_len, params), template, len(sql))
    else:
        _CACHE.put((sql, search_path, max_len, params), analysis, len(sql))


def failed_analysis(sql: str, reason: str) -> Analysis:
    """The analysis of a statement whose reading could not finish (``reason``):
    one UNKNOWN statement, never cached (the text may be fine)."""
    return Analysis((_unknown(0, sql, reason),), failed=reason)


def cache_clear() -> None:
    _CACHE.clear()
    _SHAPES.clear()


# Literal-insensitive caching.  Reads that differ only in their numeric
# literals (``... WHERE aid = 4711``, the commonest pattern of an application
# that does not use bind parameters) have the same analysis: in a plain read
# numbers name no table, function or setting.  Writes are not shaped, because
# the verdict on their WHERE folds constants (``WHERE 2 < 1`` restricts every
# row away, ``WHERE 1 < 2`` none), so values matter there.  The shape is the
# text with each free-standing decimal number replaced by a NUL (a character
# the analysis refuses in real input) and the number of its first spelling, so
# ``1 < 2`` and ``7 < 7`` stay apart.  Anything the simple lexer here could
# read differently from PostgreSQL (backslashes, dollar signs, block comments,
# ``&`` as in U&'...') gives no shape, and such texts use the exact cache only.
# Strings, quoted identifiers and line comments are kept verbatim, so a digit
# inside them is never taken for a number; anything else that is not a plain
# decimal number (``1e5``, ``0x1F``, ``t1``) stays verbatim in the shape too.
_SHAPE_PART = re.compile(
    r"""
      (?P<keep>'[^']*(?:''[^']*)*' | "[^"]*(?:""[^"]*)*" | --[^\n]*)
    | (?P<number>(?<![.\w])[0-9]+(?:\.[0-9]+)?(?![.\w]))
    """,
    re.VERBOSE,
)
_LEADING_SPACE = re.compile(r"(?:\s+|--[^\n]*)*")
_SHAPED_KINDS = frozenset({StatementClass.READ})
_NO_SHAPE = re.compile(r"[\\$&]|/\*")


def _shape(sql: str) -> str | None:
    if _NO_SHAPE.search(sql):
        return None
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        text = match.group()
        if match.lastgroup == "keep":
            return text
        return f"\x00{numbers.setdefault(text, len(numbers))}\x00"

    shape = _SHAPE_PART.sub(number, sql)
    return shape if numbers else None


@dataclass(frozen=True)
class _ShapeTemplate:
    """A single plain statement's analysis, reusable for texts of the same shape.

    Only the statement's ``text`` differs between them: it is the input between
    the first and last token, so it is cut at the same offset from the start and
    from the end of any text with the same shape.
    """

    analysis: Analysis
    start: int
    tail: int

    @classmethod
    def of(cls, sql: str, analysis: Analysis) -> _ShapeTemplate | None:
        if len(analysis.statements) != 1:
            return None
        st = analysis.statements[0]
        plain = (
            st.kind in _SHAPED_KINDS
            and not st.nested
            and not st.settings
            and not st.features
            and st.copy is None
            and st.prepared_name is None
            and len(sql) <= MAX_TEXT
        )
        if not plain:
            return None
        start = _LEADING_SPACE.match(sql).end()  # type: ignore[union-attr]
        end = start + len(st.text)
        if sql[start:end] != st.text:
            return None
        return cls(analysis, start, len(sql) - end)

    def fill(self, sql: str) -> Analysis:
        (st,) = self.analysis.statements
        # copy + one field: dataclasses.replace costs more than the lookup did.
        filled = copy.copy(st)
        object.__setattr__(filled, "text", sql[self.start : len(sql) - self.tail])
        return Analysis((filled,))


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


# ---------------------------------------------------------------------------
# Cache


class _LRU(Generic[_V]):
    """A bounded LRU keyed by statement text, limited in entries and in total
    text so that distinct large statements cannot grow it without bound."""

    def __init__(self, entries: int, chars: int) -> None:
        self._data: dict[Any, tuple[_V, int]] = {}
        self._entries = entries
        self._chars = chars
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> _V | None:
        with self._lock:
            item = self._data.pop(key, None)
            if item is None:
                return None
            self._data[key] = item
            return item[0]

    def put(self, key: Any, value: _V, size: int) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._size -= old[1]
            self._data[key] = (value, size)
            self._size += size
            while len(self._data) > self._entries or self._size > self._chars:
                first = next(iter(self._data))
                self._size -= self._data.pop(first)[1]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._size = 0


_CACHE: _LRU[Analysis] = _LRU(_CACHE_ENTRIES, _CACHE_CHARS)
_SHAPES: _LRU[_ShapeTemplate] = _LRU(_CACHE_ENTRIES, _CACHE_CHARS)


# ---------------------------------------------------------------------------
# Driver


class _Unknown(Exception):
    """Raised inside the analysis for anything not understood; becomes UNKNOWN."""


class _OverBudget(Exception):
    pass


def _text(s: str) -> str:
    return s if len(s) <= MAX_TEXT else s[: MAX_TEXT - 1] + "\u2026"


def _unknown(index: int, text: str, reason: str) -> Statement:
    return Statement(
        index=index, text=_text(text), kind=StatementClass.UNKNOWN, command="", reason=reason
    )


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
    deadline = time.thread_time() + time_budget
    try:
        analysis = _analyze(sql, search_path, max_len, params, deadline)
    except _OverBudget:
        return over_budget_analysis(sql, time_budget), False
    except RecursionError:
        return _whole_unknown(sql, "statement nested too deeply to analyse"), True
    except Exception as error:  # fail closed on anything the analysis did not foresee
        return _whole_unknown(sql, f"analysis failed: {type(error).__name__}"), True
    if time.thread_time() > deadline:
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
        if time.thread_time() > deadline:
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


# What cannot hold a token of its own: comments, string literals, quoted
# identifiers, dollar-quoted bodies (one left open runs to the end).
_NOT_CODE = re.compile(
    r"""
      --[^\n]*
    | /\*.*?(?:\*/|\Z)
    | [eE]'[^'\\]*(?:(?:\\(?:.|\Z)|'')[^'\\]*)*(?:'|\Z)
    | '[^']*(?:''[^']*)*(?:'|\Z)
    | "[^"]*(?:""[^"]*)*(?:"|\Z)
    | \$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?(?:\$(?P=tag)\$|\Z)
    """,
    re.VERBOSE | re.DOTALL,
)


def _delimiters(sql: str) -> int:
    """How many of ``( ) [ ] , ;`` stand outside comments and quotes: each is a
    token of its own, so this is a lower bound of the token count, found without
    the tokenizer.  The compiled tokenizer holds the interpreter's lock for as
    long as it runs, which would stall the gateway's event loop while an
    analysis thread tokenizes a text made of one-character tokens only to find
    it over the budget; this finds most such texts first, in a few milliseconds."""
    if len(sql) < MAX_TOKENS:
        return 0  # fewer characters than the budget: it cannot be over it
    code = _NOT_CODE.sub(" ", sql)
    return sum(code.count(c) for c in "()[],;")


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# Any column: a whole-row reference, ``t.*``, a position past the select list.
ANY_COLUMN = "*"


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


def _readable_tokens(sql: str) -> list[Token] | None:
    """The tokens of ``sql`` for the readers below (predicates, dotted names,
    lineage, uses), or None when they may not trust them: a NUL, more tokens
    than the budget, or a gap PostgreSQL would read differently (never raises)."""
    if "\x00" in sql:
        return None
    try:
        tokens = _tokenize(sql)
    except SqlglotError:
        return None
    if len(tokens) > MAX_TOKENS or _lexical_problem(sql, tokens):
        return None
    return tokens


def dotted_names(sql: str, *, max_len: int = DEFAULT_MAX_LEN) -> frozenset[str] | None:
    """Every name written after a dot (``s.t``, ``p.col``, ``(p).f``), folded as
    PostgreSQL folds it: where a function may be called in attribute notation
    (``p.f`` is ``f(p)`` when ``p`` has no column ``f``).  None when the text
    cannot be tokenized (never raises)."""
    tokens = _readable_tokens(sql) if len(sql) <= max_len else None
    if tokens is None:
        return None
    return frozenset(
        _ident(token)
        for before, token in pairwise(tokens)
        if before.token_type is _DOT and _is_name(token)
    )


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


def relation_schemas(search_path: tuple[str, ...], *, catalog: bool = False) -> tuple[str, ...]:
    """The schemas an unqualified relation name may resolve to, in the order
    PostgreSQL searches them; ``catalog`` for a name starting with ``pg_``.

    PostgreSQL takes the first schema of the path that holds the name, which
    only the database knows, so every candidate is reported.  ``pg_catalog`` is
    searched first unless the path places it; it holds nothing but ``pg_*``
    relations, so other names never resolve there, and a ``pg_*`` name is taken
    to be the catalog's unless the path puts other schemas before it.  Left
    out: ``pg_temp`` (the session's own temporary tables) and a ``$user`` the
    caller did not replace with the role name.  A path without any schema
    reports ``public``, so that rules about tables still see one.
    """
    entries = [e for e in search_path if e and e not in ("$user", "pg_temp")]
    if catalog:
        if "pg_catalog" not in entries:
            return ("pg_catalog",)
        entries = entries[: entries.index("pg_catalog") + 1]
    else:
        entries = [e for e in entries if e != "pg_catalog"]
    return tuple(dict.fromkeys(entries)) or ("public",)


def parse_search_path(text: str) -> tuple[str, ...]:
    """A ``search_path`` value as PostgreSQL reads it (``SplitIdentifierString``):
    comma-separated names, double-quoted ones exact, others folded to lower
    case; ``"$user"`` stays as written.  Raises ValueError where PostgreSQL
    would refuse the value."""
    if "\v" in text:
        # Whitespace from PostgreSQL 16 on, part of a name before: ambiguous.
        raise ValueError(f"vertical tab in {text!r}")
    names: list[str] = []
    i, n = 0, len(text)
    while i < n and text[i] in _PG_SPACE:
        i += 1
    if i == n:
        return ()
    while True:
        if text[i] == '"':
            buf: list[str] = []
            j = i + 1
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise ValueError(f"unterminated quoted name in {text!r}")
                buf.append(text[j:k])
                if text.startswith('"', k + 1):
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            names.append(_fold("".join(buf), True))
        else:
            j = i
            while j < n and text[j] != "," and text[j] not in _PG_SPACE:
                j += 1
            if j == i:
                raise ValueError(f"empty name in {text!r}")
            names.append(_fold(text[i:j], False))
            i = j
        while i < n and text[i] in _PG_SPACE:
            i += 1
        if i == n:
            return tuple(names)
        if text[i] != ",":
            raise ValueError(f"names must be separated by commas in {text!r}")
        i += 1
        while i < n and text[i] in _PG_SPACE:
            i += 1
        if i == n:
            raise ValueError(f"a name is missing after the last comma in {text!r}")


# PostgreSQL before 16 does not count a vertical tab as whitespace; the older
# reading is the stricter one.
_PG_SPACE = " \t\n\r\f"


def skip_blanks(text: str, at: int = 0) -> int:
    """Where the next token of ``text`` from ``at`` starts, past what PostgreSQL's
    lexer skips: whitespace, ``--`` comments ending at a newline or carriage
    return, and nested ``/* */`` comments (an unterminated one is not skipped)."""
    n = len(text)
    while at < n:
        if text[at] in _PG_SPACE:
            at += 1
        elif text.startswith("--", at):
            at += 2
            while at < n and text[at] not in "\r\n":
                at += 1
        elif text.startswith("/*", at):
            depth, end = 1, at + 2
            while depth:
                if end >= n:
                    return at
                if text.startswith("/*", end):
                    depth, end = depth + 1, end + 2
                elif text.startswith("*/", end):
                    depth, end = depth - 1, end + 2
                else:
                    end += 1
            at = end
        else:
            break
    return at


def _gap_ok(gap: str) -> bool:
    """True if ``gap`` is only what PostgreSQL's lexer skips (:func:`skip_blanks`)."""
    return skip_blanks(gap) == len(gap)


def _lexical_problem(sql: str, tokens: list[Token]) -> str | None:
    position = 0
    depth = brackets = 0
    previous: list[Token] = []
    for token in tokens:
        start = token.start
        if start != position:
            gap = sql[position:start]
            if gap != " " and not _gap_ok(gap):
                return "text between tokens that PostgreSQL would read differently"
        position = token.end + 1
        kind = token.token_type
        if kind is _L_PAREN or kind is _L_BRACKET:
            depth += 1
            if depth > MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels"
            if kind is _L_BRACKET:
                brackets += 1
                if brackets > MAX_BRACKET_DEPTH:
                    return f"brackets nested deeper than {MAX_BRACKET_DEPTH}"
        elif kind is _R_PAREN or kind is _R_BRACKET:
            depth = max(depth - 1, 0)
            if kind is _R_BRACKET:
                brackets = max(brackets - 1, 0)
        elif kind is _VAR and token.text.upper() == "UESCAPE":
            return "UESCAPE is not supported"
        elif kind is _IDENTIFIER and len(previous) == 2:
            u, amp = previous
            if (
                amp.token_type is _AMP
                and amp.end + 1 == start
                and u.end + 1 == amp.start
                and u.text in ("U", "u")
            ):
                # U&"..." is one Unicode-escaped identifier to PostgreSQL and an
                # operator between two names to sqlglot.
                return 'Unicode-escaped identifiers (U&"...") are not supported'
        previous = [*previous[-1:], token]
    tail = sql[position:]
    if tail and not _gap_ok(tail):
        return "text after the last token that PostgreSQL would read differently"
    return None


def statement_ends(sql: str) -> list[int] | None:
    """Where each statement of ``sql`` ends (the offset after its last token), as
    :func:`analyze` splits them; None when the text is not one the analysis reads
    (:func:`_readable_tokens`)."""
    tokens = _readable_tokens(sql)
    return None if tokens is None else [chunk[-1].end + 1 for chunk in _split(tokens)]


def _split(tokens: list[Token]) -> Iterator[list[Token]]:
    chunk: list[Token] = []
    depth = 0
    for token in tokens:
        kind = token.token_type
        if kind is _SEMICOLON and depth == 0:
            if chunk:
                yield chunk
            chunk = []
            continue
        if kind is _L_PAREN:
            depth += 1
        elif kind is _R_PAREN:
            depth = max(depth - 1, 0)
        chunk.append(token)
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------
# Token helpers

_NAME_TOKENS = frozenset({TokenType.VAR, TokenType.IDENTIFIER})
_STRING_TOKENS = frozenset(
    {
        TokenType.STRING,
        TokenType.HEREDOC_STRING,
        TokenType.BYTE_STRING,
        TokenType.NATIONAL_STRING,
        TokenType.UNICODE_STRING,
    }
)
# Tokens whose text is a value, not a keyword or name, even when it starts with
# a letter (X'FF' has the text FF).
_NOT_WORDS = frozenset(
    {t for t in TokenType if t.name.endswith("STRING")}
    | {TokenType.IDENTIFIER, TokenType.NUMBER, TokenType.PARAMETER}
)
# Enum attribute lookups are slow in hot loops.
_L_PAREN = TokenType.L_PAREN
_R_PAREN = TokenType.R_PAREN
_L_BRACKET = TokenType.L_BRACKET
_R_BRACKET = TokenType.R_BRACKET
_SEMICOLON = TokenType.SEMICOLON
_DOT = TokenType.DOT
_VAR = TokenType.VAR
_IDENTIFIER = TokenType.IDENTIFIER
_AMP = TokenType.AMP
_EXECUTE = TokenType.EXECUTE
_DML_TOKENS = frozenset({TokenType.INSERT, TokenType.UPDATE, TokenType.DELETE, TokenType.MERGE})


def _is_word(token: Token) -> bool:
    """An unquoted keyword or name (sqlglot gives keywords their own token types)."""
    if token.token_type in _NOT_WORDS:
        return False
    first = token.text[:1]
    return first.isalpha() or first == "_"


def _is_name(token: Token) -> bool:
    return token.token_type is _IDENTIFIER or _is_word(token)


def _kw(token: Token | None, *words: str) -> bool:
    return token is not None and token.text.upper() in words and _is_word(token)


def _ident(token: Token) -> str:
    return _fold(token.text, token.token_type is TokenType.IDENTIFIER)


class _Tokens:
    """A cursor over one statement's tokens."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self, ahead: int = 0) -> Token | None:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def at_end(self) -> bool:
        return self.i >= len(self.tokens)

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise _Unknown("statement ends too early")
        self.i += 1
        return token

    def accept(self, *words: str) -> Token | None:
        token = self.peek()
        if _kw(token, *words):
            self.i += 1
            return token
        return None

    def accept_seq(self, *words: str) -> bool:
        for k, word in enumerate(words):
            if not _kw(self.peek(k), word):
                return False
        self.i += len(words)
        return True

    def expect(self, *words: str) -> Token:
        token = self.accept(*words)
        if token is None:
            raise _Unknown(f"expected {' or '.join(words)}")
        return token

    def next_is(self, *kinds: TokenType) -> bool:
        token = self.peek()
        return token is not None and token.token_type in kinds

    def accept_type(self, kind: TokenType) -> Token | None:
        token = self.peek()
        if token is not None and token.token_type is kind:
            self.i += 1
            return token
        return None

    def name(self) -> Name:
        """A possibly qualified name."""
        token = self.take()
        if not _is_name(token):
            raise _Unknown(f"expected a name, found {token.text!r}")
        parts = [_ident(token)]
        while self.accept_type(_DOT) is not None:
            token = self.take()
            if not _is_name(token):
                raise _Unknown(f"expected a name, found {token.text!r}")
            parts.append(_ident(token))
        return Name(tuple(parts))

    def skip_parens(self) -> None:
        """Skip one balanced parenthesised group starting at the cursor."""
        if self.accept_type(TokenType.L_PAREN) is None:
            raise _Unknown("expected (")
        depth = 1
        while depth:
            token = self.take()
            if token.token_type is TokenType.L_PAREN:
                depth += 1
            elif token.token_type is TokenType.R_PAREN:
                depth -= 1

    def rest(self) -> list[Token]:
        return self.tokens[self.i :]


# ---------------------------------------------------------------------------
# Statement analysis


_SELECTS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
_PREPARABLE = _SELECTS | {"INSERT", "UPDATE", "DELETE", "MERGE"}
_EXPLAINABLE = _PREPARABLE | {"DECLARE", "CREATE", "REFRESH", "EXECUTE"}
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


def _qualified_at(tokens: list[Token], i: int) -> Name:
    parts = [_ident(tokens[i])]
    j = i
    while j >= 2 and tokens[j - 1].token_type is TokenType.DOT and _is_name(tokens[j - 2]):
        parts.insert(0, _ident(tokens[j - 2]))
        j -= 2
    return Name(tuple(parts))


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


# ---------------------------------------------------------------------------
# Facts from a sqlglot tree


class _Pred(Enum):
    """What a WHERE predicate is, for every row of the table it filters."""

    TRUE = "true"  # holds for every row
    FALSE = "false"  # holds for none
    NULL = "null"  # null for every row: holds for none
    MAYBE = "maybe"  # the same for every row, value not known here
    ROW = "row"  # depends on the row


_MAX_PRED_DEPTH = 200


class _Role(Enum):
    OTHER = 0
    TABLE = 1
    FUNC = 2
    IDENT = 3
    DML = 4
    LOCK = 5
    INTO = 6
    CTE = 7


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
        analyzer: _Analyzer,
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
        this = table.this
        if not isinstance(this, exp.Identifier):
            return ()  # a table function: its call is reported as a function
        parts = [
            _fold(part.this, bool(part.quoted))
            for part in (table.args.get("catalog"), table.args.get("db"), this)
            if isinstance(part, exp.Identifier)
        ]
        if len(parts) == 1 and parts[0] in self.cte_names:
            return ()
        return self.analyzer.resolve(Name(tuple(parts)))

    def writes(self) -> tuple[Name, ...]:
        return self._names(self.targets)

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


def _add_table(targets: list[exp.Table], node: Any) -> None:
    if isinstance(node, exp.Schema):
        node = node.this
    if isinstance(node, exp.Table):
        targets.append(node)


def _restricts(value: _Pred) -> bool:
    return value in (_Pred.ROW, _Pred.FALSE, _Pred.NULL)


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


def _predicate(node: exp.Expr, outer: frozenset[str], depth: int) -> _Pred:
    """Abstract evaluation of a WHERE condition over the rows it filters."""
    if depth > _MAX_PRED_DEPTH:
        return _Pred.MAYBE
    if isinstance(node, exp.Paren):
        return _predicate(node.this, outer, depth + 1)
    if isinstance(node, (exp.And, exp.Or)):
        operands = _flatten(node, type(node))
        values = [_predicate(o, outer, depth + 1) for o in operands]
        return _and(values) if isinstance(node, exp.And) else _or(values, operands)
    if isinstance(node, exp.Not):
        inner = _predicate(node.this, outer, depth + 1)
        return {_Pred.TRUE: _Pred.FALSE, _Pred.FALSE: _Pred.TRUE}.get(inner, inner)
    if isinstance(node, exp.Boolean):
        return _Pred.TRUE if node.this else _Pred.FALSE
    if isinstance(node, exp.Null):
        return _Pred.NULL
    if _row_dependent(node, outer):
        return _Pred.TRUE if _self_comparison(node) else _Pred.ROW
    constant = _constant_truth(node)
    return _Pred.MAYBE if constant is None else constant


def _flatten(node: exp.Expr, kind: type[exp.Expr]) -> list[exp.Expr]:
    out: list[exp.Expr] = []
    stack = [node]
    while stack:
        current = stack.pop()
        while isinstance(current, exp.Paren) and isinstance(current.this, kind):
            current = current.this
        if isinstance(current, kind):
            stack.append(current.expression)
            stack.append(current.this)
        else:
            out.append(current)
    return out


def _and(values: list[_Pred]) -> _Pred:
    if _Pred.FALSE in values:
        return _Pred.FALSE
    if _Pred.ROW in values:
        return _Pred.ROW
    if _Pred.NULL in values:
        return _Pred.NULL
    if _Pred.MAYBE in values:
        return _Pred.MAYBE
    return _Pred.TRUE


def _or(values: list[_Pred], operands: list[exp.Expr]) -> _Pred:
    if _Pred.TRUE in values:
        return _Pred.TRUE
    if _Pred.MAYBE in values:
        return _Pred.MAYBE
    if _complementary(operands):
        return _Pred.TRUE
    if _Pred.ROW in values:
        return _Pred.ROW
    if _Pred.NULL in values:
        return _Pred.NULL
    return _Pred.FALSE


def _complementary(operands: list[exp.Expr]) -> bool:
    """``p OR NOT p``, ``x IS NULL OR x IS NOT NULL``, ``x > 5 OR x <= 5``: every
    row, give or take NULLs."""
    seen: dict[Any, bool] = {}
    for operand in operands:
        key, positive = _polarity(operand)
        if seen.get(key, positive) is not positive:
            return True
        seen[key] = positive
    return False


# A comparison and its negation share a key: = and <>, > and <=, < and >=.
_OPPOSITES: dict[type[exp.Expr], tuple[str, bool]] = {
    exp.EQ: ("eq", True),
    exp.NEQ: ("eq", False),
    exp.GT: ("gt", True),
    exp.LTE: ("gt", False),
    exp.LT: ("lt", True),
    exp.GTE: ("lt", False),
}


def _polarity(node: exp.Expr) -> tuple[Any, bool]:
    positive = True
    node = _strip_paren(node)
    while isinstance(node, exp.Not):
        positive = not positive
        node = _strip_paren(node.this)
    if isinstance(node, exp.Is):
        negate = bool(node.args.get("negate"))
        return ("is", node.this, node.expression), positive != negate
    opposite = _OPPOSITES.get(type(node))
    if opposite is not None:
        key, sign = opposite
        return (key, node.this, node.expression), positive == sign
    return node, positive


def _strip_paren(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


_COMPARISONS: dict[type[exp.Expr], str] = {
    exp.EQ: "=",
    exp.NEQ: "<>",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.NullSafeEQ: "=",
    exp.NullSafeNEQ: "<>",
}


def _literal_value(node: exp.Expr) -> tuple[str, Any] | None:
    node = _strip_paren(node)
    if isinstance(node, exp.Cast) and isinstance(_strip_paren(node.this), exp.Literal):
        return None
    if type(node) is exp.Literal:
        if node.is_string:
            return ("str", str(node.this))
        try:
            return ("num", float(str(node.this)))
        except ValueError:
            return None
    if isinstance(node, exp.Neg):
        inner = _literal_value(node.this)
        if inner is not None and inner[0] == "num":
            return ("num", -inner[1])
    if isinstance(node, exp.Boolean):
        return ("bool", bool(node.this))
    return None


def _constant_truth(node: exp.Expr) -> _Pred | None:
    op = _COMPARISONS.get(type(node))
    if op is None:
        return None
    left = _literal_value(node.this)
    right = _literal_value(node.expression)
    if left is None or right is None or left[0] != right[0]:
        return None
    a, b = left[1], right[1]
    if op in ("=", "<>"):
        return _Pred.TRUE if (a == b) == (op == "=") else _Pred.FALSE
    if left[0] != "num":
        return None  # string ordering depends on the collation
    result = {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]
    return _Pred.TRUE if result else _Pred.FALSE


def _row_dependent(node: exp.Expr, outer: frozenset[str]) -> bool:
    """Whether ``node`` refers to the rows being changed.  Inside a subquery, a
    column counts when it is unqualified (it may be the outer row's) or qualified
    with one of the ``outer`` names."""
    stack: list[tuple[exp.Expr, bool]] = [(node, False)]
    while stack:
        current, nested = stack.pop()
        if isinstance(current, exp.Column):
            if not isinstance(current.this, exp.Identifier):
                continue
            qualifier = current.args.get("table")
            if not nested or not isinstance(qualifier, exp.Identifier):
                return True
            if _fold(qualifier.this, bool(qualifier.quoted)) in outer:
                return True
            continue
        inside = nested or isinstance(current, (exp.Subquery, exp.Query))
        stack.extend((child, inside) for child in current.iter_expressions())
    return False


def _self_comparison(node: exp.Expr) -> bool:
    if isinstance(node, (exp.EQ, exp.GTE, exp.LTE, exp.NullSafeEQ)):
        return _strip_paren(node.this) == _strip_paren(node.expression)
    if isinstance(node, (exp.Like, exp.ILike)):
        pattern = _strip_paren(node.expression)
        return (
            type(pattern) is exp.Literal and pattern.is_string and set(str(pattern.this)) == {"%"}
        )
    return False


# ---------------------------------------------------------------------------
# Dispatch by leading keyword

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


# ---------------------------------------------------------------------------
# Lineage of result columns

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
