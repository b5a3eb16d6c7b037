"""Archived recordings: where a closed recording's object is, and whether the local copy is gone.

``archive_key`` and ``archive_sha256`` repeat what the ``recording.archived``
audit event holds (the chain is what reading back trusts); ``archived_at`` set
means uploaded, and ``pruned_at`` set means the local events were deleted after
the upload, so a missing event list is expected rather than tampering.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("session_recordings") as batch:
        batch.add_column(sa.Column("archive_key", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("archive_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("archived_at", TS, nullable=True))
        batch.add_column(sa.Column("pruned_at", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session_recordings") as batch:
        batch.drop_column("pruned_at")
        batch.drop_column("archived_at")
        batch.drop_column("archive_sha256")
        batch.drop_column("archive_key")
