"""Masking as a wall inside the database: column-level grants without the masked columns.

With ``masking.database_grants`` the credential issuer leaves the masked columns
out of the session role's SELECT privilege, so that the role, should it log in
to PostgreSQL without the gateway, still cannot read them.
:func:`column_walls` says, per relation with masked columns, which columns the
role may read and which not (:class:`RelationWall`); :func:`database_side_grants`
writes the REVOKE and column GRANT statements for one role.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from server.gateway.masking.plans import masks
from server.gateway.masking.rules import _RELATIONS_WITH_ROWS, ColumnRef, MaskingRules


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class RelationWall:
    """A relation with masked columns: what a grant role may read of it, and what not."""

    schema: str
    table: str
    masked: tuple[str, ...]
    clear: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}"


def column_walls(rules: MaskingRules, columns: Iterable[ColumnRef]) -> tuple[RelationWall, ...]:
    """The relations of ``columns`` (as the catalog lists them) that have masked columns.

    A view column computed from masked columns counts as masked: the view reads
    with its owner's rights, so only its own columns can be withheld.  Sorted by
    schema and table; columns in catalog order.
    """
    by_relation: dict[tuple[str, str], list[ColumnRef]] = {}
    for column in columns:
        if column.relkind in _RELATIONS_WITH_ROWS:
            by_relation.setdefault((column.schema, column.table), []).append(column)
    walls: list[RelationWall] = []
    for (schema, table), cols in sorted(by_relation.items()):
        masked = [c for c in cols if masks(rules, c)]
        if masked:
            clear = [c for c in cols if c not in masked]
            walls.append(
                RelationWall(
                    schema,
                    table,
                    tuple(c.column for c in masked),
                    tuple(c.column for c in clear),
                )
            )
    return tuple(walls)


def database_side_grants(rules: MaskingRules, columns: Iterable[ColumnRef], role: str) -> list[str]:
    """Statements that leave masked columns out of ``role``'s SELECT privilege.

    For every relation with a masked column (:func:`column_walls`): ``REVOKE
    SELECT`` on the relation, then ``GRANT SELECT (clear columns)``, because a
    table-level grant makes column grants moot.  The caller runs the statements
    as the target's admin; privileges the role has through PUBLIC or other
    roles are not touched (the postgres issuer checks for those).
    """
    statements: list[str] = []
    for wall in column_walls(rules, columns):
        relation = f"{quote_ident(wall.schema)}.{quote_ident(wall.table)}"
        statements.append(f"REVOKE SELECT ON {relation} FROM {quote_ident(role)}")
        if wall.clear:
            names = ", ".join(quote_ident(c) for c in wall.clear)
            statements.append(f"GRANT SELECT ({names}) ON {relation} TO {quote_ident(role)}")
    return statements
