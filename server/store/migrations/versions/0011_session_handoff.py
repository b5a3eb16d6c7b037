"""A session's credential sealed for a gateway replica: ``sessions.handoff``.

An API-only replica (``role: api``) serves no gateway: the credential it mints
for a session is stored sealed with the session's ticket (which the store never
holds), so that the gateway replica the client connects to, and only a holder
of the ticket, can open it (server/sessions/handoff.py).  Other replicas'
sessions have none.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("handoff", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("handoff")
