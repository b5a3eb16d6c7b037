"""The access index keeps a run of like statements as one row.

A gateway serving an application writes the same statement shape again and
again; one ``access_events`` row (and seven index entries) per statement was
most of what recording access facts cost.  A row now stands for a run:
consecutive statements of one session, under the same facts and shape, close
in time.  ``statements`` counts them, ``last_ts`` is the last one's time and
``run`` each one's time and rows (``server.audit.access``).  Every existing
row is a run of one; the downgrade gives each statement of a run its row back.
"""

from __future__ import annotations

import json
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_KEPT = (
    "session_id",
    "target",
    "identity",
    "identity_kind",
    "on_behalf_of",
    "command",
    "decision",
    "rule",
    "approval",
    "exemption",
    "shape_id",
)


def upgrade() -> None:
    with op.batch_alter_table("access_events") as batch:
        batch.add_column(sa.Column("statements", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("last_ts", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("run", sa.Text, nullable=True))
    op.execute("UPDATE access_events SET last_ts = ts")
    with op.batch_alter_table("access_events") as batch:
        batch.alter_column("last_ts", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    conn = op.get_bind()
    md = sa.MetaData()
    events = sa.Table(
        "access_events",
        md,
        sa.Column("id", ID),
        sa.Column("seq", sa.Integer),
        sa.Column("ts", sa.DateTime(timezone=True)),
        sa.Column("last_ts", sa.DateTime(timezone=True)),
        sa.Column("rows", sa.BigInteger),
        sa.Column("statements", sa.Integer),
        sa.Column("run", sa.Text),
        *(sa.Column(name, sa.String) for name in _KEPT if name != "shape_id"),
        sa.Column("shape_id", ID),
    )
    runs = conn.execute(sa.select(events).where(events.c.statements > 1)).all()
    for r in runs:
        m = r._mapping
        each = json.loads(m["run"])
        first = events.update().where(events.c.id == m["id"])
        conn.execute(first.values(rows=each[0][1], statements=1, last_ts=m["ts"], run=None))
        conn.execute(
            events.insert(),
            [
                {
                    **{name: m[name] for name in _KEPT},
                    "seq": m["seq"] + i,
                    "ts": m["ts"] + timedelta(microseconds=offset),
                    "last_ts": m["ts"] + timedelta(microseconds=offset),
                    "rows": rows,
                }
                for i, (offset, rows) in enumerate(each[1:], start=1)
            ],
        )
    with op.batch_alter_table("access_events") as batch:
        batch.drop_column("run")
        batch.drop_column("last_ts")
        batch.drop_column("statements")
