"""Identity: state for OIDC logins and workload-token replay protection.

``used_tokens`` remembers every ID token and workload token exchanged for a
broker token, by a hash of its issuer and ``jti`` (or of the whole token when it
has no ``jti``), until the token expires: a second exchange of the same token is
a replay.  Rows past ``expires_at`` can go; the broker prunes them as it inserts.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "used_tokens",
        sa.Column("token_key", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("issuer", sa.String(500), nullable=False),
        sa.Column("used_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("used_tokens")
