"""Where result columns come from: (table OID, attnum) → :class:`ColumnRef`, per target.

PostgreSQL's RowDescription names a plain column's origin only by numbers
(the relation's OID and the column's attnum).  The masking plan needs names,
so the catalog reads them from ``pg_class``/``pg_namespace``/``pg_attribute``
with the target's admin DSN, in the target's database, and keeps them.

One query loads every column of every relation with rows (tables, partitioned
tables, views, materialized views, foreign tables) into an immutable
:class:`CatalogSnapshot`; lookups are dictionary reads.  A snapshot is reloaded

* when it is older than ``max_age`` (the timer: DDL the gateway did not see,
  such as another client's, is picked up within that time; masking's hooks,
  which read :attr:`Catalog.current`, ask with :meth:`Catalog.reload_if_old`
  once each Query or pipeline is answered),
* after DDL a session ran through the gateway (``Catalog.reload_soon``, by
  masking's hooks),
* on a lookup of a relation it does not know (a table created since), at most
  once per ``miss_interval`` so that a stream of misses costs one query
  (:meth:`Catalog.origin`; readers of :attr:`Catalog.current` ask with
  :meth:`Catalog.reload_missing`).

Views: a RowDescription column of a view carries the *view's* OID.  The catalog
resolves which base columns a view reads from ``pg_depend`` (the dependencies
of the view's ``_RETURN`` rewrite rule: one row per column it references, or a
whole-relation row for a whole-row reference such as ``row_to_json(c)``, which
then stands for every column of that relation), transitively through views
of views.  It cannot tell which view column is computed from which of those,
so view columns come out as *derived* (``relkind`` ``v``/``m``, with
``sources``), and the masking plan decides them by lineage.

Loading blocks (psycopg, synchronous): the gateway calls
:meth:`Catalog.snapshot` or :meth:`Catalog.origin` from a worker thread, or
reads :attr:`Catalog.current` (never blocks, may be None or stale) on its
event loop and refreshes off it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import psycopg
from psycopg.conninfo import make_conninfo

from server.errors import Unavailable
from server.gateway.masking import ColumnRef
from server.policy.dsn import resolve_admin_dsn
from server.policy.model import TargetPolicy

DEFAULT_MAX_AGE: Final = 300.0
DEFAULT_MISS_INTERVAL: Final = 1.0

COLUMNS_SQL: Final = """
SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname, a.atttypid, c.relkind
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
"""

VIEW_SOURCES_SQL: Final = """
SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
WHERE d.refclassid = 'pg_catalog.pg_class'::regclass
  AND d.refobjid <> r.ev_class
  AND v.relkind IN ('v', 'm')
