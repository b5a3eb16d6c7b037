""":func:`analyze`: the analysis behind two bounded caches.

Results are cached by (text, search_path, limits, parameters) in a bounded LRU
(texts up to 16 KiB, 4096 entries, 8 M characters in all) so a statement the
gateway has already seen costs a dictionary lookup.  A single plain read is
cached by its *shape* instead, its text with the numeric literals taken out, so
``SELECT ... WHERE id = 1`` and ``... WHERE id = 2`` share one analysis (see
``_shape`` and ``_ShapeTemplate``).  Only deterministic results are kept: an
analysis that stopped at its CPU budget or whose worker failed may be fine the
next time.

Deciding from the shape.  An analysis read from a shape carries it
(``Analysis.shape``, with the options it was read under), and what is decided
from the analysis alone is kept by that key, so the texts of one shape are
decided once: the guard's guardrail and pinned-limit decisions
(``statements.StatementGuard._guardrails``), masking's check before execution
for statements that read no masked columns
(``masking_relay.pre_execution_check``) and the masking plan of a result
(``MaskingHooks._plan``).  Where a literal decides meaning, the text stays
exact, because only plain decimal numbers are ever taken out of a shape:

* setting names and values (``SET``, ``set_config('x', ...)``), functions
  that take SQL or object names as text (``query_to_xml('...')``,
  ``pg_read_file('...')``), ``'...'::regclass``-style casts, COPY and its
  options: strings stay verbatim, and only single plain reads are shaped
  (no settings, features, COPY, nested or prepared statements);
* writes: their WHERE folds constants (``WHERE 2 < 1`` restricts every row
  away), so they are never shaped; in a read, equal and different numbers stay
  apart (``1 < 2`` is not ``7 < 7``);
* ``ORDER BY 2`` names a column by its position: masking's check reads the text
  of every statement that reads masked columns (inference, computed uses) and
  keeps no decision by shape for it; a result plan that read the text's
  lineage is kept by the exact text;
* anything the simple lexer could read differently from PostgreSQL
  (backslashes, dollar quoting, block comments, ``U&``) has no shape.

``tests/server/gateway/test_statements_shapes.py`` holds the cached path to a
fresh, exact analysis as an attack, for the analysis tables and for generated
reads with numbers where a value could matter (constants compared, ordinals,
function arguments, casts to OID types, LIMIT, advisory locks), in plain and
masked sessions; ``test_sqlcheck.py`` and ``test_masking_lineage_relay.py`` do
the same for the analysis itself and for result plans.

:func:`analysis_cached` and :func:`remember` are the two halves of
:func:`analyze` for callers that run :func:`analyze_uncached` elsewhere (the
analysis worker processes); :func:`cache_clear` empties both caches.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from server.gateway.sqlcheck.budgets import (
    _CACHE_MAX_KEY,
    DEFAULT_MAX_LEN,
    DEFAULT_TIME_BUDGET,
    MAX_TEXT,
)
from server.gateway.sqlcheck.classify import analyze_uncached
from server.gateway.sqlcheck.model import Analysis, Statement, StatementClass

_CACHE_ENTRIES = 4096
# object.__new__ for the two frozen dataclasses a filled template copies.
_new_statement = object.__new__
_new_analysis = object.__new__
_V = TypeVar("_V")


_CACHE_CHARS = 8_000_000


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
    key = (sql, search_path, max_len, params)
    last = _last
    if last[0] == sql:
        # The same text again, as the guard, masking's check and the masking
        # hooks each ask for the statement a message carries (under two search
        # paths): one answer each.
        known = last[1].get(key)
        if known is not None:
            return known
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    if len(sql) > _CACHE_MAX_KEY:
        return None
    shape = _shape(sql)
    if shape is None:
        return None
    template = _SHAPES.get((shape, search_path, max_len, params))
    if template is None:
        return None
    filled = template.fill(sql)
    _remember_last(key, filled)
    return filled


def _remember_last(key: tuple[str, tuple[str, ...], int, object], analysis: Analysis) -> None:
    global _last
    last = _last
    if last[0] == key[0] and len(last[1]) < 4:
        last[1][key] = analysis
    else:
        # A new tuple, replaced whole: a thread that reads it sees a text with
        # its own answers (a dict that only ever gains right answers).
        _last = (key[0], {key: analysis})


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
    key = (shape, search_path, max_len, params)
    template = _ShapeTemplate.of(sql, analysis, key) if shape is not None else None
    if template is not None:
        # One entry serves every literal variant; the exact cache stays for
        # texts whose literals may matter.  The caller's analysis is of the
        # shape too (it was just read, nobody else holds it yet).
        object.__setattr__(analysis, "shape", key)
        _SHAPES.put(key, template, len(sql))
    else:
        _CACHE.put((sql, search_path, max_len, params), analysis, len(sql))


def cache_clear() -> None:
    _CACHE.clear()
    _SHAPES.clear()
    global _last
    _last = (None, {})


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
    global _last_shape
    last = _last_shape
    if last[0] == sql:
        return last[1]  # the same text under another search_path, say
    shape = _shape_of(sql)
    _last_shape = (sql, shape)
    return shape


_last_shape: tuple[str | None, str | None] = (None, None)


def _shape_of(sql: str) -> str | None:
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
    key: tuple[object, ...]  # the shape with its options: the filled analyses' ``shape``

    @classmethod
    def of(cls, sql: str, analysis: Analysis, key: tuple[object, ...]) -> _ShapeTemplate | None:
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
        return cls(analysis, start, len(sql) - end, key)

    def fill(self, sql: str) -> Analysis:
        (st,) = self.analysis.statements
        # A copy with one field changed, made the cheap way: copy.copy and
        # dataclasses.replace cost more than the whole lookup did.
        filled = _new_statement(Statement)
        filled.__dict__.update(st.__dict__)
        filled.__dict__["text"] = sql[self.start : len(sql) - self.tail]
        out = _new_analysis(Analysis)
        out.__dict__.update(statements=(filled,), over_budget=False, failed=None, shape=self.key)
        return out


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
# The last text answered from a shape, with its answers by their whole keys.
_last: tuple[str | None, dict[tuple[object, ...], Analysis]] = (None, {})
