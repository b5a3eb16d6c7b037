"""Replicas: several brokers on one store, each session owned by one of them.

``broker_meta`` holds the deployment's identity (``deployment_id``, made here
once per store): every broker on this store marks the roles it creates with
it, so brokers of another deployment on the same target leave them alone.
``replicas`` has one row per broker process (an incarnation) with its heartbeat
lease; ``sessions.owner`` names the replica that holds a session's credential.
Sessions from before this revision have no owner and count as a dead one's.
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    meta = op.create_table(
        "broker_meta",
        sa.Column("key", sa.String(60), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.bulk_insert(meta, [{"key": "deployment_id", "value": secrets.token_hex(6)}])
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("api_url", sa.String(1024), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.Column("lease_expires_at", TS, nullable=False, index=True),
        sa.Column("stopped_at", TS, nullable=True),
    )
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("owner", sa.String(32), nullable=True))
        batch.create_index("ix_sessions_owner", ["owner"])


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_owner")
        batch.drop_column("owner")
    op.drop_table("replicas")
    op.drop_table("broker_meta")
