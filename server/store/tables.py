"""Table definitions of the broker's store (SQLAlchemy Core).

The same definitions serve SQLite (the embedded default) and PostgreSQL (several
broker replicas); the schema itself is created and upgraded only by the Alembic
migrations in ``server/store/migrations`` — these objects are for queries.
Timestamps are stored as timezone-aware UTC datetimes.
"""

from __future__ import annotations

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
