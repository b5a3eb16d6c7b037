"""Session recordings: ordered events per session, and each recording's status and digest.

``session_events`` is keyed by (session, seq), so one session's events read back
in order with one index range scan and a sequence number cannot repeat.
``session_recordings.digest`` is the SHA-256 of the closed recording; the same
digest goes into the audit hash chain (``recording.closed``, ``audit_seq``), which
is what verification trusts.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "session_events",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_table(
        "session_recordings",
        sa.Column("session_id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("events", sa.Integer, nullable=True),
        sa.Column("dropped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("audit_seq", sa.Integer, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("session_recordings")
    op.drop_table("session_events")
