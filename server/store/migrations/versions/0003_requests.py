"""Just-in-time access: access requests and their approvals.

Both tables are built for concurrent deciders: a request row carries a
``version`` that every change bumps (changes are conditional UPDATEs on it),
``approvals`` has one row per (request, approver), and a partial unique index
allows one pending access request per requester, target and scope.  The
``kind`` column and the nullable ``statement``/``statement_sha256``/``parameters``
columns leave room for statement reviews next to plain access requests.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
PENDING_ACCESS = sa.text("status = 'pending' AND kind = 'access'")


def upgrade() -> None:
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False, server_default="access"),
        sa.Column("requester", sa.String(200), nullable=False, index=True),
        sa.Column("requester_groups", sa.JSON, nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("ttl_seconds", sa.Integer, nullable=False),
        sa.Column("start_at", TS, nullable=True),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("min_approvals", sa.Integer, nullable=False),
        sa.Column("approver_groups", sa.JSON, nullable=False),
        sa.Column("approver_identities", sa.JSON, nullable=False),
        sa.Column("approval_ttl_seconds", sa.Integer, nullable=False),
        sa.Column("pending_ttl_seconds", sa.Integer, nullable=False),
        sa.Column("single_use", sa.Boolean, nullable=False),
        sa.Column("grant_expires_at", TS, nullable=True),
        sa.Column("used_at", TS, nullable=True),
        sa.Column("use_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("session_id", sa.String(32), nullable=True),
        sa.Column("statement", sa.Text, nullable=True),
        sa.Column("statement_sha256", sa.String(64), nullable=True),
        sa.Column("parameters", sa.JSON, nullable=True),
    )
    op.create_index(
        "uq_access_requests_one_pending",
        "access_requests",
        ["requester", "target", "scope"],
        unique=True,
        sqlite_where=PENDING_ACCESS,
        postgresql_where=PENDING_ACCESS,
    )
    op.create_table(
        "approvals",
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
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("request_id", "approver", name="uq_approvals_request_approver"),
    )


def downgrade() -> None:
    op.drop_table("approvals")
    op.drop_index("uq_access_requests_one_pending", table_name="access_requests")
    op.drop_table("access_requests")
