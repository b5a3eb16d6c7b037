"""What exempted a statement's session from masking: ``access_events.exemption``.

An access event of a session exempt from masking (its groups or its scope are
in the target's ``masking.exempt``) names the exemption (``group dba``,
``scope admin``), so that the evidence report can say under which exemption a
masked column was read in clear.  Events indexed before this revision have
none.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("access_events") as batch:
        batch.add_column(sa.Column("exemption", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_events") as batch:
        batch.drop_column("exemption")
