"""The analysis as data: :class:`Statement`, :class:`Analysis` and their vocabularies.

A :class:`Statement` says what one statement does (class, command, relations read
and written, calls, settings, features, COPY endpoint); an :class:`Analysis`
holds one per statement of the input, and whether the reading ran out of budget
or could not finish.  Everything here is frozen, picklable (the analysis workers
send it back) and free of sqlglot.

A statement that runs another is reported with the other in ``nested`` and
:class:`Execution` saying when it runs: a data-modifying CTE, the statement under
EXPLAIN ANALYZE, the query of COPY or CREATE TABLE AS run NOW; a PREPARE body runs
LATER (at each EXECUTE); under a plain EXPLAIN it runs NEVER.  ``EXECUTE name``
reports the name in ``prepared_name``: what it runs is whatever the session
prepared under that name, which only the caller knows.

``_Unknown`` is what the readers raise for anything not understood; the driver
turns it into an UNKNOWN statement with the reason (``_unknown``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import cached_property

from server.gateway.sqlcheck.budgets import MAX_TEXT
from server.gateway.sqlcheck.names import Name


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
    # The columns it sets, with the relation (one of ``writes``): see facts.py.
    columns_written: tuple[tuple[Name, str], ...] = ()
    # The columns it decides rows by (WHERE, JOIN, ORDER BY, ...), with their
    # relation where the text says which: see facts.py.
    columns_filtered: tuple[tuple[Name | None, str], ...] = ()
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
    # For an analysis that holds for every text of one literal-insensitive shape
    # (``sqlcheck.cache``): that shape with the options it was read under.  Every
    # text of the shape has this analysis but for the statement's ``text``, so
    # what is decided from the analysis alone may be kept by this key, however
    # many literal variants come.  None: the analysis is of its exact text only.
    shape: tuple[object, ...] | None = field(default=None, compare=False, repr=False)

    @cached_property
    def unknown(self) -> bool:
        # Kept: it is asked for every result of a Query, whose statements may be
        # thousands (asking anew each time would cost their square).
        return any(s.kind is StatementClass.UNKNOWN for s in self.walk_all())

    def walk_all(self) -> Iterator[Statement]:
        for top in self.statements:
            for statement, _ in top.walk():
                yield statement


@dataclass(frozen=True)
class _Options:
    schemas: tuple[str, ...]  # where an unqualified relation may be, in search order
    catalog_schemas: tuple[str, ...]  # the same for a pg_* name
    params: tuple[str | None, ...] | None


class _Unknown(Exception):
    """Raised inside the analysis for anything not understood; becomes UNKNOWN."""


def _text(s: str) -> str:
    return s if len(s) <= MAX_TEXT else s[: MAX_TEXT - 1] + "\u2026"


def _unknown(index: int, text: str, reason: str) -> Statement:
    return Statement(
        index=index, text=_text(text), kind=StatementClass.UNKNOWN, command="", reason=reason
    )
