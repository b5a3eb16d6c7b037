"""Tokens as PostgreSQL would read them, statements split where the server splits.

**Same tokens as the server.**  The text is tokenized once with sqlglot's
PostgreSQL tokenizer (one per thread: building one costs more than using it),
then every gap between two tokens is re-read with PostgreSQL's own lexical rules
(:func:`skip_blanks`) and must hold nothing but PostgreSQL whitespace and
(nested) comments.  Where the two lexers could disagree on what a token is
(``U&"..."`` identifiers, ``UESCAPE``, NUL bytes, a no-break space or a vertical
tab between tokens), ``_lexical_problem`` names it and the input is UNKNOWN; the
same pass enforces the nesting budgets.  sqlglot's habit of reading everything
after EXPLAIN, CALL, LOCK, FETCH, ... as one string (ended by the next semicolon,
even one inside a literal) is switched off (``_Tokenizer``).  ``_delimiters``
counts a lower bound of the tokens without the tokenizer, so that a text far
over the token budget is refused before the compiled tokenizer holds the
interpreter's lock on it.

**Split where the server splits.**  Statements are separated by semicolons at
parenthesis depth zero (a rule's ``DO (a; b)`` stays one statement): ``_split``,
and :func:`statement_ends` for callers that cut a Query into its statements.

``_readable_tokens`` is the entry of the readers outside the classification
(lineage, uses, :func:`dotted_names`): the tokens, or None when they may not be
trusted.  ``_Tokens`` is the cursor the statement grammars of ``classify`` read
with; ``_kw``, ``_is_word``, ``_ident`` tell keywords, names and values apart.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from itertools import pairwise
from typing import ClassVar

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType

from server.gateway.sqlcheck.budgets import (
    DEFAULT_MAX_LEN,
    MAX_BRACKET_DEPTH,
    MAX_DEPTH,
    MAX_TOKENS,
)
from server.gateway.sqlcheck.model import _Unknown
from server.gateway.sqlcheck.names import _PG_SPACE, Name, _fold

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


def _qualified_at(tokens: list[Token], i: int) -> Name:
    parts = [_ident(tokens[i])]
    j = i
    while j >= 2 and tokens[j - 1].token_type is TokenType.DOT and _is_name(tokens[j - 2]):
        parts.insert(0, _ident(tokens[j - 2]))
        j -= 2
    return Name(tuple(parts))
