"""The access index's columns kept once per statement shape: ``access_shapes``.

``access_columns`` held one row per statement, relation and column, so a
statement's index cost as many rows (and index entries) as it touched columns,
though every statement of one shape touches the same ones.  Each distinct set
of those rows is now kept once: ``access_shapes`` (the set's key, the SHA-256
of its canonical text: ``server.store.tables.shape_key``) and
``access_shape_columns``; each ``access_events`` row names its set by
``shape_id``.  The upgrade moves every statement's rows into the shapes, a
thousand statements at a time; the downgrade gives each statement its rows
back.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from server.store.tables import shape_key

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_CHUNK = 1_000
_ROW = ("schema_name", "table_name", "column_name", "action", "state")


def upgrade() -> None:
    shapes = op.create_table(
        "access_shapes",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
    )
    shape_columns = op.create_table(
        "access_shape_columns",
        sa.Column("shape_id", ID, sa.ForeignKey("access_shapes.id"), nullable=False),
        *(
            sa.Column(name, sa.String(63 if name.endswith("_name") else 10), nullable=False)
            for name in _ROW
        ),
    )
    op.create_index(
        "ix_access_shape_columns_relation",
        "access_shape_columns",
        ["table_name", "column_name", "shape_id"],
    )
    op.create_index("ix_access_shape_columns_shape", "access_shape_columns", ["shape_id"])
    with op.batch_alter_table("access_events") as batch:
        batch.add_column(sa.Column("shape_id", ID, nullable=True))

    conn = op.get_bind()
    md = sa.MetaData()
    events = sa.Table("access_events", md, sa.Column("id", ID), sa.Column("shape_id", ID))
    columns = sa.Table(
        "access_columns", md, sa.Column("access_id", ID), *(sa.Column(n, sa.String) for n in _ROW)
    )
    known: dict[str, int] = {}
    after = -1
    while True:
        ids = list(
            conn.execute(
                sa.select(events.c.id)
                .where(events.c.id > after)
                .order_by(events.c.id)
                .limit(_CHUNK)
            ).scalars()
        )
        if not ids:
            break
        rows: dict[int, list[tuple[str, ...]]] = {i: [] for i in ids}
        for r in conn.execute(sa.select(columns).where(columns.c.access_id.in_(ids))):
            rows[r.access_id].append(tuple(r._mapping[n] for n in _ROW))
        by_shape: dict[int, list[int]] = {}
        for event_id, its in rows.items():
            key = shape_key(its)
            shape = known.get(key)
            if shape is None:
                shape = conn.execute(
                    shapes.insert().values(key=key).returning(shapes.c.id)
                ).scalar_one()
                known[key] = shape
                if its:
                    conn.execute(
                        shape_columns.insert(),
                        [dict(zip(("shape_id", *_ROW), (shape, *row), strict=True)) for row in its],
                    )
            by_shape.setdefault(shape, []).append(event_id)
        for shape, event_ids in by_shape.items():
            conn.execute(events.update().where(events.c.id.in_(event_ids)).values(shape_id=shape))
        after = ids[-1]

    with op.batch_alter_table("access_events") as batch:
        batch.alter_column("shape_id", existing_type=ID, nullable=False)
        batch.create_foreign_key(
            "fk_access_events_shape_id_access_shapes", "access_shapes", ["shape_id"], ["id"]
        )
    op.create_index("ix_access_events_shape_ts", "access_events", ["shape_id", "ts"])
    op.drop_table("access_columns")


def downgrade() -> None:
    op.create_table(
        "access_columns",
        sa.Column(
            "access_id",
            ID,
            sa.ForeignKey("access_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        *(
            sa.Column(name, sa.String(63 if name.endswith("_name") else 10), nullable=False)
            for name in _ROW
        ),
    )
    op.execute(
        "INSERT INTO access_columns (access_id, " + ", ".join(_ROW) + ") "
        "SELECT e.id, " + ", ".join(f"c.{n}" for n in _ROW) + " "
        "FROM access_events e JOIN access_shape_columns c ON c.shape_id = e.shape_id"
    )
    op.create_index(
        "ix_access_columns_relation",
        "access_columns",
        ["table_name", "column_name", "access_id"],
    )
    op.create_index("ix_access_columns_access", "access_columns", ["access_id"])
    op.drop_index("ix_access_events_shape_ts", "access_events")
    with op.batch_alter_table("access_events") as batch:
        batch.drop_constraint("fk_access_events_shape_id_access_shapes", type_="foreignkey")
        batch.drop_column("shape_id")
    op.drop_table("access_shape_columns")
    op.drop_table("access_shapes")
