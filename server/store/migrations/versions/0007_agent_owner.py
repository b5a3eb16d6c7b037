"""Agent tokens: the person an ``agent`` identity acts for.

``owner`` is set on tokens of kind ``agent`` only (``dbaccess-server token
create --kind agent --owner alice``); the broker names it beside the agent in
sessions' audit events and recordings, and never lets the owner approve the
agent's requests.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("owner", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("owner")