"""

# Functions a masked session's unqualified call may reach other than the
# built-ins (extensions' and users' functions): see ``masking_guard``.
FUNCTIONS_SQL: Final = """
SELECT DISTINCT p.proname
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
"""

Row = tuple[int, int, str, str, str, int, str]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogSnapshot:
    """The columns of one database at one moment; lookups only."""

    by_position: Mapping[tuple[int, int], ColumnRef]
    by_relation: Mapping[int, tuple[ColumnRef, ...]]
    loaded_at: float
    # Names of the functions outside pg_catalog and information_schema; None: not loaded.
    functions: frozenset[str] | None = None
    # (schema, table) -> its columns, for ``columns_of``: built with the snapshot,
    # as every statement of a masked session looks up each relation it names.
    by_name: Mapping[tuple[str, str], tuple[ColumnRef, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_name: dict[tuple[str, str], tuple[ColumnRef, ...]] = {}
        for columns in self.by_relation.values():
            if columns:
                by_name.setdefault((columns[0].schema, columns[0].table), columns)
        object.__setattr__(self, "by_name", by_name)

    def origin(self, table_oid: int, attnum: int) -> ColumnRef | None:
        return self.by_position.get((table_oid, attnum))

    def knows(self, table_oid: int) -> bool:
        return table_oid in self.by_relation

    def columns(self) -> list[ColumnRef]:
        return [column for columns in self.by_relation.values() for column in columns]

    def columns_of(self, schema: str, table: str) -> tuple[ColumnRef, ...]:
        return self.by_name.get((schema, table), ())


def build_snapshot(
    rows: Iterable[Row],
    view_sources: Iterable[tuple[int, int, int]],
    loaded_at: float,
    functions: Iterable[str] | None = None,
) -> CatalogSnapshot:
    """Assemble a snapshot from the two queries' rows (pure, so testable on its own)."""
    plain: dict[tuple[int, int], ColumnRef] = {}
    relations: dict[int, list[tuple[int, ColumnRef]]] = {}
    for oid, attnum, schema, table, column, type_oid, relkind in rows:
        ref = ColumnRef(schema, table, column, type_oid, relkind)
        plain[(oid, attnum)] = ref
        relations.setdefault(oid, []).append((attnum, ref))
    direct: dict[int, set[tuple[int, int]]] = {}
    for view_oid, ref_oid, ref_attnum in view_sources:
        targets = direct.setdefault(view_oid, set())
        if ref_attnum == 0:
            targets.update((ref_oid, attnum) for attnum, _ in relations.get(ref_oid, ()))
        else:
            targets.add((ref_oid, ref_attnum))

    resolved: dict[int, frozenset[ColumnRef]] = {}

    def base_columns(view_oid: int, seen: frozenset[int]) -> frozenset[ColumnRef]:
        if view_oid in resolved:
            return resolved[view_oid]
        found: set[ColumnRef] = set()
        for position in direct.get(view_oid, ()):
            ref = plain.get(position)
            if ref is None:
                continue
            if ref.derived and position[0] in direct and position[0] not in seen:
                found |= base_columns(position[0], seen | {position[0]})
            elif not ref.derived:
                found.add(ref)
        resolved[view_oid] = frozenset(found)
        return resolved[view_oid]

    by_position: dict[tuple[int, int], ColumnRef] = {}
    by_relation: dict[int, tuple[ColumnRef, ...]] = {}
    for oid, members in relations.items():
        out: list[ColumnRef] = []
        for attnum, ref in sorted(members, key=lambda m: m[0]):
            if ref.derived:
                ref = ColumnRef(
                    ref.schema,
                    ref.table,
                    ref.column,
                    ref.type_oid,
                    ref.relkind,
                    base_columns(oid, frozenset({oid})),
                )
            by_position[(oid, attnum)] = ref
            out.append(ref)
        by_relation[oid] = tuple(out)
    return CatalogSnapshot(
        MappingProxyType(by_position),
        MappingProxyType(by_relation),
        loaded_at,
        None if functions is None else frozenset(functions),
    )


