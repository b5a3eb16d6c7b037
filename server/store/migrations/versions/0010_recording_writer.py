"""The replica that writes a recording: ``session_recordings.writer``.

Only the writer adds events to an open recording; a replica that takes a
session over (its owner died) becomes the writer in one statement, so that a
replica taken for dead that still writes is refused rather than numbering an
event the same as the new writer's (server/audit/recording.py).  Recordings
from before this revision have none: any one replica may take them up.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("session_recordings") as batch:
        batch.add_column(sa.Column("writer", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("session_recordings") as batch:
        batch.drop_column("writer")
