"""The ``postgres`` issuer: one short-lived role per session, created in the target itself.

It connects with an admin DSN whose role is deliberately not a superuser:
CREATEROLE, a member of ``pg_signal_backend`` (to terminate session backends)
and holding ADMIN OPTION on the marker role and on the grant roles it may hand
out. Every statement comes from a ``.sql`` file in ``sql/`` beside this module,
composed with :mod:`psycopg.sql` so identifiers are always quoted by
``Identifier`` and values by ``Literal``; nothing is spliced in as text.

issue
    In one transaction: check each grant role (exists, is a NOLOGIN group role,
    is not a session role, was delegated to us with ADMIN OPTION), then
    ``CREATE ROLE … LOGIN … VALID UNTIL <deadline> IN ROLE <marker>, <grants>``
    with a SCRAM verifier computed here, so the plaintext password never
    reaches the server or its logs; of one PBKDF2 round, since the password is
    256 random bits (:mod:`server.credentials.scram`).  Then ``ALTER ROLE … SET`` attaches the
    scope's limits (``statement_timeout``, ``lock_timeout``,
    ``idle_in_transaction_session_timeout``, ``idle_session_timeout``,
    ``temp_file_limit``; :func:`~server.policy.limits.database_settings`) to
    the role, so they apply to every login of it, through the gateway or not.
    ``temp_file_limit`` is superuser-settable only: an admin role that is not
    superuser needs ``GRANT SET ON PARAMETER temp_file_limit TO <admin>``
    (PostgreSQL 15+).  Without it the role is created without that one setting
    (in a savepoint, so the rest stands) and a warning is logged once; the
    session role still cannot change it itself.
    Once each such setting is known to be allowed or not, and without column
    walls, the check is one query and the role's ``CREATE``, mark and settings
    one Query message of several statements (one implicit transaction): two
    round trips, where a transaction block would take four more.

column walls (``masking`` with ``database_grants``)
    A session role has what its grant roles have: it can hold no less than
    they do (PostgreSQL has no deny), so masked columns are withheld from the
    grant roles themselves, before the role is created, in the same
    transaction.  Which columns: the scope's masking rules
    (:meth:`MaskingRules.for_scope`; exempt scopes have none) over the
    database's columns, read with the gateway's catalog queries
    (:func:`~server.gateway.masking.column_walls`).  Which roles: the grants
    and the roles they inherit from that were delegated to us with ADMIN
    OPTION (``wall_roles.sql``).  On each relation with masked columns such a
    role holding table-level SELECT gets ``REVOKE SELECT`` and ``GRANT SELECT
    (clear columns)``; one holding SELECT on masked columns gets them revoked.
    A REVOKE only takes back what its grantor granted, so the admin role must
    be the grantor of these privileges (it holds SELECT on the tables WITH
    GRANT OPTION and granted them to the grant roles).  Last, after CREATE
    ROLE, ``wall_check.sql`` asks PostgreSQL whether the new role can read any
    masked column by any path (another grantor, PUBLIC, a role not delegated
    to us, ``pg_read_all_data``): if so the transaction is rolled back and
    nothing is issued.  Walls stay when sessions end; the broker never gives
    a withheld column back (a DBA does, with GRANT).

revoke
    Refused unless the role is a plain member of the marker role. Then
    ``ALTER ROLE … NOLOGIN`` (committed at once so no new login succeeds),
    ``pg_terminate_backend`` of every backend with the role's OID, polling
    ``pg_stat_activity`` until they are gone (termination is asynchronous),
    and in one transaction (one Query message of several statements, one round
    trip) ``GRANT role TO CURRENT_USER`` (PostgreSQL 15 wants
    membership for what follows), ``revoke_disarm.sql`` (the role's SECURITY
    DEFINER routines become SECURITY INVOKER, its views security_invoker, and
    others lose their privileges on its relations that carry rules: handed to
    the admin role, they would serve others with the admin's rights; tables,
    data, triggers and grants stay as a migration made them), ``REASSIGN
    OWNED``, ``DROP OWNED``,
    ``DROP ROLE``. A last check looks for the role and for backends by OID. If
    backends refuse to die the role is kept (NOLOGIN) so that a retry can still
    find them by OID. A role that does not exist is already revoked.

owners
    A role is marked with whose it is (``mark_roles``: the deployment, the
    replica, the session) on its comment, in the transaction that creates it;
    ``list_managed`` reads the marks back for the reaper, and ``revoke``
    refuses a role marked by another deployment.  Revocations of one role are
    serialised across brokers by an advisory lock on the target, so a second
    one finds the role gone.

admin connections
    Kept in a bounded pool (``psycopg_pool``, ``pool_size`` per target, each
    checked as it is handed out), opened once a first direct connection has
    worked: a target that is down is reported with its own error, and one
    that stops answering later after ``connect_timeout`` (with the error of a
    direct attempt).  ``close`` closes them.

The admin password is never put in an exception: errors are rebuilt from the
server's message with the password scrubbed, and their cause is dropped.

Every statement comes from ``sql/`` except the catalog's two queries, which the
walls share with the gateway (:mod:`server.gateway.catalog`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from server.credentials.base import (
    Credential,
    ManagedRole,
    RevocationResult,
    RoleMark,
    read_role_comment,
    role_comment,
    role_name_for,
    sql_template,
)
from server.credentials.scram import SESSION_ITERATIONS, PasswordStock
from server.errors import (
    Conflict,
    DbaccessError,
    Forbidden,
    InvalidInput,
    Unavailable,
)
from server.gateway.catalog import COLUMNS_SQL, VIEW_SOURCES_SQL, build_snapshot
from server.gateway.masking import MaskingRules, RelationWall, column_walls
from server.policy.limits import SUPERUSER_SETTINGS, database_settings
from server.policy.model import MaskingPolicy, SessionLimits

log = logging.getLogger(__name__)

MARKER_ROLE = "dbaccess_managed"
CONNECTION_LIMIT = 50
# Admin connections kept open per target: issue and revoke each take one, so this
# bounds how many of them run on one target at once (a further one waits for one).
ADMIN_POOL_SIZE = 4
_PASSWORD_BYTES = 32
_TERMINATE_WAIT_SECONDS = 5.0
_POLL_INTERVAL_SECONDS = 0.01
_SESSION_SETTINGS = "SET lock_timeout = '10s'; SET statement_timeout = '60s'"
# Session passwords (random, 256 bits) and their SCRAM verifiers of one round
# (server/credentials/scram.py says why), made ahead of the sessions that take them.
_PASSWORDS = PasswordStock(_PASSWORD_BYTES, iterations=SESSION_ITERATIONS)

Conn = psycopg.Connection[Any]


def _statement(name: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(sql_template(name)).format(**parts)


def _handover(role: sql.Identifier, oid: int) -> sql.Composed:
    """Take over, disarm and hand over what the role owns, then drop it: one Query
    message of several statements, which PostgreSQL runs as one transaction (all of
    them or none, as a transaction block would) in one round trip instead of seven."""
    return sql.SQL(";\n").join(
        [
            _statement("revoke_take_over.sql", role=role),
            _statement("revoke_disarm.sql", oid=sql.Literal(oid)),
            *(
                _statement(name, role=role)
                for name in (
                    "revoke_reassign_owned.sql",
                    "revoke_drop_owned.sql",
                    "revoke_drop_role.sql",
                )
            ),
        ]
    )


_WALL_HINT = (
    "database_grants needs the admin role to be the grantor of the grant roles' SELECT "
    "on tables with masked columns (GRANT SELECT ON t TO <admin> WITH GRANT OPTION, then as "
    "the admin GRANT SELECT ON t TO <grant role>), and no other way to them (PUBLIC, a role "
    "not delegated to the admin, pg_read_all_data)"
)


def _configure(conn: Conn) -> None:
    conn.execute(_SESSION_SETTINGS)


def _identifiers(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


@dataclass(frozen=True)
class _RoleInfo:
    oid: int
    managed: bool
    comment: str | None = None


class PostgresIssuer:
    """Mints and revokes per-session roles in one PostgreSQL database."""

    def __init__(
        self,
        admin_dsn: str,
        *,
        connect_timeout: int = 5,
        marker_role: str = MARKER_ROLE,
        connection_limit: int = CONNECTION_LIMIT,
        login_roles: Sequence[str] = (),
        password_login: bool = True,
        pool_size: int = ADMIN_POOL_SIZE,
    ) -> None:
        try:
            params = conninfo_to_dict(admin_dsn)
        except psycopg.Error:
            # libpq's message quotes the offending part of the string, which may
            # be the password: say only that it is malformed.
            raise InvalidInput("the admin DSN is not a valid libpq connection string") from None
        self._dsn = admin_dsn
        self._secrets = {
            str(v) for k, v in params.items() if k == "password" and v not in (None, "")
        }
        self._secrets |= {quote(s, safe="") for s in self._secrets}
        self._where = "{}@{}:{}/{}".format(
            params.get("user") or "?",
            params.get("host") or "localhost",
            params.get("port") or "5432",
            params.get("dbname") or params.get("user") or "?",
        )
        self.connect_timeout = connect_timeout
        self.marker_role = marker_role
        self.connection_limit = connection_limit
        # Roles that decide how a session logs in (rds_iam) rather than what it may
        # do: joined without the checks grant roles get.
        self.login_roles = tuple(login_roles)
        # False: the role gets no password at all (PASSWORD NULL); something else,
        # such as IAM authentication, must let it log in.
        self.password_login = password_login
        # Superuser-only limits this admin role turned out not to be allowed to set.
        self.unsettable: set[str] = set()
        # And those it turned out to be allowed to set.
        self.settable: set[str] = set()
        # Whose the roles it creates are (None: unmarked, as in a bare issuer).
        self.mark: RoleMark | None = None
        self.pool_size = pool_size
        # Opened after the first direct connection succeeds (see _session).
        self._pool: ConnectionPool[Conn] | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresIssuer({self._where!r})"

    # -- plumbing -----------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _message(self, exc: BaseException) -> str:
        return self._scrub(str(exc).strip())

    def mark_roles(self, mark: RoleMark) -> None:
        """Mark every role issued from now on as ``mark``'s (its comment)."""
        self.mark = mark

    def close(self) -> None:
        """Close the pooled admin connections (a later call connects afresh)."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __del__(self) -> None:
        # Unclosed, the pool would be closed by its own collection, which may run on
        # one of its worker threads (that cannot join itself).
        with contextlib.suppress(Exception):
            self.close()

    def _open_pool(self) -> None:
        with self._pool_lock:
            if self._pool is not None or self._closed:
                return
            self._pool = ConnectionPool(
                self._dsn,
                min_size=1,
                max_size=self.pool_size,
                kwargs={
                    "autocommit": True,
                    "connect_timeout": self.connect_timeout,
                    "application_name": "dbaccess-issuer",
                },
                configure=_configure,
                check=ConnectionPool.check_connection,
                # An idle admin connection past this is closed (down to min_size).
                max_idle=300,
                num_workers=1,
                name=f"dbaccess-issuer {self._where}",
                open=False,
            )
            self._pool.open(wait=False)

    def _connect(self) -> Conn:
        """A new admin connection (its failure is the one the caller is told of)."""
        try:
            conn: Conn = psycopg.connect(
                self._dsn,
                connect_timeout=self.connect_timeout,
                autocommit=True,
                application_name="dbaccess-issuer",
            )
        except psycopg.Error as exc:
            raise Unavailable(
                f"cannot connect to the target database as {self._where}: {self._message(exc)}",
                hint="check that the target is up and the admin DSN is right",
            ) from None
        _configure(conn)
        return conn

    @contextlib.contextmanager
    def _borrowed(self) -> Iterator[Conn]:
        """An admin connection from the pool, health-checked as it is handed out.

        The pool opens once a direct connection has worked, so a target that is
        down or refuses the admin role is reported with its own error rather than
        after a wait.  A pool that cannot hand one out in ``connect_timeout``
        (target gone since, or every connection busy) is told apart the same way:
        by one direct attempt, whose error is the one reported.
        """
        pool = self._pool
        if pool is not None:
            try:
                conn = pool.getconn(timeout=self.connect_timeout)
            except PoolTimeout:
                probe = self._connect()
                probe.close()
                raise Unavailable(
                    f"the {self.pool_size} admin connections to {self._where} stayed busy "
                    f"for {self.connect_timeout}s",
                    hint="the target is slow to create or drop roles; try again",
                ) from None
            try:
                yield conn
            finally:
                pool.putconn(conn)
            return
        conn = self._connect()
        try:
            with conn:
                yield conn
        finally:
            self._open_pool()

    @contextlib.contextmanager
    def _session(self) -> Iterator[Conn]:
        """An autocommit admin connection; psycopg errors leave as the broker's error kinds."""
        try:
            with self._borrowed() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise Unavailable(f"target database {self._where}: {self._message(exc)}") from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise Forbidden(
                f"the admin role lacks a privilege on {self._where}: {self._message(exc)}",
                hint="the admin role needs CREATEROLE, pg_signal_backend and ADMIN OPTION "
                "on the marker and grant roles",
            ) from None
        except psycopg.Error as exc:
            raise DbaccessError(f"target database {self._where}: {self._message(exc)}") from None

    def admin_connection(self) -> contextlib.AbstractContextManager[Conn]:
        """The admin connection with this issuer's error mapping, for issuers built on it."""
        return self._session()

    def _role_info(self, conn: Conn, username: str) -> _RoleInfo | None:
        row = conn.execute(
            _statement("role_info.sql"), {"name": username, "marker": self.marker_role}
        ).fetchone()
        if row is None:
            return None
        return _RoleInfo(oid=int(row[0]), managed=bool(row[1]), comment=row[2])

    def _require_managed(self, username: str, info: _RoleInfo) -> None:
        if not info.managed:
            raise Forbidden(
                f"role {username!r} is not managed by dbaccess; refusing to touch it",
                hint=f"only plain members of {self.marker_role!r} are altered or dropped",
            )
        marked = read_role_comment(info.comment)
        mine = self.mark.deployment if self.mark is not None else None
        if mine is not None and marked is not None and marked[0].deployment != mine:
            raise Forbidden(
                f"role {username!r} belongs to another dbaccess deployment "
                f"({marked[0].deployment}); refusing to touch it",
                hint="each deployment (one store and its brokers) ends only its own roles",
            )

    def _count_backends(self, conn: Conn, oid: int) -> int:
        row = conn.execute(_statement("count_backends.sql"), {"oid": oid}).fetchone()
        return int(row[0]) if row else 0

    def _terminate_and_wait(self, conn: Conn, oid: int) -> tuple[int, int]:
        """Signal every backend of the role until none is left or time runs out.

        Returns (backends signalled, backends still alive). Each query runs in
        its own transaction, so each poll sees a fresh pg_stat_activity.
        """
        signalled: set[int] = set()
        deadline = time.monotonic() + _TERMINATE_WAIT_SECONDS
        while True:
            rows = conn.execute(_statement("terminate_backends.sql"), {"oid": oid}).fetchall()
            if not rows:
                return len(signalled), 0  # not one backend of the role was there
            signalled.update(int(pid) for pid, ok in rows if ok)
            remaining = self._count_backends(conn, oid)
            if remaining == 0 or time.monotonic() >= deadline:
                return len(signalled), remaining
            time.sleep(_POLL_INTERVAL_SECONDS)

    # -- Issuer -------------------------------------------------------------

    def issue(
        self,
        *,
        identity: str,
        session_id: str,
        grants: Sequence[str],
        valid_until: datetime,
        scope: str | None = None,
        masking: MaskingPolicy | None = None,
        limits: SessionLimits | None = None,
    ) -> Credential:
        if valid_until.tzinfo is None or valid_until.utcoffset() is None:
            raise InvalidInput("valid_until must be timezone-aware")
        if valid_until <= datetime.now(UTC):
            raise InvalidInput("valid_until is already in the past")
        wanted = list(dict.fromkeys(grants))
        if any(not g for g in wanted):
            raise InvalidInput("grant role names must not be empty")
        if self.marker_role in wanted:
            raise InvalidInput(f"{self.marker_role!r} is the marker role, not a grant")
        username = role_name_for(identity, session_id)
        password, verifier = _PASSWORDS.take() if self.password_login else ("", None)
        in_roles = list(dict.fromkeys([self.marker_role, *self.login_roles, *wanted]))
        create = _statement(
            "create_role.sql",
            role=sql.Identifier(username),
            connection_limit=sql.Literal(int(self.connection_limit)),
            verifier=sql.Literal(verifier),
            valid_until=sql.Literal(valid_until.astimezone(UTC).isoformat()),
            in_roles=sql.SQL(", ").join(sql.Identifier(r) for r in in_roles),
        )
        walled = masking if masking is not None and masking.database_grants else None
        if walled is not None and scope is None:
            raise InvalidInput("masked columns are withheld by scope: the scope is needed")
        mark = (
            _statement(
                "mark_role.sql",
                role=sql.Identifier(username),
                comment=sql.Literal(role_comment(self.mark, session_id)),
            )
            if self.mark is not None
            else None
        )
        settings = self._settings(username, limits)
        duplicate = Conflict(
            f"role {username!r} already exists", hint="each session needs its own session id"
        )
        if walled is None and settings is not None:
            # The usual case: the grants checked, then the role made, marked and
            # limited by one Query message, which PostgreSQL runs as one transaction.
            with self._session() as conn:
                self._check_grants(conn, wanted)
                try:
                    conn.execute(sql.SQL(";\n").join([create, *filter(None, [mark]), *settings]))
                except psycopg.errors.DuplicateObject:
                    raise duplicate from None
                except psycopg.errors.InsufficientPrivilege:
                    if not self.settable:
                        raise
                    # A setting the admin role could set before (its privilege was
                    # revoked since): nothing was made; learnt again, one at a time.
                    self.settable.clear()
                else:
                    return Credential(username=username, password=password, valid_until=valid_until)
        with self._session() as conn, conn.transaction():
            self._check_grants(conn, wanted)
            walls = self._build_walls(conn, wanted, walled, scope) if walled is not None else ()
            try:
                conn.execute(create)
            except psycopg.errors.DuplicateObject:
                raise duplicate from None
            if mark is not None:
                conn.execute(mark)
            if limits is not None:
                self._set_limits(conn, username, limits)
            if walls:
                self._check_walls(conn, username, walls)
        return Credential(username=username, password=password, valid_until=valid_until)

    def _settings(self, username: str, limits: SessionLimits | None) -> list[sql.Composed] | None:
        """The statements that set ``limits`` on the role, where each is known to be
        allowed; None while a superuser-only one has not been tried yet (it is tried
        on its own, in a savepoint, by ``_set_limits``)."""
        if limits is None:
            return []
        statements = []
        for setting, value in database_settings(limits).items():
            if setting in SUPERUSER_SETTINGS and setting not in self.settable:
                if setting in self.unsettable:
                    continue
                return None
            statements.append(
                _statement(
                    "role_setting.sql",
                    role=sql.Identifier(username),
                    setting=sql.Identifier(setting),
                    value=sql.Literal(value),
                )
            )
        return statements

    def _set_limits(self, conn: Conn, username: str, limits: SessionLimits) -> None:
        role = sql.Identifier(username)
        for setting, value in database_settings(limits).items():
            statement = _statement(
                "role_setting.sql",
                role=role,
                setting=sql.Identifier(setting),
                value=sql.Literal(value),
            )
            if setting not in SUPERUSER_SETTINGS:
                conn.execute(statement)
                continue
            if setting in self.unsettable:
                continue
            try:
                with conn.transaction():
                    conn.execute(statement)
                self.settable.add(setting)
            except psycopg.errors.InsufficientPrivilege:
                self.unsettable.add(setting)
                log.warning(
                    "session roles on %s are created without %s: the admin role may not set "
                    "it (it needs superuser, or GRANT SET ON PARAMETER %s TO the admin role)",
                    self._where,
                    setting,
                    setting,
                )

    # -- column walls ---------------------------------------------------------

    def _build_walls(
        self, conn: Conn, grants: list[str], masking: MaskingPolicy, scope: str | None
    ) -> tuple[RelationWall, ...]:
        """Withhold the scope's masked columns from the roles its grants read with."""
        assert scope is not None
        rules = MaskingRules.for_scope(masking, scope)
        if not rules.active:
            return ()
        conn.execute(_statement("wall_lock.sql"))
        snapshot = build_snapshot(
            conn.execute(COLUMNS_SQL).fetchall(), conn.execute(VIEW_SOURCES_SQL).fetchall(), 0.0
        )
        walls = column_walls(rules, snapshot.columns())
        roles = [
            str(r[0])
            for r in conn.execute(_statement("wall_roles.sql"), {"grants": grants}).fetchall()
        ]
        if not walls or not roles:
            return walls
        for wall in walls:
            relation = sql.Identifier(wall.schema, wall.table)
            holdings = conn.execute(
                _statement("wall_holdings.sql"),
                {
                    "schema": wall.schema,
                    "table": wall.table,
                    "masked": list(wall.masked),
                    "roles": roles,
                },
            ).fetchall()
            for name, whole, columns in holdings:
                role = sql.Identifier(name)
                try:
                    if whole:
                        conn.execute(
                            _statement("wall_revoke_table.sql", relation=relation, role=role)
                        )
                        if wall.clear:
                            conn.execute(
                                _statement(
                                    "wall_grant_columns.sql",
                                    relation=relation,
                                    role=role,
                                    columns=_identifiers(wall.clear),
                                )
                            )
                    elif columns:
                        conn.execute(
                            _statement(
                                "wall_revoke_columns.sql",
                                relation=relation,
                                role=role,
                                columns=_identifiers(columns),
                            )
                        )
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise Forbidden(
                        f"cannot withhold masked columns of {wall} from role {name!r}: "
                        f"{self._message(exc)}",
                        hint=_WALL_HINT,
                    ) from None
        return walls

    def _check_walls(self, conn: Conn, username: str, walls: tuple[RelationWall, ...]) -> None:
        """Refuse (roll back) when the new role can still read a masked column, by any path."""
        masked = [(w.schema, w.table, c) for w in walls for c in w.masked]
        rows = conn.execute(
            _statement("wall_check.sql"),
            {
                "role": username,
                "schemas": [m[0] for m in masked],
                "tables": [m[1] for m in masked],
                "columns": [m[2] for m in masked],
            },
        ).fetchall()
        if rows:
            readable = ", ".join(str(r[0]) for r in rows[:5])
            more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
            raise Forbidden(
                f"masked columns would be readable by the session role: {readable}{more}",
                hint=_WALL_HINT,
            )

    def _check_grants(self, conn: Conn, grants: list[str]) -> None:
        rows = conn.execute(
            _statement("check_grants.sql"), {"grants": grants, "marker": self.marker_role}
        ).fetchall()
        if not rows or rows[0][0] is None:
            raise InvalidInput(
                f"the marker role {self.marker_role!r} does not exist in {self._where}",
                hint="provision the target (marker role and admin role) first",
            )
        for _marker, name, exists, too_powerful, is_managed, delegated, _at in rows[1:]:
            if not exists:
                raise InvalidInput(f"grant role {name!r} does not exist in {self._where}")
            if too_powerful or is_managed:
                raise Forbidden(
                    f"role {name!r} cannot be used as a grant",
                    hint="grant roles are NOLOGIN group roles without special attributes",
                )
            if not delegated:
                raise Forbidden(
                    f"role {name!r} has not been delegated to the admin role",
                    hint=f"GRANT {name} TO <admin role> WITH ADMIN OPTION",
                )

    def revoke(self, username: str) -> RevocationResult:
        with self._session() as conn, self._revoking(conn, username) as info:
            if info is None:
                return RevocationResult(
                    username, 0, dropped=False, verified=True, detail="role does not exist"
                )
            self._require_managed(username, info)
            role = sql.Identifier(username)
            conn.execute(_statement("revoke_nologin.sql", role=role))
            terminated, remaining = self._terminate_and_wait(conn, info.oid)
            if remaining:
                return RevocationResult(
                    username,
                    terminated,
                    dropped=False,
                    verified=False,
                    detail=f"{remaining} backend(s) still running after "
                    f"{_TERMINATE_WAIT_SECONDS:g}s; role left NOLOGIN for a retry",
                )
            try:
                conn.execute(_handover(role, info.oid))
            except psycopg.errors.DependentObjectsStillExist as exc:
                # Typically objects in another database of the cluster: the role
                # stays, NOLOGIN, and the reaper will keep reporting it.
                return RevocationResult(
                    username,
                    terminated,
                    dropped=False,
                    verified=False,
                    detail=f"role kept NOLOGIN: {self._message(exc)}",
                )
            # A login racing NOLOGIN may have slipped in: it dies here too.
            late, remaining = self._terminate_and_wait(conn, info.oid)
            row = conn.execute(_statement("role_exists.sql"), {"oid": info.oid}).fetchone()
            role_left = bool(row and row[0])
        verified = not role_left and remaining == 0
        detail = "" if verified else f"role present: {role_left}, backends left: {remaining}"
        return RevocationResult(
            username, terminated + late, dropped=True, verified=verified, detail=detail
        )

    @contextlib.contextmanager
    def _revoking(self, conn: Conn, username: str) -> Iterator[_RoleInfo | None]:
        """One revocation of a role at a time, whichever broker runs it: a second one
        waits, then finds the role gone (it is already revoked).  Yields the role as
        it is once the lock is held: the lock and the look-up go in one round trip
        (a pipeline; the look-up's snapshot is taken after the lock is granted)."""
        with conn.pipeline():
            conn.execute(_statement("revoke_lock.sql"), {"name": username})
            info = self._role_info(conn, username)
        try:
            yield info
        finally:
            if not conn.closed:
                conn.execute(_statement("revoke_unlock.sql"), {"name": username})

    def terminate_backends(self, username: str) -> int:
        with self._session() as conn:
            info = self._role_info(conn, username)
            if info is None:
                return 0
            self._require_managed(username, info)
            terminated, _ = self._terminate_and_wait(conn, info.oid)
            return terminated

    def list_managed(self) -> list[ManagedRole]:
        with self._session() as conn:
            rows = conn.execute(
                _statement("list_managed.sql"), {"marker": self.marker_role}
            ).fetchall()
        managed = []
        for name, until, comment in rows:
            marked = read_role_comment(comment)
            managed.append(
                ManagedRole(
                    name=str(name),
                    valid_until=until,
                    session_id=marked[1] if marked is not None else None,
                    mark=marked[0] if marked is not None else None,
                )
            )
        return managed
