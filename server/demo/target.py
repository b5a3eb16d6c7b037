"""Prepare an existing database to be the dev broker's ``demo`` target.

``dbaccess-server dev --target-dsn DSN`` registers a database the user already
has.  The demo policy grants session roles ``demo_read`` and ``demo_write``
and every session role joins the marker role ``dbaccess_managed``; this makes
sure those roles exist (creating them needs CREATEROLE, and granting table
privileges needs the tables' owner).  Roles that already exist are left as
they are, so a database provisioned by ``provision_demo`` passes untouched.

Sessions go to the database the DSN names (asked of the server, so libpq's
defaults count): the dev mode writes it into the policy it copies
(:func:`demo_policy_text`), and :func:`dev_policy` decides what happens to a
policy file an earlier run left in the data directory.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from server.demo.provision import MARKER_ROLE, READ_ROLE, WRITE_ROLE
from server.errors import Unavailable

DEMO_DATABASE = "demo"
_DATABASE_LINE = "    database: demo\n"
_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_NAMED_DATABASE = re.compile(r"^    database: (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class PreparedTarget:
    admin_dsn: str
    database: str


def demo_policy_text(database: str = DEMO_DATABASE) -> str:
    """The demo policy, with sessions going to ``database``."""
    template = (resources.files("server.demo") / "policy.yaml").read_text(encoding="utf-8")
    assert template.count(_DATABASE_LINE) == 1
    # A YAML double-quoted scalar reads JSON's escapes the same way.
    value = database if _PLAIN_NAME.match(database) else json.dumps(database)
    return template.replace(_DATABASE_LINE, f"    database: {value}\n")


@dataclass(frozen=True)
class PolicyPlan:
    """What the dev mode does with its policy file: write ``text`` (when set) and
    say ``note``; or refuse to start with ``problem``."""

    text: str | None = None
    note: str | None = None
    problem: str | None = None


def dev_policy(existing: str | None, database: str, source: str = "policy.yaml") -> PolicyPlan:
    """The dev mode's policy for sessions on ``database``, given the file's current text.

    A file the dev mode wrote (the demo policy, unedited) follows the target; a
    file someone edited is kept, unless its demo target names another database
    than the one the broker was started on, which would fail every session.
    """
    wanted = demo_policy_text(database)
    if existing is None:
        return PolicyPlan(text=wanted)
    if existing == wanted:
        return PolicyPlan()
    named = _NAMED_DATABASE.search(existing)
    if named is not None:
        was = named.group(1).strip()
        with contextlib.suppress(ValueError):
            was = str(json.loads(was)) if was.startswith('"') else was
        if existing == demo_policy_text(was):
            return PolicyPlan(
                text=wanted, note=f"the demo policy now sends sessions to database {database!r}"
            )
    from server.policy import PolicyError, parse_policy

    try:
        demo = parse_policy(existing, source).targets.get("demo")
    except PolicyError:
        return PolicyPlan()  # the broker reports it, with file, line and key
    if demo is None or demo.database == database:
        return PolicyPlan()
    return PolicyPlan(
        problem=f"{source}: target 'demo' names database {demo.database!r}, "
        f"but --target-dsn names database {database!r}",
    )


def prepare_target(admin_dsn: str) -> PreparedTarget:
    """Ensure the marker and grant roles exist; returns the admin DSN and its database."""
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT current_database()").fetchone()
            assert row is not None
            database = str(row[0])
            existing = {
                r[0]
                for r in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                    ([MARKER_ROLE, READ_ROLE, WRITE_ROLE],),
                )
            }
            if MARKER_ROLE not in existing:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(MARKER_ROLE)))
            if READ_ROLE not in existing:
                read = sql.Identifier(READ_ROLE)
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(read))
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(read))
                conn.execute(
                    sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(read)
                )
            if WRITE_ROLE not in existing:
                write = sql.Identifier(WRITE_ROLE)
                conn.execute(
                    sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE {}").format(
                        write, sql.Identifier(READ_ROLE)
                    )
                )
                conn.execute(
                    sql.SQL(
                        "GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
                    ).format(write)
                )
                conn.execute(
                    sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(write)
                )
            if existing != {MARKER_ROLE, READ_ROLE, WRITE_ROLE}:
                # The issuer hands out only roles the admin holds WITH ADMIN OPTION.
                conn.execute(
                    sql.SQL("GRANT {} TO CURRENT_USER WITH ADMIN OPTION").format(
                        sql.SQL(", ").join(
                            sql.Identifier(r) for r in (MARKER_ROLE, READ_ROLE, WRITE_ROLE)
                        )
                    )
                )
    except psycopg.OperationalError as exc:
        raise Unavailable(
            f"cannot connect to the target given with --target-dsn: {_first_line(exc)}",
            hint="check host, port, user and password of the DSN",
        ) from None
    except psycopg.Error as exc:
        raise Unavailable(
            f"cannot prepare the target's roles: {_first_line(exc)}",
            hint="the DSN's user needs CREATEROLE and ownership of the tables it grants on",
        ) from None
    return PreparedTarget(admin_dsn=admin_dsn, database=database)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
