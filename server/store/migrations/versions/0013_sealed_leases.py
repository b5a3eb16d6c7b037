"""Vault lease ids sealed with the store key: ``credential_leases.lease_sealed``.

A lease id is what a broker needs to revoke a lease after a restart, so it must
stay readable by the broker, and by nothing else that holds a copy of the store.
The lease id is now kept sealed with the key of ``store_key_file``
(server/store/sealing.py) in ``lease_sealed``, and ``lease_id`` holds only its
SHA-256 (``sha256:<hex>``), by which the row is found.  Rows from before keep
their lease id in clear until a broker with a key opens the store: it seals
them in place (``Store.seal_at_rest``) — the schema change alone cannot, since
the key is not the store's.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credential_leases") as batch:
        batch.add_column(sa.Column("lease_sealed", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credential_leases") as batch:
        batch.drop_column("lease_sealed")
