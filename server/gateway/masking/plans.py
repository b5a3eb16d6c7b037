"""Per result shape, what happens to each column: :class:`MaskPlan`.

**Deciding** — :func:`plan_for_row_description` turns a RowDescription into a
:class:`MaskPlan`, one :class:`FieldPlan` per result column: clear, mask, or
block.  A column with an origin (table OID + attnum, which PostgreSQL reports
for plain columns, also through subqueries and CTEs) is looked up through
``origins`` (the catalog) and matched against the rules.  A view column (the
catalog marks those, with the base columns the view reads) that a rule does not
name is *derived*, as is a column without an origin (an expression, a UNION, a
function result): it is clear when ``lineage`` says none of its sources is
masked, masked (``redact``, or ``null`` when a source is nulled) when one is,
and **blocked** when its lineage cannot be established while the statement
touches masked data.  Derived values are never hashed or partially shown: a
hash of ``substr(card_number, 1, 1)`` or the "last four" of an expression would
give away more than the rule meant to.  ``lineage`` is called at most once per
plan and only when needed, so plain-column queries never pay for SQL analysis.
:func:`plan_for_columns` does the same from known columns; :func:`masks` says
whether a rule masks one column; :func:`session_notice` is the notice naming
the masked columns a session starts with.

**Types and formats** — a masked value is a string, so a masked column whose
type is not text-like (text, varchar, bpchar, name) is announced as ``text`` in
the RowDescription the client receives (:meth:`MaskPlan.row_description`):
``***`` is then a valid value in both formats, since the binary form of text is
its UTF-8.  ``partial`` and ``hash`` need the value's text; a binary value of
another type does not give it without a per-type decoder, so for those the plan
asks for text from upstream (:meth:`MaskPlan.bind_formats` gives the Bind
result formats to send instead of the client's: text for such columns; the
client cannot tell, the column being announced as text either way, and
:meth:`MaskPlan.row_description` shows it the formats it asked for).  A binary
value that arrives anyway (:meth:`MaskPlan.unmaskable`) becomes NULL in
``rows``; the relay refuses such a result before its rows.  ``null`` keeps the
column's type.

The plan hands out its row rewriters (:meth:`MaskPlan.masker`, one per formats,
compiled once); :func:`apply_plan` is the one-body form.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import cached_property
from typing import Final

from server.gateway.masking.rows import RowMasker
from server.gateway.masking.rules import TEXT_LIKE_TYPES, TEXT_OID, ColumnRef, MaskingRules
from server.gateway.pgwire import BINARY, TEXT, Field, ProtocolViolation
from server.policy.model import (
    MaskMethod,
    MaskRule,
)

# Types whose values cannot hold what the content detectors look for, in text
# or binary: booleans, integers of up to 10 digits, floats, dates and times,
# UUIDs, network addresses, LSNs.  (int8 and numeric can hold a card number.)
CLOSED_TYPES: Final = frozenset(
    {16, 21, 23, 26, 700, 701, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 869, 650, 829, 774, 3220}
)


class Action(Enum):
    CLEAR = "clear"
    MASK = "mask"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """What happens to one result column.

    ``rule`` carries the method and its settings; derived columns get a
    synthetic ``redact``/``null`` rule.  ``retype`` announces the column as
    ``text``.  ``source`` says why, for recordings and error messages.
    """

    name: str
    action: Action
    rule: MaskRule | None = None
    type_oid: int = 0
    retype: bool = False
    source: str = ""
    # Clear only because the session is exempt from the rule that would mask it
    # (``exempted``): said in its access facts.
    exempt: bool = False

    @property
    def method(self) -> MaskMethod | None:
        return self.rule.method if self.rule is not None else None

    @property
    def needs_text(self) -> bool:
        """Masking needs the value's text, which a binary value of this type does not give."""
        return (
            self.action is Action.MASK
            and self.type_oid not in TEXT_LIKE_TYPES
            and self.method in (MaskMethod.PARTIAL, MaskMethod.HASH)
        )


_DERIVED_REDACT: Final = MaskRule(method=MaskMethod.REDACT)
_DERIVED_NULL: Final = MaskRule(method=MaskMethod.NULL)

