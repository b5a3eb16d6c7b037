"""The broker's store: one object over a SQLAlchemy engine.

``Store.open(url)`` connects, runs the Alembic migrations to head and returns a
store.  A store already at head is recognised without Alembic (the newest
revision is read from the migration scripts' own ``revision`` lines), so Alembic,
Mako and Pygments (about 10 MB resident) are imported only to really migrate; the
broker does even that in a child process (``Store.migrate_url``, server.isolated).
Every method is one short transaction.  Secrets never enter the store in
clear: API tokens and session tickets are kept as SHA-256 hashes, and the
session's database password is not stored at all (it lives only in the broker's
memory, which is why a restarted broker revokes every session it finds open).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from server.errors import Conflict
from server.store import tables as t
from server.store.sealing import StoreKeyError, StoreKeys, key_id_of

if TYPE_CHECKING:
    # Only the lease book makes leases: the recording's writer process, which opens
    # the store, does without the credentials' modules (and the policy's, psycopg).
    from server.credentials.base import Lease

_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(.+?)\s*$", re.M)


@functools.cache
def schema_head() -> str | None:
    """The newest migration's revision, read from the scripts' ``revision`` and
    ``down_revision`` lines without importing Alembic.

    None unless the scripts form one plain chain with a single head (a merge, a
    branch or a line this does not understand leaves the decision to Alembic).
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    versions = resources.files("server.store") / "migrations" / "versions"
    for script in versions.iterdir():
        if not script.name.endswith(".py"):
            continue
        lines = dict(_REVISION_LINE.findall(script.read_text(encoding="utf-8")))
        try:
            revision = ast.literal_eval(lines["revision"])
            parent = ast.literal_eval(lines["down_revision"])
        except (KeyError, ValueError, SyntaxError):
            return None
        if not isinstance(revision, str) or not (parent is None or isinstance(parent, str)):
            return None
        revisions.add(revision)
        if parent is not None:
            parents.add(parent)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; everything in the store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_LEASE_REF = "sha256:"
_LEASE_PURPOSE = "credential_leases.lease_id"
_KEY_CHECK = "store_key_check."
# The execution option of a connection Store.read begins (a SQLite snapshot, no write lock).
_READER = "dbaccess_reader"


def lease_ref(lease_id: str) -> str:
    """What finds a lease's row: its id's SHA-256 (the id itself is kept sealed)."""
    return _LEASE_REF + hash_secret(lease_id)


def insert_ignoring_duplicate(engine: sa.Engine, table: sa.Table) -> Any:
    """An INSERT that leaves an existing row of the same key alone (replicas racing)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def _same(column: sa.ColumnElement[Any], value: object) -> sa.ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(6)}"


AGENT_KIND = "agent"


class IdentityClash(Conflict):
    """A token that would give an agent's name to someone else, or the reverse."""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    identity: str
    groups: tuple[str, ...]
    kind: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    owner: str | None = None  # the person an ``agent`` token acts for

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "identity": self.identity,
            "groups": list(self.groups),
            "kind": self.kind,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "owner": self.owner,
        }


def _token(row: sa.Row[Any]) -> TokenRecord:
    m = row._mapping
    created = _aware(m["created_at"])
    assert created is not None
    return TokenRecord(
        id=m["id"],
        identity=m["identity"],
        groups=tuple(m["groups"]),
        kind=m["kind"],
        created_at=created,
        expires_at=_aware(m["expires_at"]),
        revoked_at=_aware(m["revoked_at"]),
        owner=m["owner"],
    )


@dataclass(frozen=True)
class SessionRecord:
    id: str
    identity: str
    groups: tuple[str, ...]
    target: str
    scope: str
    reason: str | None
    db_user: str
    status: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    revocation: Mapping[str, Any] | None
    # The replica holding the session's credential (None: a broker from before replicas).
    owner: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "identity": self.identity,
            "target": self.target,
            "scope": self.scope,
            "reason": self.reason,
            "db_user": self.db_user,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "end_reason": self.end_reason,
            "revocation": dict(self.revocation) if self.revocation else None,
        }


