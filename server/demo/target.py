"""Prepare an existing database to be the dev broker's ``demo`` target.

``dbaccess-server dev --target-dsn DSN`` registers a database the user already
has.  The demo policy grants session roles ``demo_read`` and ``demo_write``
and every session role joins the marker role ``dbaccess_managed``; this makes
sure those roles exist (creating them needs CREATEROLE, and granting table
privileges needs the tables' owner).  Roles that already exist are left as
they are, so a database provisioned by ``provision_demo`` passes untouched.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from server.demo.provision import MARKER_ROLE, READ_ROLE, WRITE_ROLE
from server.errors import Unavailable


def prepare_target(admin_dsn: str) -> str:
    """Ensure the marker and grant roles exist; returns the DSN to use as admin DSN."""
    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
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
    return admin_dsn


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
