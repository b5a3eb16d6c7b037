"""Provision the demo database on a :class:`~server.pgcluster.LocalCluster`.

What a DBA would set up by hand on a real target, done here for dev mode and
tests, idempotently (safe to run on every start):

* the database (``demo``), reachable only by the admin role and session roles
  (CONNECT and TEMP revoked from PUBLIC);
* ``dbaccess_managed``: the NOLOGIN marker role every session role belongs to;
  the broker only ever alters or drops members of it;
* the grant roles ``demo_read`` (USAGE on ``public``, SELECT on the tables) and
  ``demo_write`` (``demo_read`` plus INSERT/UPDATE/DELETE, sequence use and
  CREATE on ``public``, so that a reviewed ``CREATE TABLE`` can run);
* ``dbaccess_admin``: LOGIN, CREATEROLE, not superuser, a member of
  ``pg_signal_backend`` (to terminate session backends) and holding ADMIN
  OPTION on the marker and grant roles: just enough to mint and revoke session
  roles. Its password is random, kept 0600 in the cluster directory so that a
  second run returns the same DSN, and sent to the server as a SCRAM verifier;
* the tables and rows of ``schema.sql``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from server.credentials.scram import scram_sha256_verifier
from server.pgcluster import LocalCluster
from server.tlsutil import write_private

MARKER_ROLE = "dbaccess_managed"
ADMIN_ROLE = "dbaccess_admin"
READ_ROLE = "demo_read"
WRITE_ROLE = "demo_write"
_ADMIN_CREDENTIAL_FILE = "dbaccess_admin.password"


@dataclass(frozen=True)
class DemoTarget:
    """Where the demo database is, and the admin DSN (with its password) the issuer uses."""

    admin_dsn: str = field(repr=False)
    database: str
    host: str
    port: int


def write_admin_dsn_file(path: Path, dsn: str) -> None:
    """Store the admin DSN for the broker's configuration, 0600 (it holds a password)."""
    write_private(Path(path), dsn + "\n")


def _admin_password(cluster: LocalCluster) -> str:
    path = cluster.data_dir / _ADMIN_CREDENTIAL_FILE
    try:
        saved = path.read_text().strip()
    except OSError:
        saved = ""
    if saved:
        return saved
    password = secrets.token_urlsafe(24)
    write_private(path, password + "\n")
    return password


def _role_exists(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    return row is not None


def provision_demo(cluster: LocalCluster, *, database: str = "demo") -> DemoTarget:
    """Create (or bring up to date) the demo database, its roles and its data."""
    password = _admin_password(cluster)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        for role in (MARKER_ROLE, READ_ROLE, WRITE_ROLE):
            if not _role_exists(conn, role):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        admin = sql.Identifier(ADMIN_ROLE)
        verb = sql.SQL("ALTER" if _role_exists(conn, ADMIN_ROLE) else "CREATE")
        conn.execute(
            sql.SQL(
                "{} ROLE {} WITH LOGIN INHERIT CREATEROLE NOSUPERUSER NOCREATEDB"
                " NOREPLICATION NOBYPASSRLS PASSWORD {}"
            ).format(verb, admin, sql.Literal(scram_sha256_verifier(password)))
        )
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(READ_ROLE), sql.Identifier(WRITE_ROLE))
        )
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(admin))
        conn.execute(
            sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.SQL(", ").join(sql.Identifier(r) for r in (MARKER_ROLE, READ_ROLE, WRITE_ROLE)),
                admin,
            )
        )
        if (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            is None
        ):
            conn.execute(
                sql.SQL("CREATE DATABASE {} ENCODING 'UTF8'").format(sql.Identifier(database))
            )
        db = sql.Identifier(database)
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        conn.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                db, sql.Identifier(MARKER_ROLE)
            )
        )
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, admin))

    schema = (resources.files("server.demo") / "schema.sql").read_text(encoding="utf-8")
    with psycopg.connect(cluster.dsn(dbname=database)) as conn:
        # No parameters: psycopg sends the script as one simple query, in one transaction.
        conn.execute(schema.encode("utf-8"))
        conn.commit()

    return DemoTarget(
        admin_dsn=cluster.dsn(user=ADMIN_ROLE, password=password, dbname=database),
        database=database,
        host=cluster.host,
        port=cluster.port,
    )