def _session(row: sa.Row[Any]) -> SessionRecord:
    m = row._mapping
    created, expires = _aware(m["created_at"]), _aware(m["expires_at"])
    assert created is not None and expires is not None
    return SessionRecord(
        id=m["id"],
        identity=m["identity"],
        groups=tuple(m["groups"]),
        target=m["target"],
        scope=m["scope"],
        reason=m["reason"],
        db_user=m["db_user"],
        status=m["status"],
        created_at=created,
        expires_at=expires,
        ended_at=_aware(m["ended_at"]),
        end_reason=m["end_reason"],
        revocation=m["revocation"],
        owner=m["owner"],
    )


@dataclass(frozen=True)
class ReplicaRecord:
    """One broker process on this store and its heartbeat lease."""

    id: str
    host: str
    pid: int
    role: str
    api_url: str | None
    started_at: datetime
    lease_expires_at: datetime
    stopped_at: datetime | None

    def alive(self, now: datetime) -> bool:
        return self.stopped_at is None and self.lease_expires_at > now


def _replica(row: sa.Row[Any]) -> ReplicaRecord:
    m = row._mapping
    started, until = _aware(m["started_at"]), _aware(m["lease_expires_at"])
    assert started is not None and until is not None
    return ReplicaRecord(
        id=m["id"],
        host=m["host"],
        pid=m["pid"],
        role=m["role"],
        api_url=m["api_url"],
        started_at=started,
        lease_expires_at=until,
        stopped_at=_aware(m["stopped_at"]),
    )