Lineage = Callable[[], Mapping[int, Collection[ColumnRef]] | None]
Touched = Callable[[], Iterable[ColumnRef] | None]


@dataclass(frozen=True)
class MaskPlan:
    """The decisions for one result shape; ``key`` hashes the ``hash`` columns."""

    fields: tuple[FieldPlan, ...]
    key: bytes = field(default=b"", repr=False)
    _maskers: dict[tuple[int, ...], RowMasker] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def masked(self) -> tuple[int, ...]:
        return tuple(i for i, f in enumerate(self.fields) if f.action is Action.MASK)

    @property
    def blocked(self) -> FieldPlan | None:
        """The first blocked column: the whole result must be refused."""
        return next((f for f in self.fields if f.action is Action.BLOCK), None)

    @cached_property
    def clear(self) -> bool:
        """Nothing to rewrite: the relay may forward rows untouched."""
        return all(f.action is Action.CLEAR for f in self.fields)

    def block_message(self) -> str | None:
        blocked = self.blocked
        if blocked is None:
            return None
        return f"result column {blocked.name!r} cannot be masked: {blocked.source}"

    def summary(self) -> list[dict[str, str]]:
        """The masked and blocked columns, for the session recording."""
        return [
            {
                "field": f.name,
                "action": f.action.value,
                "method": str(f.method or ""),
                "source": f.source,
            }
            for f in self.fields
            if f.action is not Action.CLEAR
        ]

    def row_description(
        self, fields: Sequence[Field], client_formats: Sequence[int] | None = None
    ) -> list[Field]:
        """The RowDescription fields the client is sent: masked non-text columns become text.

        ``client_formats`` (one per column) are the result formats the client's
        Bind asked for, when the gateway sent others upstream
        (:meth:`bind_formats`): a column announced as text is then described
        in the format the client asked for, since text has the same bytes in
        both and a driver may read every column in the format of the first.
        """
        out = list(fields)
        for i, plan in enumerate(self.fields):
            if plan.retype:
                fmt = out[i].format if client_formats is None else client_formats[i]
                out[i] = replace(
                    out[i], type_oid=TEXT_OID, type_size=-1, type_modifier=-1, format=fmt
                )
        return out

    def bind_formats(self, requested: Sequence[int]) -> list[int] | None:
        """The result formats a Bind must send upstream instead of ``requested``, or None.

        None when the client's formats do: no column that can only be masked
        as text (:attr:`FieldPlan.needs_text`) is asked for in binary.
        """
        wanted = self.upstream_formats(requested)
        if wanted == expand_formats(requested, len(self.fields)):
            return None
        return wanted

    def unmaskable(self, formats: Sequence[int]) -> FieldPlan | None:
        """The first column that needs its text to be masked but arrives in binary."""
        expanded = expand_formats(formats, len(self.fields))
        return next(
            (
                f
                for f, fmt in zip(self.fields, expanded, strict=True)
                if fmt == BINARY and f.needs_text
            ),
            None,
        )

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @cached_property
    def in_place(self) -> tuple[bool, ...]:
        """Per column: announced as a text type, so a detector finding can become ``***``
        inside the value in either format (other values become NULL)."""
        return tuple(f.retype or f.type_oid in TEXT_LIKE_TYPES for f in self.fields)

    @cached_property
    def scanned(self) -> tuple[bool, ...]:
        """Per column: whether detectors look at it (a masked value is masked already,
        and a value of a :data:`CLOSED_TYPES` type holds nothing they could find)."""
        return tuple(
            f.action is not Action.MASK and f.type_oid not in CLOSED_TYPES for f in self.fields
        )

    def upstream_formats(self, requested: Sequence[int]) -> list[int]:
        """Bind result formats to send upstream: text for columns that can only be masked as text.

        ``requested`` is what the client's Bind asked for (none, one for all, or
        one per column, as in the protocol); the answer is always one per column.
        """
        formats = expand_formats(requested, len(self.fields))
        return [
            TEXT if plan.needs_text else fmt for plan, fmt in zip(self.fields, formats, strict=True)
        ]

    def masker(self, formats: Sequence[int] = ()) -> RowMasker:
        """The DataRow rewriter for rows in ``formats`` (compiled once per formats)."""
        # Asked once per DataRow: the formats as given are a key too, so that the
        # common case is one dictionary lookup.
        given = formats if isinstance(formats, tuple) else tuple(formats)
        masker = self._maskers.get(given)
        if masker is None:
            key = tuple(expand_formats(formats, len(self.fields)))
            masker = self._maskers.get(key)
            if masker is None:
                masker = self._maskers[key] = RowMasker(self, key)
            self._maskers[given] = masker
        return masker


