"""PostgreSQL names as PostgreSQL reads them, and where an unqualified one resolves.

:class:`Name` is a schema-qualified name with unquoted parts folded to lower case
(ASCII letters only, truncated to 63 bytes, as PostgreSQL does) and quoted parts
exact; ``str()`` renders it back, quoting where needed.  :func:`parse_name` reads
a dotted name as written in SQL or policy.

Unqualified relation names are resolved with the caller's ``search_path`` (the
session's, with ``$user`` replaced by the role name): a name is reported once
for each schema of the path it may be found in, since which one holds it is
known only to the database (:func:`relation_schemas`).  :func:`parse_search_path`
reads a ``search_path`` value as PostgreSQL does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PLAIN_IDENT = re.compile(r"(?:[a-z_]|[^\x00-\x7f])(?:[a-z0-9_$]|[^\x00-\x7f])*\Z")
_NAMEDATALEN = 63


# Every column of a relation: a whole-row reference, ``t.*``, an INSERT without a
# column list.
ANY_COLUMN = "*"


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