class Store:
    """Typed access to the tables; one instance per broker process."""

    def __init__(self, engine: sa.Engine, keys: StoreKeys | None = None) -> None:
        self.engine = engine
        # What seals the secrets the broker must read back (server/store/sealing.py);
        # None: such secrets cannot be kept, and a lease-keeping issuer refuses to issue.
        self.keys = keys
        # Serialises audit appends within this process; between replicas sharing a
        # PostgreSQL store, lock_audit_chain does.
        self.audit_lock = threading.Lock()

    @classmethod
    def open(cls, url: str, keys: StoreKeys | None = None) -> Store:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):

            @sa.event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                # sqlite3 on its own begins a transaction only at the first write,
                # so what a transaction read could change before it wrote (a
                # recording's writer, the chain's head): begin every one ourselves.
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

            @sa.event.listens_for(engine, "begin")
            def _begin(conn: sa.Connection) -> None:
                # IMMEDIATE: the one write lock is taken at the start, so a
                # transaction's reads hold until it commits -- SQLite's FOR UPDATE.
                # A reader (Store.read) takes a snapshot instead, which no writer waits for.
                reader = conn.get_execution_options().get(_READER, False)
                conn.exec_driver_sql("BEGIN" if reader else "BEGIN IMMEDIATE")

        store = cls(engine, keys)
        store.migrate()
        return store

    def at_head(self) -> bool:
        """Whether the schema is at the newest migration (False when unsure)."""
        head = schema_head()
        if head is None:
            return False
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return False
            current = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        return [row[0] for row in current] == [head]

    def migrate(self) -> None:
        if self.at_head():
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("server.store") / "migrations"))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @staticmethod
    def migrate_url(url: str) -> None:
        """Bring the store at ``url`` to head (for a child process: see server.isolated)."""
        Store.open(url).close()

    @contextmanager
    def tx(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A transaction that only reads, over one consistent view of the store.  On
        SQLite it takes no write lock (:meth:`tx` does), so a long read -- an audit
        report, a question over a million access events -- never holds up the
        sessions and recordings being written meanwhile, and a lookup every request
        makes (a token, a session by its ticket) never waits for a writer."""
        with self.engine.connect() as conn:
            conn.execution_options(**{_READER: True})
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()

    def lock_audit_chain(self, conn: sa.Connection) -> None:
        """Within ``conn``'s transaction, be the only writer of the audit chain: the
        replicas on a PostgreSQL store take turns (released at commit); a SQLite
        transaction holds the store's one write lock from its start (see :meth:`open`)."""
        if self.engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('dbaccess audit chain'))"))

    def notify(self, channel: str, payload: str) -> None:
        """Wake the replicas listening on ``channel`` (PostgreSQL stores; elsewhere
        the replicas' polling is what notices)."""
        if self.engine.dialect.name == "postgresql":
            with self.tx() as conn:
                conn.execute(sa.select(sa.func.pg_notify(channel, payload)))

    # -- API tokens -------------------------------------------------------------
    def create_token(
        self,
        identity: str,
        groups: tuple[str, ...],
        kind: str,
        ttl: timedelta | None,
        *,
        owner: str | None = None,
    ) -> tuple[str, TokenRecord]:
        token = "dba_" + secrets.token_urlsafe(32)
        now = utcnow()
        clash = self._identity_clash(identity, kind, owner)
        if clash is not None:
            raise IdentityClash(clash, hint="agents and everyone else need names of their own")
        rec = TokenRecord(
            id=new_id("t-"),
            identity=identity,
            groups=groups,
            kind=kind,
            created_at=now,
            expires_at=now + ttl if ttl else None,
            revoked_at=None,
            owner=owner,
        )
        with self.tx() as conn:
            conn.execute(
                t.api_tokens.insert().values(
                    id=rec.id,
                    token_hash=hash_secret(token),
                    identity=identity,
                    groups=list(groups),
                    kind=kind,
                    created_at=now,
                    expires_at=rec.expires_at,
                    owner=owner,
                )
            )
        return token, rec

    def _identity_clash(self, identity: str, kind: str, owner: str | None) -> str | None:
        """Why a token of ``kind`` for ``identity`` may not be made, or None.

        Agents and everyone else never share a name: grants, statement reviews
        and decisions are bound to names, so an agent named like a person would
        use the person's approvals, and a person named like an agent would decide
        as one (``Approvals.actor``).  An agent acts for a person, not an agent."""
        tokens = t.api_tokens.c
        q = sa.select(tokens.identity, tokens.kind).where(
            tokens.identity.in_([identity, owner] if owner else [identity])
        )
        with self.read() as conn:
            known = {(str(r[0]), str(r[1])) for r in conn.execute(q)}
        kinds = {k for name, k in known if name == identity}
        if kind == AGENT_KIND and kinds - {AGENT_KIND}:
            return f"{identity!r} is not an agent's name: it has tokens of another kind"
        if kind != AGENT_KIND and AGENT_KIND in kinds:
            return f"{identity!r} is an agent's name: it has agent tokens"
        if owner is not None and (owner, AGENT_KIND) in known:
            return f"an agent acts for a person, and {owner!r} is an agent"
        return None

    def find_token(self, token: str) -> TokenRecord | None:
        with self.read() as conn:
            row = conn.execute(
                t.api_tokens.select().where(t.api_tokens.c.token_hash == hash_secret(token))
            ).first()
        return _token(row) if row is not None else None

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self.read() as conn:
            row = conn.execute(t.api_tokens.select().where(t.api_tokens.c.id == token_id)).first()
        return _token(row) if row is not None else None

    def agent_owners(self, identity: str) -> frozenset[str]:
        """The people any ``agent`` token of ``identity`` acts or acted for (revoked ones too)."""
        q = sa.select(t.api_tokens.c.owner).where(
            t.api_tokens.c.identity == identity,
            t.api_tokens.c.kind == AGENT_KIND,
            t.api_tokens.c.owner.is_not(None),
        )
        with self.read() as conn:
            return frozenset(str(row[0]) for row in conn.execute(q))

    def list_tokens(
        self, *, kind: str | None = None, include_inactive: bool = False
    ) -> list[TokenRecord]:
        """Tokens, newest first; by default only those neither revoked nor expired."""
        q = t.api_tokens.select().order_by(t.api_tokens.c.created_at.desc())
        if kind is not None:
            q = q.where(t.api_tokens.c.kind == kind)
        with self.read() as conn:
            records = [_token(r) for r in conn.execute(q)]
        if include_inactive:
            return records
        now = utcnow()
        return [r for r in records if r.active(now)]

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token now; False when it is unknown or was revoked already."""
        with self.tx() as conn:
            res = conn.execute(
                t.api_tokens.update()
                .where(t.api_tokens.c.id == token_id, t.api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return res.rowcount == 1

    def use_once(self, token_key: str, *, kind: str, issuer: str, expires_at: datetime) -> bool:
        """Record that a token was exchanged; False when it had been already (a replay).

        ``token_key`` is a hash naming the token.  Entries of tokens that have
        expired cannot be replayed any more and are pruned on the way.
        """
        now = utcnow()
        try:
            with self.tx() as conn:
                conn.execute(t.used_tokens.delete().where(t.used_tokens.c.expires_at < now))
                conn.execute(
                    t.used_tokens.insert().values(
                        token_key=token_key,
                        kind=kind,
                        issuer=issuer,
                        used_at=now,
                        expires_at=expires_at,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    # -- sessions -------------------------------------------------------------
    def insert_session(
        self, rec: SessionRecord, ticket_hash: str, *, handoff: str | None = None
    ) -> None:
        with self.tx() as conn:
            conn.execute(
                t.sessions.insert().values(
                    id=rec.id,
                    identity=rec.identity,
                    groups=list(rec.groups),
                    target=rec.target,
                    scope=rec.scope,
                    reason=rec.reason,
                    db_user=rec.db_user,
                    ticket_hash=ticket_hash,
                    status=rec.status,
                    created_at=rec.created_at,
                    expires_at=rec.expires_at,
                    owner=rec.owner,
                    handoff=handoff,
                )
            )

    def get_session(self, session_id: str) -> SessionRecord | None:
        with self.read() as conn:
            row = conn.execute(t.sessions.select().where(t.sessions.c.id == session_id)).first()
        return _session(row) if row else None

    def session_by_ticket(self, ticket_hash: str) -> SessionRecord | None:
        """The session (in any state) whose ticket hashes to ``ticket_hash``."""
        with self.read() as conn:
            row = conn.execute(
                t.sessions.select().where(t.sessions.c.ticket_hash == ticket_hash)
            ).first()
        return _session(row) if row else None

    def session_handoff(self, ticket_hash: str) -> tuple[SessionRecord, str | None] | None:
        """The session whose ticket hashes to ``ticket_hash`` and its sealed credential
        (None unless an API-only replica started it)."""
        with self.read() as conn:
            row = conn.execute(
                t.sessions.select().where(t.sessions.c.ticket_hash == ticket_hash)
            ).first()
        return (_session(row), row._mapping["handoff"]) if row else None

    def take_handoff(self, session_id: str, replica_id: str) -> bool:
        """Make ``replica_id`` the owner of an active session an API-only replica started
        and still owns; False when it is no longer such a session (ended, or taken by
        another replica).  One statement, so two gateway replicas never both take it."""
        s, r = t.sessions.c, t.replicas.c
        starters = sa.select(r.id).where(r.role == "api")
        with self.tx() as conn:
            res = conn.execute(
                t.sessions.update()
                .where(
                    s.id == session_id,
                    s.status == "active",
                    s.handoff.is_not(None),
                    s.owner.in_(starters),
                )
                .values(owner=replica_id)
            )
        return res.rowcount == 1

    def list_sessions(
        self, *, identity: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[SessionRecord]:
        q = t.sessions.select().order_by(t.sessions.c.created_at.desc()).limit(limit)
        if identity is not None:
            q = q.where(t.sessions.c.identity == identity)
        if active is True:
            q = q.where(t.sessions.c.status == "active")
        elif active is False:
            q = q.where(t.sessions.c.status != "active")
        with self.read() as conn:
            return [_session(r) for r in conn.execute(q)]

    def session_of_db_user(self, db_user: str) -> SessionRecord | None:
        """The newest session of this store (in any state) that used ``db_user``."""
        with self.read() as conn:
            row = conn.execute(
                t.sessions.select()
                .where(t.sessions.c.db_user == db_user)
                .order_by(t.sessions.c.created_at.desc())
                .limit(1)
            ).first()
        return _session(row) if row is not None else None

    def finish_session(self, session_id: str, *, status: str, reason: str) -> bool:
        """Move an active session to a final status; False when it was not active.
        Its handed-off credential goes with it: no gateway may take an ended session,
        and a ticket that leaks later must not open even a revoked role's password."""
        with self.tx() as conn:
            res = conn.execute(
                t.sessions.update()
                .where(t.sessions.c.id == session_id, t.sessions.c.status == "active")
                .values(status=status, ended_at=utcnow(), end_reason=reason, handoff=None)
            )
        return res.rowcount == 1

    def changed_sessions(self, session_ids: Collection[str], owner: str) -> list[SessionRecord]:
        """Those of ``session_ids`` that are no longer active or no longer ``owner``'s."""
        ids = list(session_ids)
        c = t.sessions.c
        changed: list[SessionRecord] = []
        with self.read() as conn:
            for start in range(0, len(ids), 500):
                q = t.sessions.select().where(
                    c.id.in_(ids[start : start + 500]),
                    sa.or_(c.status != "active", c.owner.is_(None), c.owner != owner),
                )
                changed.extend(_session(r) for r in conn.execute(q))
        return changed

    def claim_orphans(
        self, replica_id: str, now: datetime, limit: int = 100
    ) -> list[SessionRecord]:
        """Take over active sessions whose owner is dead (or unknown): they become
        ``replica_id``'s, to end.  The rows are read ``FOR UPDATE SKIP LOCKED`` and
        taken in the same transaction, so two replicas never claim one session; the
        conditional UPDATE keeps that true where SKIP LOCKED is not (SQLite, whose
        writers are serialised anyway)."""
        s, r = t.sessions.c, t.replicas.c
        alive = sa.select(r.id).where(r.lease_expires_at > now, r.stopped_at.is_(None))
        q = (
            t.sessions.select()
            .where(
                s.status == "active",
                sa.or_(s.owner.is_(None), s.owner.not_in(alive)),
                sa.or_(s.owner.is_(None), s.owner != replica_id),
            )
            .order_by(s.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claimed: list[SessionRecord] = []
        with self.tx() as conn:
            for row in conn.execute(q).all():
                rec = _session(row)
                owner_was = s.owner.is_(None) if rec.owner is None else s.owner == rec.owner
                res = conn.execute(
                    t.sessions.update()
                    .where(s.id == rec.id, s.status == "active", owner_was)
                    .values(owner=replica_id)
                )
                if res.rowcount == 1:
                    claimed.append(rec)
        return claimed

    def abandoned_recordings(self, replica_id: str, now: datetime) -> list[SessionRecord]:
        """Ended sessions whose recording is still open and whose recording's writer
        is dead (or unknown), ``replica_id`` not being dead: ended through another
        replica, the owner died before it closed the recording.  A session whose
        owner is alive is not abandoned: the owner closes its recording (a replica
        that has just claimed a dead one's session and is ending it is its owner
        already, and closing the recording beside it would race it)."""
        s, r, rec = t.sessions.c, t.replicas.c, t.session_recordings.c
        alive = sa.select(r.id).where(r.lease_expires_at > now, r.stopped_at.is_(None))
        q = (
            t.sessions.select()
            .join(t.session_recordings, rec.session_id == s.id)
            .where(
                rec.status == "open",
                s.status != "active",
                sa.or_(s.owner.is_(None), s.owner.not_in(alive)),
                sa.or_(
                    rec.writer.is_(None),
                    sa.and_(rec.writer != replica_id, rec.writer.not_in(alive)),
                ),
            )
        )
        with self.read() as conn:
            return [_session(row) for row in conn.execute(q)]

    def owned_sessions(self, replica_id: str) -> list[SessionRecord]:
        """Active sessions the store says ``replica_id`` holds."""
        q = t.sessions.select().where(
            t.sessions.c.status == "active", t.sessions.c.owner == replica_id
        )
        with self.read() as conn:
            return [_session(r) for r in conn.execute(q)]

    def record_revocation(self, session_id: str, result: Mapping[str, Any]) -> None:
        with self.tx() as conn:
            conn.execute(
                t.sessions.update()
                .where(t.sessions.c.id == session_id)
                .values(revocation=dict(result))
            )

    # -- secrets at rest (server/store/sealing.py) --------------------------------
    def check_keys(self) -> None:
        """Refuse a key file whose key under an id this store has sealed with is
        another key (StoreKeyError naming the id); remember the newest key's check."""
        assert self.keys is not None
        m = t.broker_meta.c
        with self.tx() as conn:
            known = {
                row.key[len(_KEY_CHECK) :]: row.value
                for row in conn.execute(
                    sa.select(m.key, m.value).where(m.key.startswith(_KEY_CHECK))
                )
            }
            for key in self.keys.keys:
                seen = known.get(key.id)
                if seen is not None and not hmac.compare_digest(seen, key.check_value()):
                    raise StoreKeyError(
                        f"store key {key.id!r} in {self.keys.source} is not the key this "
                        f"store's secrets were sealed with under that id",
                        hint="restore the key file this store was used with (replicas of "
                        "one store share one key file: store_key_file, or "
                        "DBACCESS_SERVER_STORE_KEY_FILE for dev brokers); a new key needs "
                        "an id of its own",
                    )
            newest = self.keys.newest
            if newest.id not in known:
                conn.execute(
                    insert_ignoring_duplicate(self.engine, t.broker_meta).values(
                        key=_KEY_CHECK + newest.id, value=newest.check_value()
                    )
                )

    def secrets_at_rest(self) -> dict[str, int]:
        """How many kept secrets each key seals (``""``: kept in clear by a broker
        without a key)."""
        c = t.credential_leases.c
        counts: dict[str, int] = {}
        with self.read() as conn:
            for sealed, lease_id in conn.execute(sa.select(c.lease_sealed, c.lease_id)):
                key_id = key_id_of(sealed) if sealed is not None else ""
                if sealed is None and lease_id.startswith(_LEASE_REF):
                    continue  # cannot happen but through a hand edit; nothing to seal
                counts[key_id] = counts.get(key_id, 0) + 1
        return counts

    def seal_at_rest(self, *, rekey: bool = False) -> int:
        """Seal the secrets kept in clear with the newest key and, with ``rekey``,
        re-seal those sealed with an older one; returns how many rows changed.
        Each row is its own conditional UPDATE, so replicas doing this at once
        neither clash nor undo each other."""
        keys = self.keys
        assert keys is not None
        c = t.credential_leases.c
        changed = 0
        with self.tx() as conn:
            rows = conn.execute(sa.select(c.lease_id, c.lease_sealed)).all()
        for ref, sealed in rows:
            if sealed is None:
                if ref.startswith(_LEASE_REF):
                    continue
                lease_id = ref
            elif rekey and not keys.sealed_with_newest(sealed):
                lease_id = keys.open(_LEASE_PURPOSE, sealed)
            else:
                continue
            with self.tx() as conn:
                changed += conn.execute(
                    t.credential_leases.update()
                    .where(c.lease_id == ref, _same(c.lease_sealed, sealed))
                    .values(
                        lease_id=lease_ref(lease_id),
                        lease_sealed=keys.seal(_LEASE_PURPOSE, lease_id),
                    )
                ).rowcount
        return changed

    # -- deployment and replicas ------------------------------------------------
    @functools.cached_property
    def deployment_id(self) -> str:
        """This store's deployment identity: every broker on it marks its roles with it."""
        with self.read() as conn:
            value = conn.execute(
                sa.select(t.broker_meta.c.value).where(t.broker_meta.c.key == "deployment_id")
            ).scalar_one()
        return str(value)

    def register_replica(
        self, replica_id: str, *, host: str, pid: int, role: str, api_url: str | None, lease: float
    ) -> None:
        now = utcnow()
        with self.tx() as conn:
            conn.execute(
                t.replicas.insert().values(
                    id=replica_id,
                    host=host,
                    pid=pid,
                    role=role,
                    api_url=api_url,
                    started_at=now,
                    heartbeat_at=now,
                    lease_expires_at=now + timedelta(seconds=lease),
                )
            )

    def heartbeat(self, replica_id: str, lease: float) -> bool:
        """Extend the replica's lease; False when it had run out already (other
        replicas may have claimed its sessions by then) or it was ended."""
        now = utcnow()
        r = t.replicas.c
        with self.tx() as conn:
            until = conn.execute(
                sa.select(r.lease_expires_at).where(r.id == replica_id, r.stopped_at.is_(None))
            ).scalar_one_or_none()
            conn.execute(
                t.replicas.update()
                .where(r.id == replica_id, r.stopped_at.is_(None))
                .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease))
            )
        valid = _aware(until)
        return valid is not None and valid > now

    def end_replica(self, replica_id: str) -> None:
        """The replica is gone (stopped, or found dead): its lease ends now."""
        now = utcnow()
        r = t.replicas.c
        with self.tx() as conn:
            conn.execute(
                t.replicas.update()
                .where(r.id == replica_id, r.stopped_at.is_(None))
                .values(stopped_at=now, lease_expires_at=now)
            )

    def replicas(self, *, alive_at: datetime | None = None) -> list[ReplicaRecord]:
        """Every replica row (only those alive at ``alive_at`` when given), oldest first."""
        r = t.replicas.c
        q = t.replicas.select().order_by(r.started_at)
        if alive_at is not None:
            q = q.where(r.lease_expires_at > alive_at, r.stopped_at.is_(None))
        with self.read() as conn:
            return [_replica(row) for row in conn.execute(q)]

    def prune_replicas(self, before: datetime) -> None:
        """Forget replicas dead since before ``before`` that no active session names."""
        r, s = t.replicas.c, t.sessions.c
        named = sa.select(s.owner).where(s.status == "active", s.owner.is_not(None))
        with self.tx() as conn:
            conn.execute(t.replicas.delete().where(r.lease_expires_at < before, r.id.not_in(named)))


