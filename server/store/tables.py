"""Table definitions of the broker's store (SQLAlchemy Core).

The same definitions serve SQLite (the embedded default) and PostgreSQL (several
broker replicas); the schema itself is created and upgraded only by the Alembic
migrations in ``server/store/migrations`` — these objects are for queries.
Timestamps are stored as timezone-aware UTC datetimes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

metadata = sa.MetaData()

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("identity", sa.String(200), nullable=False),
    sa.Column("groups", sa.JSON, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    # The person an ``agent`` token acts for (None for every other kind).
    sa.Column("owner", sa.String(200), nullable=True),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("identity", sa.String(200), nullable=False, index=True),
    sa.Column("groups", sa.JSON, nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("scope", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("db_user", sa.String(63), nullable=False),
    sa.Column("ticket_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("end_reason", sa.String(200), nullable=True),
    sa.Column("revocation", sa.JSON, nullable=True),
    sa.Column("client", sa.JSON, nullable=True),
    # The replica holding the session's credential (None: a broker from before replicas).
    sa.Column("owner", sa.String(32), nullable=True, index=True),
    # An API-only replica's session: its credential sealed with its ticket, for the
    # gateway replica the client connects to (server.sessions.handoff).
    sa.Column("handoff", sa.Text, nullable=True),
)

# What every broker of one store shares: ``deployment_id`` marks the roles they create.
broker_meta = sa.Table(
    "broker_meta",
    metadata,
    sa.Column("key", sa.String(60), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# One row per broker process on this store; a replica whose lease has run out is dead,
# and its sessions are ended by whichever live replica claims them first.
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("api_url", sa.String(1024), nullable=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(60), nullable=False),
    sa.Column("identity", sa.String(200), nullable=True),
    sa.Column("target", sa.String(200), nullable=True),
    sa.Column("session_id", sa.String(32), nullable=True),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# ID and workload tokens already exchanged for a broker token, kept until they expire.
used_tokens = sa.Table(
    "used_tokens",
    metadata,
    sa.Column("token_key", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("issuer", sa.String(500), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

# Just-in-time access requests; every change is a conditional UPDATE on ``version``.
access_requests = sa.Table(
    "access_requests",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(20), nullable=False, server_default="access"),
    sa.Column("requester", sa.String(200), nullable=False, index=True),
    sa.Column("requester_groups", sa.JSON, nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("scope", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("ttl_seconds", sa.Integer, nullable=False),
    sa.Column("start_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("decided_by", sa.String(200), nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("min_approvals", sa.Integer, nullable=False),
    sa.Column("approver_groups", sa.JSON, nullable=False),
    sa.Column("approver_identities", sa.JSON, nullable=False),
    sa.Column("approval_ttl_seconds", sa.Integer, nullable=False),
    sa.Column("pending_ttl_seconds", sa.Integer, nullable=False),
    sa.Column("single_use", sa.Boolean, nullable=False),
    sa.Column("grant_expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("use_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("session_id", sa.String(32), nullable=True),
    sa.Column("statement", sa.Text, nullable=True),
    sa.Column("statement_sha256", sa.String(64), nullable=True),
    sa.Column("parameters", sa.JSON, nullable=True),
)
# At most one pending access request per requester, target and scope, even when two
# session starts race to create it.
sa.Index(
    "uq_access_requests_one_pending",
    access_requests.c.requester,
    access_requests.c.target,
    access_requests.c.scope,
    unique=True,
    sqlite_where=sa.text("status = 'pending' AND kind = 'access'"),
    postgresql_where=sa.text("status = 'pending' AND kind = 'access'"),
)

# One row per (request, approver): the unique constraint makes a double approval impossible.
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "request_id",
        sa.String(32),
        sa.ForeignKey("access_requests.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("approver", sa.String(200), nullable=False),
    sa.Column("approver_groups", sa.JSON, nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("request_id", "approver", name="uq_approvals_request_approver"),
)

# Leases of lease-based issuers (Vault/OpenBao), kept so a restarted broker can revoke them.
# ``lease_id`` is the lease id's SHA-256 (``sha256:<hex>``) and ``lease_sealed`` the
# lease id sealed with the store key (server/store/sealing.py); a row from a broker
# without a key has the lease id itself and no ``lease_sealed``.
credential_leases = sa.Table(
    "credential_leases",
    metadata,
    sa.Column("lease_id", sa.String(500), primary_key=True),
    sa.Column("lease_sealed", sa.Text, nullable=True),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("session_id", sa.String(32), nullable=False, index=True),
    sa.Column("db_user", sa.String(63), nullable=False),
    sa.Column("role_oid", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)
sa.Index(
    "ix_credential_leases_target_user", credential_leases.c.target, credential_leases.c.db_user
)

# Session recordings: the events of each session in order, and per session its
# status and the digest that the audit chain holds (server/audit/recording.py).
session_events = sa.Table(
    "session_events",
    metadata,
    sa.Column("session_id", sa.String(32), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)

session_recordings = sa.Table(
    "session_recordings",
    metadata,
    sa.Column("session_id", sa.String(32), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("events", sa.Integer, nullable=True),
    sa.Column("dropped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("digest", sa.String(64), nullable=True),
    sa.Column("audit_seq", sa.Integer, nullable=True),
    sa.Column("archive_key", sa.String(1024), nullable=True),
    sa.Column("archive_sha256", sa.String(64), nullable=True),
    sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True),
    # The replica that adds events to it while it is open (None: from before replicas).
    sa.Column("writer", sa.String(32), nullable=True),
)

# Data-access events: per statement that ran, who touched which relations and
# columns, masked or clear (server/audit/access.py).  An index over the ``access``
# events of the recordings, which the recordings' digests cover: ``session_id`` and
# ``seq`` name the event each row is read from, so ``audit verify`` can hold the
# rows to it.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Which columns of which relations a statement touched, and how, is the same for
# every statement of one shape: kept once per distinct set (its ``key``:
# :func:`shape_key`), and named by each statement's row.
access_shapes = sa.Table(
    "access_shapes",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
)

# One row per (shape, relation, column): ``column_name`` is empty where the
# statement touched the relation without a column of it being known (count(*),
# a DELETE's target); ``state`` is clear, masked, or exempt (a column a masking
# rule names that came back in clear, the session's groups being exempt).
access_shape_columns = sa.Table(
    "access_shape_columns",
    metadata,
    sa.Column("shape_id", _ID, sa.ForeignKey("access_shapes.id"), nullable=False),
    sa.Column("schema_name", sa.String(63), nullable=False),
    sa.Column("table_name", sa.String(63), nullable=False),
    sa.Column("column_name", sa.String(63), nullable=False),
    sa.Column("action", sa.String(10), nullable=False),
    sa.Column("state", sa.String(10), nullable=False),
)
sa.Index(
    "ix_access_shape_columns_relation",
    access_shape_columns.c.table_name,
    access_shape_columns.c.column_name,
    access_shape_columns.c.shape_id,
)
sa.Index("ix_access_shape_columns_shape", access_shape_columns.c.shape_id)


def shape_key(rows: Iterable[Sequence[str]]) -> str:
    """The ``access_shapes.key`` of a set of ``access_shape_columns`` rows (their
    values but ``shape_id``): the SHA-256 of their canonical text, in any order."""
    text = json.dumps(sorted(tuple(r) for r in rows), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# One row per run of statements: consecutive statements of one session (numbers
# ``seq`` to ``seq + statements - 1``, nothing recorded between them) that touched
# the same shape under the same facts, within ``server.audit.access.RUN_SPAN``
# of each other.  ``ts`` is the first's time, ``last_ts`` the last's; ``rows``
# their total; ``run``, for a run of several, each one's time (microseconds
# after ``ts``) and rows, as JSON ``[[0, 1], [153, 1], ...]``.
access_events = sa.Table(
    "access_events",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(32), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("identity", sa.String(200), nullable=False),
    sa.Column("identity_kind", sa.String(20), nullable=False),
    sa.Column("on_behalf_of", sa.String(200), nullable=True),
    sa.Column("command", sa.String(60), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=True),
    sa.Column("decision", sa.String(20), nullable=False),
    sa.Column("rule", sa.String(200), nullable=True),
    sa.Column("approval", sa.String(32), nullable=True),
    # What exempted the session from masking (``group dba``), where something did.
    sa.Column("exemption", sa.String(200), nullable=True),
    sa.Column("shape_id", _ID, sa.ForeignKey("access_shapes.id"), nullable=False),
    sa.Column("statements", sa.Integer, nullable=False, server_default="1"),
    sa.Column("last_ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run", sa.Text, nullable=True),
    sa.UniqueConstraint("session_id", "seq", name="uq_access_events_session_seq"),
)
sa.Index("ix_access_events_ts", access_events.c.ts)
sa.Index("ix_access_events_target_ts", access_events.c.target, access_events.c.ts)
sa.Index("ix_access_events_identity_ts", access_events.c.identity, access_events.c.ts)
sa.Index("ix_access_events_behalf_ts", access_events.c.on_behalf_of, access_events.c.ts)
sa.Index("ix_access_events_shape_ts", access_events.c.shape_id, access_events.c.ts)
