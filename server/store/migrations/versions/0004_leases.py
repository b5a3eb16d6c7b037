"""Credential leases: what a lease-based issuer (Vault/OpenBao) handed out, per session.

A lease outlives the broker process that obtained it, so its id is stored the
moment it is issued; a broker that restarts after a crash finds the leases that
were never revoked (``revoked_at`` is NULL) and revokes them.  ``role_oid`` is
the database role's OID when the broker could look it up (the target has an
admin DSN): backends keep it after the role is dropped, so they can still be
found and terminated.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "credential_leases",
        sa.Column("lease_id", sa.String(500), primary_key=True),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("session_id", sa.String(32), nullable=False, index=True),
        sa.Column("db_user", sa.String(63), nullable=False),
        sa.Column("role_oid", sa.BigInteger, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_index("ix_credential_leases_target_user", "credential_leases", ["target", "db_user"])


def downgrade() -> None:
    op.drop_index("ix_credential_leases_target_user", table_name="credential_leases")
    op.drop_table("credential_leases")