class Catalog:
    """The cached column catalog of one target database."""

    def __init__(
        self,
        dsn: str | Callable[[], str],
        *,
        max_age: float = DEFAULT_MAX_AGE,
        miss_interval: float = DEFAULT_MISS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        connect_timeout: int = 10,
    ) -> None:
        self._dsn = dsn
        self.max_age = max_age
        self.miss_interval = miss_interval
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._stale = True
        self.current: CatalogSnapshot | None = None
        self.loads = 0
        # When a reader last asked for a reload (reload_if_old, reload_missing).
        self._asked = float("-inf")

    @classmethod
    def for_target(cls, target: TargetPolicy, **kwargs: Any) -> Catalog:
        """The catalog of a policy target, read with its admin DSN in its database."""

        def dsn() -> str:
            return make_conninfo(resolve_admin_dsn(target), dbname=target.database)

        return cls(dsn, **kwargs)

    def invalidate(self) -> None:
        """Forget what is known: the next lookup reloads (call after DDL)."""
        self._stale = True

    def reload_if_old(self) -> None:
        """For readers of :attr:`current` on the event loop, which never reload it
        themselves: a snapshot older than ``max_age`` is reloaded on a thread of its
        own (asked at most once per ``miss_interval``), so that DDL the gateway
        did not see reaches a connection that lives long."""
        snapshot = self.current
        if snapshot is None or self._clock() - snapshot.loaded_at < self.max_age:
            return
        self.reload_missing()

    def reload_missing(self) -> None:
        """For readers of :attr:`current` on the event loop that met a relation the
        snapshot does not hold (one created since the load): reloaded on a thread
        of its own, asked at most once per ``miss_interval`` by every reader of
        the catalog together (and with :meth:`reload_if_old`), so that a stream
        of such statements, on however many connections, costs one query."""
        now = self._clock()
        if now - self._asked < self.miss_interval:
            return
        self._asked = now
        self.reload_soon()

    def reload_soon(self) -> None:
        """Reload on a thread of its own, without waiting for it: for a lookup that
        met a relation the snapshot does not hold (one created since the load),
        made on the data path, which must not wait on the target's catalog."""
        self.invalidate()
        threading.Thread(target=self._reload_quietly, name="dbaccess-catalog", daemon=True).start()

    def _reload_quietly(self) -> None:
        try:
            self.refresh(only_if_stale=True)
        except Exception:
            log.warning("reloading the masking catalog failed", exc_info=True)

    def _fresh(self, snapshot: CatalogSnapshot | None) -> bool:
        return (
            snapshot is not None
            and not self._stale
            and self._clock() - snapshot.loaded_at < self.max_age
        )

    def snapshot(self) -> CatalogSnapshot:
        """The current snapshot, reloaded first when it is missing, invalidated or too old."""
        snapshot = self.current
        if self._fresh(snapshot):
            assert snapshot is not None
            return snapshot
        return self.refresh(only_if_stale=True)

    def refresh(self, *, only_if_stale: bool = False) -> CatalogSnapshot:
        """Reload now (one reload at a time; a caller that waited for another gets its result)."""
        with self._lock:
            snapshot = self.current
            if only_if_stale and self._fresh(snapshot):
                assert snapshot is not None
                return snapshot
            self._stale = False
            try:
                snapshot = self._load()
            except BaseException:
                self._stale = True
                raise
            self.current = snapshot
            return snapshot

    def origin(self, table_oid: int, attnum: int) -> ColumnRef | None:
        """The column at (table OID, attnum); an unknown relation triggers one reload."""
        snapshot = self.snapshot()
        found = snapshot.origin(table_oid, attnum)
        if found is not None or snapshot.knows(table_oid):
            return found
        if self._clock() - snapshot.loaded_at < self.miss_interval:
            return None
        return self.refresh().origin(table_oid, attnum)

    def columns(self) -> list[ColumnRef]:
        return self.snapshot().columns()

    def columns_of(self, schema: str, table: str) -> tuple[ColumnRef, ...]:
        return self.snapshot().columns_of(schema, table)

    def _load(self) -> CatalogSnapshot:
        dsn = self._dsn() if callable(self._dsn) else self._dsn
        started = self._clock()
        try:
            with psycopg.connect(
                dsn, autocommit=True, connect_timeout=self._connect_timeout
            ) as conn:
                rows: list[Row] = conn.execute(COLUMNS_SQL).fetchall()
                views: list[tuple[int, int, int]] = conn.execute(VIEW_SOURCES_SQL).fetchall()
                names = [str(r[0]) for r in conn.execute(FUNCTIONS_SQL).fetchall()]
        except psycopg.Error as exc:
            # libpq's messages can quote the connection string, which may hold a password.
            raise Unavailable(
                f"cannot read the target's catalog: {type(exc).__name__}",
                hint="check that the target is up and its admin DSN is valid",
            ) from None
        self.loads += 1
        return build_snapshot(rows, views, started, names)
