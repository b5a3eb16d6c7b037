"""The session's search_path, which the analysis resolves unqualified names with.

The gateway fixes it at login and keeps it: the upstream StartupMessage always
carries ``search_path`` -- the client's startup parameter, or PostgreSQL's own
default ``"$user", public`` -- so a default set on the database or the role
(``ALTER DATABASE ... SET search_path``), which the gateway cannot see, never
applies.  Changing it later is refused by the guardrails (``search_path`` is a
pinned setting, like ``client_encoding`` and ``standard_conforming_strings``).

Why pinned rather than followed: a change by ``SET LOCAL`` or ``set_config(...,
true)`` ends with the transaction, one inside a transaction that rolls back (or
a savepoint) is undone, ``set_config`` in a query may run for some rows and not
others, and a pipelined statement is analysed before the server has run the
change sent ahead of it.  Following all of that exactly means replaying the
server's transaction state in the gateway; refusing the change costs a client
one startup parameter and leaves nothing to get wrong.

``session_search_path`` gives the path as the analysis wants it: the names as
PostgreSQL reads them, ``$user`` replaced by the session role's name.
``catalog_first`` says whether ``pg_catalog`` is searched before every other
schema, which unqualified entries of a function allow-list rely on.
"""

from __future__ import annotations

from server.gateway.sqlcheck import parse_search_path

# PostgreSQL's built-in default (boot_val of search_path).
DEFAULT_SEARCH_PATH = '"$user", public'


def session_search_path(value: str | None, role: str) -> tuple[str, ...]:
    """The schemas of a ``search_path`` value (None: the default), with ``$user``
    replaced by ``role``; raises ValueError where PostgreSQL would refuse it."""
    names = parse_search_path(DEFAULT_SEARCH_PATH if value is None else value)
    return tuple(role if name == "$user" else name for name in names)


def catalog_first(path: tuple[str, ...]) -> bool:
    """Whether an unqualified function name is looked up in ``pg_catalog`` before
    any other schema: it is unless the path names it after another schema
    (``pg_temp`` aside, which PostgreSQL never searches for functions, and an
    empty name, which no schema has)."""
    if "pg_catalog" not in path:
        return True
    before = path[: path.index("pg_catalog")]
    return all(name in ("pg_temp", "") for name in before)