def expand_formats(formats: Sequence[int], count: int) -> list[int]:
    """Format codes as the protocol gives them (none: all text; one: all alike) → one per column."""
    if not formats:
        return [TEXT] * count
    if len(formats) == 1:
        return [formats[0]] * count
    if len(formats) != count:
        raise ProtocolViolation(f"{len(formats)} format codes for {count} columns")
    return list(formats)


def plan_for_row_description(
    fields: Sequence[Field],
    origins: Callable[[int, int], ColumnRef | None],
    rules: MaskingRules,
    lineage: Lineage,
    *,
    touched: Touched | None = None,
) -> MaskPlan:
    """Decide, for each column of a RowDescription, whether it is clear, masked or blocked.

    ``origins(table_oid, attnum)`` resolves a column's origin (the catalog).
    ``lineage()`` maps result positions to the base columns they are computed
    from, or returns None when the statement cannot be analysed; a position
    missing from the map counts as "cannot tell".  ``touched()``, when given,
    lists the columns of every relation the statement reads (None: unknown):
    if none of them is masked, columns without lineage are clear instead of
    blocked.
    """
    refs = (
        [
            origins(f.table_oid, f.column_attnum) if f.table_oid and f.column_attnum > 0 else None
            for f in fields
        ]
        if rules.active
        else [None] * len(fields)
    )
    return plan_for_columns(
        [(f.name, f.type_oid) for f in fields], refs, rules, lineage, touched=touched
    )


def plan_for_columns(
    columns: Sequence[tuple[str, int]],
    refs: Sequence[ColumnRef | None],
    rules: MaskingRules,
    lineage: Lineage,
    *,
    touched: Touched | None = None,
) -> MaskPlan:
    """Like :func:`plan_for_row_description`, for columns whose origins are known already.

    ``columns`` are (name, type OID) pairs and ``refs`` their origins (None:
    none known), e.g. the columns of ``COPY table (a, b) TO STDOUT``.
    """
    if not rules.active:
        return MaskPlan(tuple(FieldPlan(n, Action.CLEAR, type_oid=t) for n, t in columns))
    memo: list[Mapping[int, Collection[ColumnRef]] | None] = []
    touches: list[bool] = []

    def sources_of(index: int) -> Collection[ColumnRef] | None:
        if not memo:
            memo.append(lineage())
        found = memo[0]
        return None if found is None else found.get(index)

    def touches_masked() -> bool:
        if not touches:
            listed = touched() if touched is not None else None
            touches.append(listed is None or any(masks(rules, column) for column in listed))
        return touches[0]

    plans: list[FieldPlan] = []
    for index, ((name, type_oid), ref) in enumerate(zip(columns, refs, strict=True)):
        plans.append(_decide(index, name, type_oid, ref, rules, sources_of, touches_masked))
    return MaskPlan(tuple(plans), rules.key)


def exempted(plan: MaskPlan) -> MaskPlan:
    """The plan of a session exempt from the rules ``plan`` was made with: every column
    clear, those the rules would have masked marked ``exempt``."""
    return MaskPlan(
        tuple(
            FieldPlan(
                f.name,
                Action.CLEAR,
                type_oid=f.type_oid,
                # A blocked column's source is why, not where from.
                source="" if f.action is Action.BLOCK else f.source,
                exempt=f.action is Action.MASK,
            )
            for f in plan.fields
        )
    )


