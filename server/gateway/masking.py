"""Dynamic data masking: which result columns leave masked, and how, decided without I/O.

The policy's ``masking`` section becomes :class:`MaskingRules` for one session
in one place, :func:`session_rules`: the rules limited to the session's scope,
nothing at all for exempt groups and scopes, and the target's hashing key, read
(:func:`load_key`) when a ``hash`` rule is in force.  Every path that needs a
session's rules goes through it: the broker when a session starts (a missing
key refuses the session, naming the target and the key's source), the gateway
when a connection attaches, and ``dbaccess-server policy check``, which builds
them for every scope of every target to find a key that is missing, unreadable
or short before a session does.  A rule
names an exact ``schema.table.column`` or a column-name glob (``*email*``,
``card_*``, case-insensitive); exact rules win over globs, and among globs the
first in the file wins.  Methods:

* ``redact``  — the value becomes ``***``;
* ``partial`` — ``***`` and the last N characters (``***2345``), or ``***`` and the
  e-mail domain (``***@example.com``); values too short to keep anything become ``***``;
* ``hash``    — the first ``length`` hex digits of HMAC-SHA256 under the target's key:
  the same value always gives the same hash, so joins and GROUP BY still work,
  and without the key nobody can test guesses offline;
* ``null``    — SQL NULL;
* ``clear``   — (exact rules only) vouches for a column a glob would mask.

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
value that arrives anyway (:meth:`MaskPlan.unmaskable`) becomes NULL here; the
relay refuses such a result before its rows.  ``null`` keeps the column's type.

**Rewriting** — :class:`RowMasker` (``plan.masker(formats)``, cached per
formats) rewrites DataRow messages.  It walks only the length words up to the
last masked column (``struct.unpack_from`` on the buffer, no copies), copies
everything unmasked as slices of the original bytes, and leaves the final copy
to one ``b"".join`` per batch.  :meth:`RowMasker.rewrite_rows` works directly on
the wire bytes of many messages (what the relay's framing hands over), stopping
at the first message that is not a DataRow.  The per-plan loop is generated
once, unrolled for the masked positions and with each method's common case
inline (a generic loop over the columns costs about half as much again per row,
see ``bench/masking.py``); a row with a value off that path (NULL, too short to
keep characters from, a non-ASCII tail, no ``@``) is decoded, masked by
:func:`mask_bytes` and encoded again.  :func:`apply_plan` is the one-body form.
Where the C core ``server.gateway._rowmask`` was built (``NATIVE``), a plan
without a ``hash`` column runs its rows through it instead (``RowMasker.native``):
the same walk in C, writing a whole run into one bytes object, and handing every
row it does not take to the generated loop for that row, so the bytes and the
errors are the same either way (``tests/server/gateway/test_masking_native.py``).

**Content detectors** — :func:`screen_row` runs the target's detectors over a
DataRow (a few literal searches over the body when nothing is there; columns
already masked and columns of :data:`CLOSED_TYPES` are not looked at): a
finding becomes ``***`` inside a value of a column announced as text, NULL in
any other, and a kind whose action is ``block`` refuses the row.  :func:`screen_report` masks
findings in error and notice texts, :func:`screen_notification` and
:func:`screen_parameter` decide what a notification payload and a parameter
value leave as.

**Other exits** — :func:`redact_text` / :func:`redact_report` for error and
notice texts that echo data (``Key (email)=(x@y.z) already exists``, ``Failing
row contains (...)``, ``invalid input syntax ...: "..."``); :class:`CopyMasker`
for COPY TO STDOUT rows in text and CSV format; :func:`database_side_grants`
for column-level grants that leave masked columns out of a grant role, as a
wall inside the database.
"""

from __future__ import annotations

import fnmatch
import hmac
import os
import re
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import cached_property
from types import MappingProxyType, ModuleType
from typing import Final

from server.errors import Unavailable
from server.gateway.detectors import NO_DETECTORS, DetectorSet, Finding, mask_spans_bytes
from server.gateway.pgwire import BINARY, TEXT, Field, ProtocolViolation
from server.gateway.pgwire import DataRow as _DataRowMessage
from server.policy.model import (
    DetectorAction,
    DetectorKind,
    MaskingPolicy,
    MaskMethod,
    MaskRule,
    TargetPolicy,
)

TEXT_OID: Final = 25
# Types whose text and binary forms are both the UTF-8 of the value.
TEXT_LIKE_TYPES: Final = frozenset({25, 1043, 1042, 19})  # text, varchar, bpchar, name
REDACTED: Final = "***"
MIN_KEY_BYTES: Final = 16
# Types whose values cannot hold what the content detectors look for, in text
# or binary: booleans, integers of up to 10 digits, floats, dates and times,
# UUIDs, network addresses, LSNs.  (int8 and numeric can hold a card number.)
CLOSED_TYPES: Final = frozenset(
    {16, 21, 23, 26, 700, 701, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 869, 650, 829, 774, 3220}
)

_RELATIONS_WITH_ROWS: Final = frozenset("rpfvm")  # tables, partitions, foreign, views
_DERIVED_RELKINDS: Final = frozenset("vm")  # views and materialized views


