"""Masking rules for one session, the hashing key, and what each method does to a value.

The policy's ``masking`` section becomes :class:`MaskingRules` for one session
in one place, :func:`session_rules`: the rules limited to the session's scope,
nothing at all for exempt groups and scopes, and the target's hashing key, read
(:func:`load_key`) when a ``hash`` rule is in force.  Every path that needs a
session's rules goes through it: the broker when a session starts (a missing
key refuses the session, naming the target and the key's source), the gateway
when a connection attaches, and ``dbaccess-server policy check``, which builds
them for every scope of every target (:func:`masking_key_problems`) to find a key
that is missing, unreadable or short before a session does.  A rule names an
exact ``schema.table.column`` or a column-name glob (``*email*``, ``card_*``,
case-insensitive); exact rules win over globs, and among globs the first in the
file wins.  Methods (:func:`mask_value`):

* ``redact``  — the value becomes ``***``;
* ``partial`` — ``***`` and the last N characters (``***2345``), or ``***`` and the
  e-mail domain (``***@example.com``); values too short to keep anything become ``***``;
* ``hash``    — the first ``length`` hex digits of HMAC-SHA256 under the target's key
  (:func:`hash_value`): the same value always gives the same hash, so joins and
  GROUP BY still work, and without the key nobody can test guesses offline;
* ``null``    — SQL NULL;
* ``clear``   — (exact rules only) vouches for a column a glob would mask.

A :class:`ColumnRef` is a column of a relation as the catalog describes it
(with, for a view column, the base columns it reads).
"""

from __future__ import annotations

import fnmatch
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import Final

from server.errors import Unavailable
from server.gateway.detectors import NO_DETECTORS, DetectorSet
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


_RELATIONS_WITH_ROWS: Final = frozenset("rpfvm")  # tables, partitions, foreign, views
_DERIVED_RELKINDS: Final = frozenset("vm")  # views and materialized views


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

    @classmethod
    def exempted_from(
        cls, policy: MaskingPolicy | None, scope: str, groups: Iterable[str]
    ) -> tuple[MaskingRules, str] | None:
        """For a session exempt from masking: the rules of its scope it is exempt from
        (as :meth:`for_scope` gives them) and what exempts it (``scope S``, or
        ``group G`` for the first of its exempt groups); None when it is not
        exempt or nothing would be masked."""
        if policy is None:
            return None
        if scope in policy.exempt_scopes:
            exemption = f"scope {scope}"
        else:
            exempt = sorted(policy.exempt_groups.intersection(groups))
            if not exempt:
                return None
            exemption = f"group {exempt[0]}"
        rules = cls.for_scope(replace(policy, exempt_scopes=frozenset()), scope)
        return (rules, exemption) if rules.active else None

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