def masks(rules: MaskingRules, column: ColumnRef) -> bool:
    """Whether a column leaves masked: a rule names it, or it is a view column
    (not vouched for) over a masked one."""
    if rules.rule_for(column) is not None:
        return True
    return (
        column.derived
        and not rules.vouched(column)
        and any(masks(rules, source) for source in column.sources)
    )


# Schemas whose columns a session-start notice leaves out (a glob may match them).
_SYSTEM_SCHEMAS: Final = frozenset({"pg_catalog", "information_schema", "pg_toast"})
NOTICE_COLUMNS: Final = 20


def session_notice(rules: MaskingRules, columns: Iterable[ColumnRef] | None) -> str | None:
    """What a masked session is told when it logs in: the target's columns that
    leave masked in it (from the catalog's ``columns``; None: not loaded), each
    with its method (``derived`` for a view column over masked ones), and the
    content detectors.  None when nothing is masked or detected."""
    parts: list[str] = []
    if rules.active:
        found = sorted(
            (str(c), str(rule.method) if (rule := rules.rule_for(c)) is not None else "derived")
            for c in columns or ()
            if c.schema not in _SYSTEM_SCHEMAS and masks(rules, c)
        )
        if found:
            shown = ", ".join(f"{name} ({method})" for name, method in found[:NOTICE_COLUMNS])
            more = len(found) - NOTICE_COLUMNS
            parts.append(
                f"masked in this session: {shown}" + (f" and {more} more" if more > 0 else "")
            )
        else:
            rule_texts = [
                f"{r.column or r.pattern} ({r.method})"
                for r in rules.rules
                if r.method is not MaskMethod.CLEAR
            ]
            parts.append("masking rules apply in this session: " + ", ".join(rule_texts))
    if rules.detectors:
        kinds = ", ".join(f"{kind} ({action})" for kind, action in rules.detectors.items())
        parts.append(f"content detectors: {kinds}")
    if not parts:
        return None
    return "dbaccess: " + "; ".join(parts)


def _decide(
    index: int,
    name: str,
    type_oid: int,
    ref: ColumnRef | None,
    rules: MaskingRules,
    sources_of: Callable[[int], Collection[ColumnRef] | None],
    touches_masked: Callable[[], bool],
) -> FieldPlan:
    if ref is not None:
        rule = rules.rule_for(ref)
        if rule is not None:
            return _masked(name, type_oid, rule, str(ref))
        if rules.vouched(ref) or not ref.derived:
            return FieldPlan(name, Action.CLEAR, type_oid=type_oid, source=str(ref))
        if not any(masks(rules, source) for source in ref.sources):
            return FieldPlan(name, Action.CLEAR, type_oid=type_oid, source=str(ref))
    sources = sources_of(index)
    if sources is None:
        if ref is not None:
            return FieldPlan(
                name,
                Action.BLOCK,
                type_oid=type_oid,
                source=f"view column {ref} is computed from masked columns, and which "
                "ones cannot be told (an exact masking rule for it settles this)",
            )
        if not touches_masked():
            return FieldPlan(name, Action.CLEAR, type_oid=type_oid)
        return FieldPlan(
            name,
            Action.BLOCK,
            type_oid=type_oid,
            source="it is computed, the statement reads masked data, and where the "
            "column comes from cannot be established",
        )
    masked = sorted(str(s) for s in sources if masks(rules, s))
    if not masked:
        return FieldPlan(name, Action.CLEAR, type_oid=type_oid)
    nulled = any(
        (r := rules.rule_for(s)) is not None and r.method is MaskMethod.NULL for s in sources
    )
    rule = _DERIVED_NULL if nulled else _DERIVED_REDACT
    return _masked(name, type_oid, rule, "derived from " + ", ".join(masked))


def _masked(name: str, type_oid: int, rule: MaskRule, source: str) -> FieldPlan:
    retype = rule.method is not MaskMethod.NULL and type_oid not in TEXT_LIKE_TYPES
    return FieldPlan(name, Action.MASK, rule, type_oid, retype, source)


def apply_plan(plan: MaskPlan, datarow_body: bytes, formats: Sequence[int] = ()) -> bytes:
    """Rewrite the masked columns of one DataRow body; ``formats`` are the rows' format codes."""
    return plan.masker(formats).body(datarow_body)
