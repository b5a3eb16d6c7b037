"""Data-access events: who read or wrote which relations and columns, masked or clear.

``access_events`` holds one row per statement that ran (target, identity and
its kind, the person an agent acts for, command, rows, the guardrail decision
and the approval), ``access_columns`` one row per relation and column it
touched with the column's state (clear, masked, exempt).  Both are an index
over the recordings' ``access`` events (``session_id``, ``seq``), indexed for
the questions ``dbaccess audit access`` asks: by target, identity and time,
and by table and column.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "access_events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("identity", sa.String(200), nullable=False),
        sa.Column("identity_kind", sa.String(20), nullable=False),
        sa.Column("on_behalf_of", sa.String(200), nullable=True),
        sa.Column("command", sa.String(60), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=True),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("rule", sa.String(200), nullable=True),
        sa.Column("approval", sa.String(32), nullable=True),
        sa.UniqueConstraint("session_id", "seq", name="uq_access_events_session_seq"),
    )
    op.create_index("ix_access_events_ts", "access_events", ["ts"])
    op.create_index("ix_access_events_target_ts", "access_events", ["target", "ts"])
    op.create_index("ix_access_events_identity_ts", "access_events", ["identity", "ts"])
    op.create_index("ix_access_events_behalf_ts", "access_events", ["on_behalf_of", "ts"])
    op.create_table(
        "access_columns",
        sa.Column(
            "access_id",
            ID,
            sa.ForeignKey("access_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("schema_name", sa.String(63), nullable=False),
        sa.Column("table_name", sa.String(63), nullable=False),
        sa.Column("column_name", sa.String(63), nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
    )
    op.create_index(
        "ix_access_columns_relation",
        "access_columns",
        ["table_name", "column_name", "access_id"],
    )
    op.create_index("ix_access_columns_access", "access_columns", ["access_id"])


def downgrade() -> None:
    op.drop_table("access_columns")
    op.drop_table("access_events")
