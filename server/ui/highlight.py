"""SQL highlighted for the detail page, as escaped HTML that shows the exact text.

A small lexer of PostgreSQL's surface (comments, quoted strings and names,
dollar quotes, numbers, words) wraps each piece in a ``<span>`` with a class;
everything else passes through escaped.  Joining the pieces' text gives back
the input, character for character: a reviewer sees exactly what they approve
(what is hashed); a character that would show nothing or reorder the text
around it (a bidi control, a zero-width character: Trojan Source) is shown as
its code point instead (``common.text``).  Nothing here decides anything, so a lexing shortcut
only changes a colour.
"""

from __future__ import annotations

import re
import unicodedata

from markupsafe import Markup, escape

from common.text import code_point, invisible

_KEYWORD_TEXT = """
abort all alter analyze and as asc begin between by call case cascade cast check
cluster comment commit constraint copy create cross current database default
delete desc distinct do drop else end except exists explain false fetch for
foreign from full function grant group having if ilike in index inner insert
intersect into is join key lateral left like limit lock merge not null nulls
offset on only or order outer over partition policy primary procedure references
refresh release replace reset returning revoke right role rollback savepoint
schema select sequence set show table temp temporary then to trigger true
truncate union unique update using vacuum values view when where window with
"""
KEYWORDS = frozenset(_KEYWORD_TEXT.split())
_TOKEN = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>[EeBbXxNn]?'(?:[^']|'')*(?:'|\Z))
  | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$.*?(?:\$(?P=tag)?\$|\Z))
  | (?P<ident>"(?:[^"]|"")*(?:"|\Z))
  | (?P<number>\b\d+(?:\.\d*)?(?:[eE][+-]?\d+)?\b)
  | (?P<param>\$\d+)
  | (?P<word>[A-Za-z_][A-Za-z_0-9$]*)
    """,
    re.VERBOSE | re.DOTALL,
)


def pieces(sql: str) -> list[tuple[str | None, str]]:
    """``(css class or None, text)`` pieces whose texts join to ``sql`` exactly."""
    out: list[tuple[str | None, str]] = []
    at = 0
    for match in _TOKEN.finditer(sql):
        if match.start() > at:
            out.append((None, sql[at : match.start()]))
        kind = match.lastgroup if match.lastgroup != "tag" else "dollar"
        text = match.group()
        if kind == "word":
            kind = "kw" if text.lower() in KEYWORDS else None
        elif kind == "dollar":
            kind = "string"
        out.append((kind, text))
        at = match.end()
    if at < len(sql):
        out.append((None, sql[at:]))
    return out


def _marked(text: str) -> Markup:
    """Escaped ``text`` whose invisible characters are shown as their code points."""
    out = [escape(text)]
    if any(invisible(c) for c in text):
        out = [
            Markup('<span class="sql-invisible" title="{}">{}</span>').format(
                unicodedata.name(c, "unnamed character"), code_point(c)
            )
            if invisible(c)
            else escape(c)
            for c in text
        ]
    return Markup("").join(out)


def highlight(sql: str) -> Markup:
    """The statement as HTML; an invisible character is shown as its code point
    (``U+202E``), so that a reviewer sees every character that runs, and in the
    order it runs."""
    return Markup("").join(
        _marked(text)
        if kind is None
        else Markup('<span class="sql-{}">{}</span>').format(kind, _marked(text))
        for kind, text in pieces(sql)
    )