class StoreLeaseBook:
    """One target's credential leases in the store (see ``credentials.base.LeaseBook``)."""

    def __init__(self, store: Store, target: str) -> None:
        self.store = store
        self.target = target

    def remember(self, lease: Lease) -> None:
        keys = self.store.keys
        if keys is None:
            raise StoreKeyError(
                f"target {self.target}: a Vault lease can only be kept sealed, and the "
                "broker has no store key",
                hint="set store_key_file (or DBACCESS_SERVER_STORE_KEY_FILE); "
                "'dbaccess-server store keygen --key-file PATH' writes one",
            )
        with self.store.tx() as conn:
            conn.execute(
                t.credential_leases.insert().values(
                    lease_id=lease_ref(lease.lease_id),
                    lease_sealed=keys.seal(_LEASE_PURPOSE, lease.lease_id),
                    target=self.target,
                    session_id=lease.session_id,
                    db_user=lease.username,
                    role_oid=lease.role_oid,
                    created_at=utcnow(),
                    expires_at=lease.valid_until,
                )
            )

    def _select(self) -> sa.Select[Any]:
        c = t.credential_leases.c
        return (
            t.credential_leases.select()
            .where(c.target == self.target, c.revoked_at.is_(None))
            .order_by(c.created_at)
        )

    def _lease(self, row: sa.Row[Any]) -> Lease:
        from server.credentials.base import Lease

        m = row._mapping
        until = _aware(m["expires_at"])
        assert until is not None
        lease_id = m["lease_id"]
        if m["lease_sealed"] is not None:
            if self.store.keys is None:
                raise StoreKeyError(
                    f"target {self.target}: the store's Vault leases are sealed, and the "
                    "broker has no store key to open them",
                    hint="set store_key_file (or DBACCESS_SERVER_STORE_KEY_FILE) to the "
                    "store's key file",
                )
            lease_id = self.store.keys.open(_LEASE_PURPOSE, m["lease_sealed"])
        return Lease(
            lease_id=lease_id,
            username=m["db_user"],
            session_id=m["session_id"],
            valid_until=until,
            role_oid=m["role_oid"],
        )

    def find(self, username: str) -> Lease | None:
        with self.store.read() as conn:
            row = conn.execute(
                self._select().where(t.credential_leases.c.db_user == username)
            ).first()
        return self._lease(row) if row is not None else None

    def outstanding(self) -> list[Lease]:
        with self.store.read() as conn:
            return [self._lease(row) for row in conn.execute(self._select())]

    def mark_revoked(self, lease_id: str) -> None:
        with self.store.tx() as conn:
            conn.execute(
                t.credential_leases.update()
                .where(t.credential_leases.c.lease_id.in_((lease_ref(lease_id), lease_id)))
                .values(revoked_at=utcnow())
            )