# --------------------------------------------------------------------------
# Columns and rules


@dataclass(frozen=True, slots=True)
class ColumnRef:
    """A column of a relation; equal when schema, table and column are.

    ``relkind`` is PostgreSQL's (``r`` table, ``p`` partitioned, ``v`` view,
    ``m`` materialized view, ``f`` foreign).  For view columns ``sources`` holds
    the base columns the view reads (the catalog cannot tell which feed which).
    """

    schema: str
    table: str
    column: str
    type_oid: int = field(default=0, compare=False)
    relkind: str = field(default="r", compare=False)
    sources: frozenset[ColumnRef] = field(default=frozenset(), compare=False)

    @property
    def derived(self) -> bool:
        return self.relkind in _DERIVED_RELKINDS

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


@dataclass(frozen=True)
class MaskingRules:
    """The masking rules in force for one session: already limited to its scope.

    Empty (``NO_MASKING``) for targets without masking and for exempt sessions.
    ``key`` is the target's hashing key; it is kept out of ``repr``.
    """

    rules: tuple[MaskRule, ...] = ()
    key: bytes = field(default=b"", repr=False)
    detectors: Mapping[DetectorKind, DetectorAction] = field(
        default_factory=lambda: MappingProxyType({})
    )
    _exact: Mapping[str, MaskRule] = field(init=False, repr=False, compare=False)
    _globs: tuple[tuple[re.Pattern[str], MaskRule], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        exact = {r.column: r for r in self.rules if r.column is not None}
        globs = tuple(
            (re.compile(fnmatch.translate(r.pattern.lower())), r)
            for r in self.rules
            if r.pattern is not None
        )
        object.__setattr__(self, "_exact", MappingProxyType(exact))
        object.__setattr__(self, "_globs", globs)
        if not self.key and any(r.method is MaskMethod.HASH for r in self.rules):
            raise ValueError("hash rules need a key: build a session's rules with session_rules()")

    @classmethod
    def for_session(
        cls,
        policy: MaskingPolicy | None,
        scope: str,
        groups: Iterable[str],
        key: bytes = b"",
    ) -> MaskingRules:
        """The rules a session of ``scope`` by someone in ``groups`` is masked by, with
        ``key`` given (the pure core of :func:`session_rules`, which reads the key)."""
        rules = _in_force(policy, scope, groups)
        if policy is None or rules is None:
            return NO_MASKING
        return cls(rules, key, policy.detectors)

    @classmethod
    def for_scope(cls, policy: MaskingPolicy | None, scope: str) -> MaskingRules:
        """Which columns are masked in ``scope``, for deciding only: exempt groups are not
        considered (a scope's grant roles serve everyone in it), and ``hash`` rules stand
        as ``redact`` so that no key is needed and nothing can be hashed with a wrong one."""
        rules = _in_force(policy, scope, ())
        if rules is None:
            return NO_MASKING
        return cls(
            tuple(
                replace(r, method=MaskMethod.REDACT) if r.method is MaskMethod.HASH else r
                for r in rules
            )
        )

    @cached_property
    def detector_set(self) -> DetectorSet:
        """The content detectors the target enables (none for exempt sessions)."""
        return DetectorSet.of(self.detectors) if self.detectors else NO_DETECTORS

    @cached_property
    def active(self) -> bool:
        """Whether anything is masked at all (so a plan can skip every lookup)."""
        return any(r.method is not MaskMethod.CLEAR for r in self.rules)

    def rule_for(self, column: ColumnRef) -> MaskRule | None:
        """The rule that masks ``column``, or None when it is shown as it is."""
        rule = self._exact.get(str(column))
        if rule is None:
            name = column.column.lower()
            for pattern, candidate in self._globs:
                if pattern.match(name):
                    rule = candidate
                    break
        if rule is None or rule.method is MaskMethod.CLEAR:
            return None
        return rule

    def vouched(self, column: ColumnRef) -> bool:
        """An exact ``clear`` rule names this column."""
        rule = self._exact.get(str(column))
        return rule is not None and rule.method is MaskMethod.CLEAR


NO_MASKING: Final = MaskingRules()


def session_rules(
    target: TargetPolicy,
    scope: str,
    groups: Iterable[str],
    *,
    environ: Mapping[str, str] | None = None,
) -> MaskingRules:
    """The masking rules of a session of ``scope`` on ``target`` by someone in ``groups``.

    The one place rules are built for a session: the key is read (from the
    target's ``key_file`` or ``key_env``, see :func:`load_key`) only when a
    ``hash`` rule is in force for this session, so exempt sessions and scopes
    without hashing never depend on it.  Raises
    :class:`~server.errors.Unavailable` naming the target and the key's source
    when that key is missing, unreadable or short.
    """
    policy = target.masking
    rules = _in_force(policy, scope, groups)
    if policy is None or rules is None:
        return NO_MASKING
    hashing = any(r.method is MaskMethod.HASH for r in rules)
    key = load_key(policy, target.name, environ=environ) if hashing else b""
    return MaskingRules(rules, key, policy.detectors)


def masking_key_problems(
    targets: Iterable[TargetPolicy],
    *,
    environment: bool,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """What keeps a session of some scope of ``targets`` from getting its masking
    rules (a missing, unreadable or short key), found with :func:`session_rules`
    itself, for ``policy check``.  Keys from ``key_env`` are checked only when
    ``environment`` says this is where the broker runs."""
    problems: list[str] = []
    for target in targets:
        policy = target.masking
        if policy is None or (policy.key_env is not None and not environment):
            continue
        for scope in target.scopes:
            try:
                # Outside the exempt groups: the rules most sessions get.
                session_rules(target, scope, (), environ=environ)
            except Unavailable as exc:
                problems.append(exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))
                break  # one key per target: said once
    return problems


def _in_force(
    policy: MaskingPolicy | None, scope: str, groups: Iterable[str]
) -> tuple[MaskRule, ...] | None:
    """The rules of ``policy`` in force in ``scope`` for ``groups``; None: exempt (or none)."""
    if policy is None or scope in policy.exempt_scopes:
        return None
    if not policy.exempt_groups.isdisjoint(groups):
        return None
    return tuple(r for r in policy.rules if not r.scopes or scope in r.scopes)


def load_key(
    policy: MaskingPolicy, target: str, *, environ: Mapping[str, str] | None = None
) -> bytes:
    """The hashing key of a target's masking section, read now (like the admin DSN).

    Returns ``b""`` when the section names no key.  Raises
    :class:`~server.errors.Unavailable` when the key is missing or shorter than
    16 bytes; the key itself never appears in a message.
    """
    env = os.environ if environ is None else environ
    if policy.key_env is not None:
        where = f"environment variable {policy.key_env}"
        key = env.get(policy.key_env, "").strip().encode()
    elif policy.key_file is not None:
        where = f"file {policy.key_file}"
        try:
            key = policy.key_file.read_bytes().strip()
        except OSError as exc:
            raise Unavailable(
                f"target {target!r}: masking key {where} cannot be read "
                f"({exc.strerror or type(exc).__name__})"
            ) from None
    else:
        return b""
    if len(key) < MIN_KEY_BYTES:
        raise Unavailable(
            f"target {target!r}: masking key from {where} is "
            f"{'missing' if not key else 'shorter than 16 bytes'}",
            hint="generate one with: head -c 32 /dev/urandom | base64",
        )
    return key


# --------------------------------------------------------------------------
# Values


def hash_value(key: bytes, value: bytes, length: int) -> str:
    """The keyed hash a ``hash`` rule shows: hex HMAC-SHA256, cut to ``length`` digits."""
    return hmac.digest(key, value, "sha256").hex()[:length]


def mask_value(rule: MaskRule, key: bytes, value: str) -> str | None:
    """A value as ``rule`` shows it (None is SQL NULL); the reference for the fast paths."""
    method = rule.method
    if method is MaskMethod.NULL:
        return None
    if method is MaskMethod.HASH:
        return hash_value(key, value.encode(), rule.hash_length)
    if method is MaskMethod.PARTIAL:
        if rule.keep_domain:
            at = value.rfind("@")
            return REDACTED + value[at:] if at > 0 else REDACTED
        keep = rule.keep_last or 0
        # value[-0:] would be the whole value: slice from the front so keep=0 shows nothing.
        return REDACTED + value[len(value) - keep :] if len(value) > keep else REDACTED
    if method is MaskMethod.CLEAR:
        return value
    return REDACTED


# --------------------------------------------------------------------------
# Plans


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


# --------------------------------------------------------------------------
# DataRow rewriting

_INT32 = struct.Struct("!i")
_HEADER = struct.Struct("!BI")
_DATA_ROW: Final = ord("D")
_STARS: Final = REDACTED.encode()
_REDACTED_VALUE: Final = (_INT32.pack(len(_STARS)) + _STARS,)
_NULL_VALUE: Final = (b"\xff\xff\xff\xff",)


def mask_bytes(
    rule: MaskRule, key: bytes, value: bytes | None, *, fmt: int = TEXT, type_oid: int = TEXT_OID
) -> bytes | None:
    """One wire value as ``rule`` shows it (None is NULL): the reference for the fast path.

    Text values are UTF-8 (the gateway pins client_encoding), so masking their
    text and encoding it again gives back valid UTF-8; ``surrogateescape`` only
    makes sure nothing is lost should a value not be.  Hashes are over the bytes.
    """
    if value is None:
        return None
    method = rule.method
    if method is MaskMethod.REDACT:
        return _STARS
    if method is MaskMethod.NULL or (fmt == BINARY and type_oid not in TEXT_LIKE_TYPES):
        # partial and hash need the text a binary value of this type does not give.
        return None
    if method is MaskMethod.HASH:
        return hash_value(key, value, rule.hash_length).encode()
    masked = mask_value(rule, key, value.decode("utf-8", "surrogateescape"))
    return None if masked is None else masked.encode("utf-8", "surrogateescape")


# The generated loop.  Per DataRow it reads the header and column count in one
# unpack, walks the length words up to the last masked column, and, when every
# masked value takes its common path (not NULL, long enough, an ASCII tail, an
# '@' to keep the domain from), emits the row with one ``extend``: the new
# header, the unmasked stretches as slices of the input, the new values between
# them.  Any other row goes to ``slow_row``, which decodes and re-encodes it.
_ROW_TEMPLATE = """\
def {name}(buf, pos, out):
    end = len(buf)
    extend = out.extend
    {loop} end - pos >= 7:
        kind, length, columns = header(buf, pos)
        stop = pos + 1 + length
        if kind != 68 or stop > end:
            return pos
        if columns != count:
            bad_count(buf, pos)
        p = pos + 7
        d = 0
        while True:
{walk}
            if p > stop:
                overrun()
            extend((pack_header(68, length + d), buf[pos + 5:s0]{pieces}, buf[p:stop]))
            break
        pos = stop{after}
    if end - pos >= 5 and buf[pos] == 68:
        short_row(buf, pos, end)
    return pos
"""

_SKIP = """\
            n, = unpack(buf, p)
            p += 4 + n if n > 0 else 4
"""

# Each masked column: s{i} is where its length word starts, p ends up after its
# value.  A value off the common path hands the row to slow_row and leaves the
# one-pass "while True" that only exists to be left this way.
_SLOW = """\
                slow_row(buf, pos, stop, out)
                break
"""

_CODE_CONST = """\
            n, = unpack(buf, p)
            if n < 0:
{slow}
            s{i} = p
            p += 4 + n
            d += {size} - n
"""

_CODE_HASH = """\
            n, = unpack(buf, p)
            if n < 0:
{slow}
            s{i} = p
            p += 4 + n
            h{i} = digest(key, buf[p - n:p], "sha256").hex()[:{size}].encode()
            d += {size} - n
"""

_CODE_KEEP_LAST = """\
            n, = unpack(buf, p)
            if n <= {keep}:
{slow}
            s{i} = p
            p += 4 + n
            t{i} = buf[p - {keep}:p]
            if not t{i}.isascii():
{slow}
            d += {size} - n
"""

_CODE_DOMAIN = """\
            n, = unpack(buf, p)
            if n < 0:
{slow}
            s{i} = p
            p += 4 + n
            a{i} = buf.rfind(b"@", s{i} + 5, p)
            m{i} = 3 + p - a{i}
            if a{i} < 0 or m{i} > 255:
{slow}
            d += m{i} - n
"""

_HEADER_COUNT = struct.Struct("!BIH")
# The C core (server/gateway/_rowmask.c), where it was built.
_rowmask: ModuleType | None
try:
    from server.gateway import _rowmask as _core

    _rowmask = _core
except ImportError:  # pragma: no cover - no compiler where the package was installed
    _rowmask = None
NATIVE: Final = _rowmask is not None
# The C core's column kinds (the same numbers as in _rowmask.c).
_CONST, _KEEP_LAST, _DOMAIN = 0, 1, 2
# Length word and "***" for every new value size below 256 (the domain is kept after it).
_STARS_BY_SIZE: Final = tuple(_INT32.pack(size) + _STARS for size in range(256))


def _column_kind(rule: MaskRule, fmt: int, type_oid: int) -> tuple[str, bytes | int]:
    """How one masked column is rewritten: ("const", the whole new value with its
    length word), ("hash", digits), ("domain", 0) or ("keep", characters kept)."""
    method = rule.method
    if method is MaskMethod.NULL or (
        fmt == BINARY and type_oid not in TEXT_LIKE_TYPES and method is not MaskMethod.REDACT
    ):
        return "const", _NULL_VALUE[0]
    if method is MaskMethod.HASH:
        return "hash", rule.hash_length
    if method is MaskMethod.PARTIAL and rule.keep_domain:
        return "domain", 0
    if method is MaskMethod.PARTIAL:
        return "keep", rule.keep_last or 0
    return "const", _REDACTED_VALUE[0]


def _column_code(
    i: int, kind: str, param: bytes | int, names: dict[str, object]
) -> tuple[str, str]:
    """The generated lines that mask one column, and the pieces that stand for its value.

    The pieces follow the stretch before the column (``buf[e:s{i}]``), where
    ``e`` is where the previous masked value ended.
    """
    if kind == "const":
        assert isinstance(param, bytes)
        names[f"c{i}"] = param
        return _CODE_CONST.format(i=i, size=len(param) - 4, slow=_SLOW), f", c{i}"
    assert isinstance(param, int)
    if kind == "hash":
        names[f"w{i}"] = _INT32.pack(param)
        return _CODE_HASH.format(i=i, size=param, slow=_SLOW), f", w{i}, h{i}"
    if kind == "domain":
        return _CODE_DOMAIN.format(i=i, slow=_SLOW), f", stars[m{i}], buf[a{i}:e{i}]"
    names[f"w{i}"] = _INT32.pack(3 + param) + _STARS
    code = _CODE_KEEP_LAST.format(i=i, keep=param, size=3 + param, slow=_SLOW)
    return code, f", w{i}, t{i}"


class RowMasker:
    """Rewrites the DataRows of one result shape (a plan and the rows' format codes).

    ``native`` says whether runs of rows go through the C core
    (``server.gateway._rowmask``; ``NATIVE`` says whether it was built), which
    every plan without a ``hash`` column does unless ``native=False`` is asked.
    """

    def __init__(
        self, plan: MaskPlan, formats: tuple[int, ...], *, native: bool | None = None
    ) -> None:
        self.plan = plan
        self.formats = formats
        self.count = len(plan.fields)
        self.identity = not plan.masked
        # A column that needs its text but comes in binary: the relay refuses
        # such rows; this masker would send NULL for them.
        self.unmaskable = plan.unmaskable(formats)
        self.native = False
        self._rewrite = self._compile(NATIVE if native is None else native)

    def _compile(self, native: bool) -> Callable[[bytes, int, list[bytes]], int]:
        names: dict[str, object] = {
            "header": _HEADER_COUNT.unpack_from,
            "pack_header": _HEADER.pack,
            "unpack": _INT32.unpack_from,
            "digest": hmac.digest,
            "key": self.plan.key,
            "count": self.count,
            "stars": _STARS_BY_SIZE,
            "bad_count": self._bad_count,
            "slow_row": self._slow_row,
            "short_row": _short_row,
            "overrun": _overrun,
        }
        walk: list[str] = []
        pieces: list[str] = []
        columns: list[tuple[int, int, bytes, int]] = []
        column = 0
        for i, index in enumerate(self.plan.masked):
            plan = self.plan.fields[index]
            assert plan.rule is not None
            walk.extend(_SKIP for _ in range(index - column))
            column = index + 1
            kind, param = _column_kind(plan.rule, self.formats[index], plan.type_oid)
            code, value = _column_code(i, kind, param, names)
            walk.append(code)
            walk.append(f"            e{i} = p\n")
            if i:
                pieces.append(f", buf[e{i - 1}:s{i}]")
            pieces.append(value)
            if isinstance(param, bytes):
                columns.append((index, _CONST, param, 0))
            elif kind == "keep":
                columns.append((index, _KEEP_LAST, _INT32.pack(3 + param) + _STARS, param))
            elif kind == "domain":
                columns.append((index, _DOMAIN, b"", 0))
            else:
                native = False  # the C core leaves HMAC to Python
        if not walk:
            # Nothing masked: rows pass whole.
            walk.append("            s0 = p = stop\n")
        body = {"walk": "".join(walk).rstrip("\n"), "pieces": "".join(pieces)}
        # Generated so that the loop is unrolled for this plan's masked positions
        # and methods; a loop over a list of columns costs about half as much
        # again per row.  Only the fixed templates above go into it.  The
        # one-row form is what the C core hands the rows it does not take.
        source = _ROW_TEMPLATE.format(name="rewrite_rows", loop="while", after="", **body)
        if native and _rowmask is not None:
            source += _ROW_TEMPLATE.format(
                name="rewrite_row", loop="if", after="\n        return pos", **body
            )
        exec(compile(source, "<row masker>", "exec"), names)  # noqa: S102
        try:
            if native and _rowmask is not None:
                core = _rowmask.Masker(self.count, columns, names["rewrite_row"])
                self.native = True
                rewrite: Callable[[bytes, int, list[bytes]], int] = core.rewrite
                return rewrite
            return names["rewrite_rows"]  # type: ignore[return-value]
        except KeyError:  # pragma: no cover - the template always defines them
            raise AssertionError("row masker template defines no function") from None

    def _slow_row(self, buf: bytes, pos: int, stop: int, out: list[bytes]) -> None:
        """A row the generated path does not take: decoded, masked value by value, encoded."""
        values = _row_values(buf, pos + 5, stop)
        plan = self.plan
        for index in plan.masked:
            rule = plan.fields[index].rule
            assert rule is not None
            values[index] = mask_bytes(
                rule,
                plan.key,
                values[index],
                fmt=self.formats[index],
                type_oid=plan.fields[index].type_oid,
            )
        out.append(_DataRowMessage(values).encode())

    def _bad_count(self, buf: bytes, pos: int) -> None:
        if int.from_bytes(buf[pos + 1 : pos + 5], "big") < 6:
            raise ProtocolViolation("malformed DataRow message: no column count")
        got = int.from_bytes(buf[pos + 5 : pos + 7], "big")
        raise ProtocolViolation(f"DataRow has {got} columns, its RowDescription {self.count}")

    def rewrite_rows(self, buf: bytes, pos: int, out: list[bytes]) -> int:
        """Rewrite the run of DataRows in ``buf`` from ``pos``; returns where the run ends.

        The masked messages are appended to ``out`` (as pieces: join them once
        for the whole batch).  The run ends at the first message that is not a
        DataRow, or that is not complete in ``buf``.  Raises
        :class:`ProtocolViolation` for a malformed row.
        """
        try:
            return self._rewrite(buf, pos, out)
        except struct.error:
            raise ProtocolViolation("malformed DataRow message: value runs past its end") from None

    def message(self, body: bytes) -> bytes:
        """The whole masked DataRow message (type, length, body) for one DataRow body."""
        wire = _HEADER.pack(_DATA_ROW, len(body) + 4) + body
        out: list[bytes] = []
        if self.rewrite_rows(wire, 0, out) != len(wire):
            raise ProtocolViolation("malformed DataRow message")
        return b"".join(out)

    def body(self, body: bytes) -> bytes:
        """The masked body of one DataRow body."""
        return self.message(body)[5:]


def _overrun() -> None:
    raise ProtocolViolation("malformed DataRow message: a value runs past the message")


def _row_values(buf: bytes, start: int, stop: int) -> list[bytes | None]:
    values: list[bytes | None] = []
    pos = start + 2
    for _ in range(int.from_bytes(buf[start : start + 2], "big")):
        (length,) = _INT32.unpack_from(buf, pos)
        pos += 4
        if length < 0:
            values.append(None)
            continue
        if pos + length > stop:
            _overrun()
        values.append(buf[pos : pos + length])
        pos += length
    if pos != stop:
        raise ProtocolViolation(f"malformed DataRow message: {stop - pos} bytes of trailing data")
    return values


def _short_row(buf: bytes, pos: int, end: int) -> None:
    length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
    if pos + 1 + length <= end:
        raise ProtocolViolation("malformed DataRow message: no column count")


def apply_plan(plan: MaskPlan, datarow_body: bytes, formats: Sequence[int] = ()) -> bytes:
    """Rewrite the masked columns of one DataRow body; ``formats`` are the rows' format codes."""
    return plan.masker(formats).body(datarow_body)


# --------------------------------------------------------------------------
# Texts: errors, notices, notifications, parameter values

_KEY_DETAIL = re.compile(r"Key \((?P<cols>[^)]*)\)=\((?P<vals>.*)\)(?P<rest>[^)]*)$", re.DOTALL)
_FAILING_ROW = re.compile(r"(?P<head>Failing row contains \().*(?P<tail>\)\.?)$", re.DOTALL)
_QUOTED = re.compile(r'(?P<head>: )"(?:[^"]|"")*"')
# Report fields that may echo data: message, detail, hint, context, internal query.
REPORT_TEXT_FIELDS: Final = frozenset("MDHWq")


def redact_text(
    text: str,
    masked_values: Iterable[str] = (),
    *,
    masked_columns: Collection[str] = (),
    touches_masked: bool = False,
) -> str:
    """``text`` with masked data taken out.

    * every occurrence of a value in ``masked_values`` (longest first) becomes ``***``;
    * ``Key (cols)=(values)`` keeps the columns and loses the values when one of
      the columns is in ``masked_columns`` (lower-case names), or always when
      ``touches_masked``;
    * with ``touches_masked`` also ``Failing row contains (...)`` and quoted
      values after a colon (``invalid input syntax for type integer: "..."``),
      which is how a cast or a check echoes a value the statement read.
    """
    for value in sorted({v for v in masked_values if v}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    match = _KEY_DETAIL.search(text)
    if match:
        columns = {c.strip().strip('"').lower() for c in match["cols"].split(",")}
        if touches_masked or not columns.isdisjoint(c.lower() for c in masked_columns):
            text = text[: match.start("vals")] + REDACTED + text[match.end("vals") :]
    if touches_masked:
        text = _FAILING_ROW.sub(lambda m: m["head"] + REDACTED + m["tail"], text)
        text = _QUOTED.sub(lambda m: m["head"] + '"' + REDACTED + '"', text)
    return text


def redact_report(
    fields: Mapping[str, str],
    masked_values: Iterable[str] = (),
    *,
    masked_columns: Collection[str] = (),
    touches_masked: bool = False,
) -> dict[str, str]:
    """An ErrorResponse/NoticeResponse field map with :func:`redact_text` applied to its texts."""
    values = tuple(masked_values)
    return {
        code: redact_text(
            value, values, masked_columns=masked_columns, touches_masked=touches_masked
        )
        if code in REPORT_TEXT_FIELDS
        else value
        for code, value in fields.items()
    }


# --------------------------------------------------------------------------
# Content detectors on what leaves


@dataclass(frozen=True, slots=True)
class Screened:
    """A DataRow after the content detectors.

    ``body`` is the body to send instead (None: the row leaves as it came);
    ``blocked`` says which column and detector, without the value, when a
    finding's kind blocks: the whole result must then be refused.
    """

    body: bytes | None = None
    blocked: str | None = None


UNCHANGED: Final = Screened()


def screen_row(
    detectors: DetectorSet,
    body: bytes,
    names: Sequence[str] = (),
    *,
    in_place: Sequence[bool] | None = None,
    scanned: Sequence[bool] | None = None,
) -> Screened:
    """What the detectors leave of one DataRow body.

    Nothing found — the common case, one search over the whole body — gives
    :data:`UNCHANGED`.  A finding whose kind blocks refuses the row.  Otherwise
    each finding in a column with ``in_place[i]`` becomes ``***`` inside its
    value (the column is announced as text, whose bytes are the same in both
    formats, so the value stays valid); in any other column the whole value
    becomes NULL, since ``***`` inside an integer, a date or a binary value is no
    value of its type and a driver would misread it.  ``in_place`` None: no
    column is known to be text.  ``scanned[i]`` False skips column i.
    """
    scan = detectors.scan_row(body, scanned)
    if not scan.findings:
        return UNCHANGED
    if scan.blocked is not None:
        column = next(c for c, f in scan.findings if f is scan.blocked)
        name = names[column] if column < len(names) else f"#{column + 1}"
        return Screened(
            blocked=f"result column {name!r} holds what the {scan.blocked.kind} detector "
            f"({scan.blocked.name}) recognises"
        )
    by_column: dict[int, list[Finding]] = {}
    for column, finding in scan.findings:
        by_column.setdefault(column, []).append(finding)
    values = _row_values(body, 0, len(body))
    for column, findings in by_column.items():
        value = values[column]
        text = in_place is not None and column < len(in_place) and in_place[column]
        if text and value is not None:
            values[column] = mask_spans_bytes(value, findings)
        else:
            values[column] = None
    return Screened(body=_DataRowMessage(values).encode()[5:])


def screen_report(fields: Mapping[str, str], detectors: DetectorSet) -> dict[str, str]:
    """An ErrorResponse/NoticeResponse field map with what the detectors find in its texts
    replaced by ``***``, whatever the action: a report is not refused, only emptied."""
    return {
        code: detectors.mask(value) if code in REPORT_TEXT_FIELDS else value
        for code, value in fields.items()
    }


def screen_notification(payload: str, *, masked: bool, detectors: DetectorSet) -> str:
    """The payload a NotificationResponse leaves with.

    With masking rules in force a non-empty payload becomes ``***``: it is free
    text with no column origin to decide by, and it may come from a trigger
    or another session (``pg_notify(channel, NEW.ssn)``), so whether it holds
    masked data cannot be told; detectors would only catch what has a known
    shape.  The notification itself still arrives (its channel is one the
    client chose to LISTEN to, its sender pid is no data), so code that waits
    for it keeps working.  Without rules (detectors only), what the detectors
    find becomes ``***``.
    """
    if not payload:
        return payload
    if masked:
        return REDACTED
    return detectors.mask(payload)


# Reported parameters whose values the server checks against a vocabulary of
# its own (encodings, styles, on/off, numbers, time zones) or sets itself;
# drivers read some of them to decode values (client_encoding, DateStyle,
# IntervalStyle, TimeZone, integer_datetimes, standard_conforming_strings), so
# they must arrive as they are.
VOCABULARY_PARAMETERS: Final = frozenset(
    {
        "server_version",
        "server_encoding",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "timezone",
        "integer_datetimes",
        "standard_conforming_strings",
        "is_superuser",
        "in_hot_standby",
        "default_transaction_read_only",
        "scram_iterations",
    }
)


def screen_parameter(
    name: str,
    value: str,
    *,
    masked: bool,
    detectors: DetectorSet,
    written: Callable[[str], bool],
) -> str:
    """The value a ParameterStatus leaves with.

    What the detectors find becomes ``***``.  With masking rules in force, a
    free-text parameter (``application_name``, ``session_authorization``, any
    not in :data:`VOCABULARY_PARAMETERS`) keeps its value only when
    ``written(value)``, i.e. the client's own SQL holds it (``SET
    application_name = 'x'``); otherwise something else set it — a function
    calling ``set_config(..., email, ...)`` — and it becomes ``***``.
    """
    out = detectors.mask(value)
    if masked and out and name.lower() not in VOCABULARY_PARAMETERS and not written(out):
        return REDACTED
    return out


# --------------------------------------------------------------------------
# COPY TO STDOUT


@dataclass(frozen=True)
class CopyFormat:
    """How a COPY's rows are written (from its options): text or CSV, and their characters."""

    csv: bool = False
    delimiter: str = ""
    null: str | None = None
    quote: str = '"'
    escape: str = ""
    header: bool = False

    @property
    def sep(self) -> str:
        return self.delimiter or ("," if self.csv else "\t")

    @property
    def null_text(self) -> str:
        if self.null is not None:
            return self.null
        return "" if self.csv else "\\N"

    @property
    def escape_char(self) -> str:
        return self.escape or self.quote


_TEXT_ESCAPES: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_TEXT_UNESCAPES: Final = {v: k for k, v in _TEXT_ESCAPES.items()}


class CopyMasker:
    """Masks the rows of one COPY TO STDOUT, one CopyData payload (one row) at a time.

    Text format: fields split at unescaped delimiters, ``\\N`` (or the NULL
    string) is NULL, backslash escapes are undone before masking and redone
    after.  CSV: fields may be quoted (quotes doubled, or escaped with the
    ESCAPE character); an unquoted NULL string is NULL; masked values are
    always written quoted.  With HEADER the first row is the column names and
    passes as it is.  Binary COPY cannot be masked: ``blocked`` says so.
    """

    def __init__(self, plan: MaskPlan, overall_format: int, fmt: CopyFormat) -> None:
        self.plan = plan
        self.fmt = fmt
        self.masked = {i: plan.fields[i] for i in plan.masked}
        self.identity = not self.masked and plan.blocked is None
        self.blocked: str | None = plan.block_message()
        if self.blocked is None and overall_format == BINARY and self.masked:
            self.blocked = "a binary COPY of masked columns cannot be masked: use text or CSV"
        self._rows = 0

    def row(self, payload: bytes) -> bytes:
        """One CopyData payload, masked."""
        self._rows += 1
        if self.identity or (self.fmt.header and self._rows == 1):
            return payload
        if self.blocked is not None:
            raise ValueError(self.blocked)
        text = payload.decode("utf-8")
        ending = "\r\n" if text.endswith("\r\n") else "\n" if text.endswith("\n") else ""
        line = text[: len(text) - len(ending)]
        out = self._csv(line) if self.fmt.csv else self._text(line)
        return (out + ending).encode("utf-8")

    def _value(self, index: int, value: str | None) -> str | None:
        plan = self.masked.get(index)
        if plan is None or value is None:
            return value
        assert plan.rule is not None
        return mask_value(plan.rule, self.plan.key, value)

    def _text(self, line: str) -> str:
        sep = self.fmt.sep
        null = self.fmt.null_text
        raw = _split_text(line, sep)
        if len(raw) != len(self.plan.fields):
            raise ProtocolViolation(f"COPY row has {len(raw)} fields, not {len(self.plan.fields)}")
        out: list[str] = []
        for index, field_text in enumerate(raw):
            if index not in self.masked:
                out.append(field_text)
                continue
            value = None if field_text == null else _unescape_text(field_text)
            masked = self._value(index, value)
            out.append(null if masked is None else _escape_text(masked, sep))
        return sep.join(out)

    def _csv(self, line: str) -> str:
        fmt = self.fmt
        sep, quote, escape = fmt.sep, fmt.quote, fmt.escape_char
        fields = _split_csv(line, sep, quote, escape)
        if len(fields) != len(self.plan.fields):
            raise ProtocolViolation(
                f"COPY row has {len(fields)} fields, not {len(self.plan.fields)}"
            )
        out: list[str] = []
        for index, (field_text, quoted) in enumerate(fields):
            if index not in self.masked:
                out.append(field_text)
                continue
            if not quoted and field_text == fmt.null_text:
                value: str | None = None
            else:
                value = _unquote_csv(field_text, quote, escape) if quoted else field_text
            masked = self._value(index, value)
            if masked is None:
                out.append(fmt.null_text)
            else:
                if escape == quote:
                    inner = masked.replace(quote, quote + quote)
                else:
                    inner = masked.replace(escape, escape + escape).replace(quote, escape + quote)
                out.append(quote + inner + quote)
        return sep.join(out)


def _split_text(line: str, sep: str) -> list[str]:
    if "\\" not in line:
        return line.split(sep)
    fields: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            current.append(line[i : i + 2])
            i += 2
            continue
        if ch == sep:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    fields.append("".join(current))
    return fields


def _unescape_text(text: str) -> str:
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_TEXT_ESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _escape_text(text: str, sep: str) -> str:
    out: list[str] = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch in _TEXT_UNESCAPES:
            out.append("\\" + _TEXT_UNESCAPES[ch])
        elif ch == sep:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _split_csv(line: str, sep: str, quote: str, escape: str) -> list[tuple[str, bool]]:
    """Fields as written (quotes kept for quoted ones), and whether each was quoted."""
    fields: list[tuple[str, bool]] = []
    i, size = 0, len(line)
    while True:
        if i < size and line[i] == quote:
            j = i + 1
            while j < size:
                ch = line[j]
                if ch == escape and escape != quote and j + 1 < size:
                    j += 2
                    continue
                if ch == quote:
                    if escape == quote and j + 1 < size and line[j + 1] == quote:
                        j += 2
                        continue
                    break
                j += 1
            if j >= size:
                raise ProtocolViolation("COPY CSV row has an unterminated quoted field")
            fields.append((line[i : j + 1], True))
            i = j + 1
        else:
            j = line.find(sep, i)
            j = size if j < 0 else j
            fields.append((line[i:j], False))
            i = j
        if i >= size:
            return fields
        if line[i] != sep:
            raise ProtocolViolation("COPY CSV row has text after a quoted field")
        i += 1
        if i == size:
            fields.append(("", False))
            return fields


def _unquote_csv(text: str, quote: str, escape: str) -> str:
    inner = text[1:-1]
    if escape == quote:
        return inner.replace(quote + quote, quote)
    out: list[str] = []
    i = 0
    while i < len(inner):
        if inner[i] == escape and i + 1 < len(inner):
            out.append(inner[i + 1])
            i += 2
        else:
            out.append(inner[i])
            i += 1
    return "".join(out)


# --------------------------------------------------------------------------
# Grants inside the database


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
