"""Limits the database enforces, pinned: no statement or login through the gateway changes them.

A scope's timeouts and ``temp_file_limit`` (``server.policy.limits``) are
attached to the session role when it is created and sent again as startup
parameters at every upstream login, so they hold from the first statement and
even where the gateway is bypassed.  What PostgreSQL cannot stop is the
session changing them itself: ``statement_timeout`` and the other timeouts are
user-settable.  So the gateway refuses every way of changing a pinned limit
before it reaches the server, failing closed where it cannot tell:

==========================================  ====================================
how                                         refused when
==========================================  ====================================
``SET``/``SET LOCAL``/``SET SESSION``,      the setting is pinned, or its name
``SET … TO DEFAULT``, ``RESET``,            cannot be read (``set_config`` with
``set_config(…)`` in any spelling,          a computed name or a parameter that
``UPDATE pg_settings``                      is not known yet)
``RESET ALL``, ``DISCARD ALL``              always (they touch every setting)
``ALTER ROLE``/``USER``/``DATABASE``        the text names a pinned setting,
``… SET``/``RESET``                         ``set_config``, ``pg_settings`` or
                                            ``RESET ALL``
``CREATE RULE`` (actions run later)        the same
``DO``, ``CREATE``/``ALTER FUNCTION``,      the same, or the body runs SQL built
``PROCEDURE``, ``ROUTINE`` (their ``SET``   at run time (``EXECUTE``), spells a
clauses and bodies)                         name with Unicode escapes (``U&"…"``)
                                            or is in a language other than SQL
                                            and PL/pgSQL (the word after each
                                            ``LANGUAGE``, comments skipped),
                                            which the gateway cannot read
other DDL (an aggregate's ``SFUNC``, a      its text names ``set_config``,
view, which stores a query)                 ``pg_settings`` or uses Unicode
                                            escapes
a statement the analysis did not            its text names a pinned setting
understand
a startup parameter                         it names a pinned setting
                                            (``options`` is refused anyway)
==========================================  ====================================

``SHOW`` and ``current_setting`` read the limits and stay allowed.  The
statements are judged together with what they run inside themselves
(``Statement.walk``), and the scan of text is over the whole input, not the
analysis's 2000-character excerpt, so nothing hides behind a long body, and
it reads the text both as written and with its backslash escapes decoded, so
nothing hides in a body written as an ``E'…'`` string either.

Advisory locks (``pg_advisory_lock``, ``pg_try_advisory_lock``, their
``_shared`` and ``_xact_`` forms) outlive statements and, taken by one session
and held, stall everyone who waits for the same key; they are refused unless
the scope's ``limits.advisory_locks`` is true: called, or named in a body or
DDL whose text the scan reads.  Unlocking stays allowed.

Every refusal is a :class:`~server.gateway.guardrails.Decision` with rule
``limits.pinned`` (or ``limits.advisory_locks``) and the limit's policy key,
which the guard answers with SQLSTATE 42501 like any other, naming the limit
and the scope that sets it, and records as a ``limit`` event (:func:`limit_hit`;
:func:`startup_limit_hit` for a startup parameter).  :func:`decide_pins`,
:func:`startup_refusal` and these two are pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from server.audit.recording import LimitHit
from server.gateway.guardrails import ALLOWED, Decision, Outcome
from server.gateway.sqlcheck import Analysis, Feature, Statement, StatementClass, skip_blanks
from server.policy.limits import database_settings
from server.policy.model import SessionLimits

PINNED_RULE = "limits.pinned"
# What a refusal names as its limit when it cannot tell which pinned setting a
# statement would change (a computed name, RESET ALL): all of them.
PINNED_LIMITS = "limits"
ADVISORY_RULE = "limits.advisory_locks"
_ANY_SETTING = "*"
_ALL_SETTINGS = "all"
# Statements that attach settings to something other than the session: the
# role (for its next logins), the database, a function (while it runs).
_CONFIGURING = ("ALTER ROLE", "ALTER USER", "ALTER DATABASE", "ALTER GROUP", "ALTER SYSTEM")
# Statements that store SQL to run later, as rules' actions do.
_STORING = ("CREATE RULE",)
# Languages whose bodies the scan below can read: SQL and PL/pgSQL statements.
_READABLE_LANGUAGES = frozenset({"sql", "plpgsql"})
_LANGUAGE_WORD = re.compile(r"\blanguage\b")
_LANGUAGE_NAME = re.compile(r"'([^']*)'|\"([^\"]*)\"|([a-z0-9_$]+)")
_UNICODE_ESCAPE = re.compile(r"\bu&['\"]")
_RESET_ALL = re.compile(r"\breset\s+all\b")
_EXECUTE = re.compile(r"\bexecute\b")
_NAMELESS = ("set_config", "pg_settings")
_ADVISORY = re.compile(r"pg_(?:try_)?advisory_(?:xact_)?lock(?:_shared)?")
# A backslash escape of an E'…' string, as PostgreSQL decodes it.
_BACKSLASH = re.compile(
    r"\\(?:x([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([0-7]{1,3})|(.))",
    re.DOTALL,
)
_CONTROL = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class LimitPins:
    """What one session may not change: ``settings`` (names as PostgreSQL spells them),
    and whether it may take advisory locks.  ``scope`` names it in messages."""

    settings: frozenset[str]
    target: str
    scope: str
    advisory_locks: bool = False
    # The pinned settings' values, in PostgreSQL's units (for the recording).
    values: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, limits: SessionLimits, target: str, scope: str) -> LimitPins:
        """The pins of a scope's limits: every database limit that is not off."""
        values = database_settings(limits)
        return cls(frozenset(values), target, scope, limits.advisory_locks, values)

    def where(self) -> str:
        return f"scope {self.scope!r} of target {self.target!r}"


def _refusal(pins: LimitPins, what: str, setting: str | None, index: int | None) -> Decision:
    if setting is None:
        message = (
            f"{what}; the limits that {pins.where()} sets "
            f"({', '.join(sorted(pins.settings))}) are fixed"
        )
    else:
        message = f"{what}; {setting} is a limit that {pins.where()} sets"
    return Decision(
        Outcome.BLOCK,
        PINNED_RULE,
        message,
        f"the limits come from the policy (limits.{setting or '…'} of {pins.where()}); "
        "ask an administrator to raise them there, or use a scope with other limits",
        index,
        limit=setting or PINNED_LIMITS,
    )


def decide_pins(analysis: Analysis, sql: str, pins: LimitPins) -> Decision:
    """ALLOWED, or the refusal of the first statement of ``sql`` that would change a
    pinned limit or take an advisory lock the scope does not allow."""
    for top in analysis.statements:
        for statement, _when in top.walk():
            refused = _judge(statement, sql, pins, top.index)
            if refused is not None:
                return refused
    return ALLOWED


def _judge(st: Statement, sql: str, pins: LimitPins, index: int) -> Decision | None:
    if pins.settings:
        for setting in st.settings:
            if setting in pins.settings:
                return _refusal(
                    pins, f"{st.command or 'this statement'} changes {setting}", setting, index
                )
            if setting == _ANY_SETTING:
                return _refusal(
                    pins,
                    f"{st.command or 'this statement'} changes a setting whose name the "
                    "gateway cannot read",
                    None,
                    index,
                )
            if setting == _ALL_SETTINGS:
                return _refusal(pins, f"{st.command} resets every setting", None, index)
        if not st.settings and any(
            call.name == "set_config" and call.schema in (None, "pg_catalog")
            for call in st.functions
        ):
            # A call the analysis saw but could not attribute (a statement it did
            # not parse whole): which setting it changes is unknown.
            return _refusal(
                pins,
                f"{st.command or 'this statement'} calls set_config on a setting the "
                "gateway cannot read",
                None,
                index,
            )
        scanned = _scan(st, sql, pins)
        if scanned is not None:
            return _refusal(pins, scanned[0], scanned[1], index)
    if not pins.advisory_locks:
        for call in st.functions:
            if _ADVISORY.fullmatch(call.name) and call.schema in (None, "pg_catalog"):
                return _advisory_refusal(pins, f"{call}() takes an advisory lock", index)
        if _reads_text(st):
            # A body, or a function named without a call (an aggregate's SFUNC),
            # takes the lock when it runs, out of the analysis's sight.
            named = _ADVISORY.search(_readable(sql))
            if named is not None:
                command = st.command or "this statement"
                return _advisory_refusal(
                    pins, f"{command} calls {named[0]}, which takes an advisory lock", index
                )
    return None


def _advisory_refusal(pins: LimitPins, what: str, index: int) -> Decision:
    return Decision(
        Outcome.BLOCK,
        ADVISORY_RULE,
        f"{what}, which {pins.where()} does not allow",
        "advisory locks outlive statements and stall whoever waits for the same "
        f"key; an administrator can allow them with limits.advisory_locks: true "
        f"for {pins.where()}",
        index,
        limit="advisory_locks",
    )


def _reads_text(st: Statement) -> bool:
    # DDL names functions without calling them (an aggregate's SFUNC, an
    # operator's FUNCTION, a cast's) and stores queries (a view over
    # pg_settings, updatable through its rules): what runs later is read now.
    return (
        Feature.CODE in st.features
        or st.kind is StatementClass.UNKNOWN
        or st.kind is StatementClass.DDL
        or st.command.startswith(_CONFIGURING)
        or st.command.startswith(_STORING)
    )


def reads_text(analysis: Analysis) -> bool:
    """Whether :func:`decide_pins` looks at the text of ``sql`` as well as the
    analysis (which two texts of one analysis may then be decided apart)."""
    return any(_reads_text(st) for st in analysis.walk_all())


def _scan(st: Statement, sql: str, pins: LimitPins) -> tuple[str, str | None] | None:
    """For statements whose effect on settings the analysis does not list: a look at the
    whole text, refusing anything that names a pinned setting or a way to reach one."""
    if not _reads_text(st):
        return None
    code = Feature.CODE in st.features
    text = _readable(sql)
    command = st.command or "this statement"
    # Plain DDL (a table, an aggregate) may have a column named like a limit;
    # only what can run code or attach settings is refused for naming one.
    plain_ddl = (
        st.kind is StatementClass.DDL
        and not code
        and not st.command.startswith(_CONFIGURING)
        and not st.command.startswith(_STORING)
    )
    if not plain_ddl:
        for setting in sorted(pins.settings):
            if setting in text:
                return f"{command} names {setting}", setting
    if st.kind is StatementClass.UNKNOWN:
        return None  # refused by the guardrails; nothing here names a limit
    if _UNICODE_ESCAPE.search(text):
        # U&"set\005fconfig" is set_config to PostgreSQL and no name to the scan.
        return f"{command} spells a name with Unicode escapes, which the gateway cannot read", None
    for word in _NAMELESS:
        if word in text:
            return f"{command} uses {word}, which may change any setting", None
    if _RESET_ALL.search(text):
        return f"{command} resets every setting", None
    if code:
        if _EXECUTE.search(text):
            return f"{command} runs SQL built at run time, which the gateway cannot read", None
        for language in _languages(text):
            if language not in _READABLE_LANGUAGES:
                return (
                    f"{command} runs code in language {language or '(unreadable)'}, "
                    "which the gateway cannot read",
                    None,
                )
    return None


def _readable(sql: str) -> str:
    """``sql`` in lower case for the scan, followed, when it has backslashes, by
    the same text with every backslash escape decoded as in an ``E'…'`` string.

    A body written as an escape string (``DO E'… s\\x65t_config …'``) runs
    decoded; decoding the whole text rather than finding the escape strings
    first cannot miss one, and whatever it decodes that PostgreSQL would not
    only gives the scan more to refuse."""
    text = sql.lower()
    if "\\" not in sql:
        return text
    return f"{text}\n{_BACKSLASH.sub(_unescape, sql).lower()}"


def _unescape(match: re.Match[str]) -> str:
    hex2, hex4, hex8, octal, other = match.groups()
    if other is not None:
        return _CONTROL.get(other, other)
    code = int(hex2 or hex4 or hex8, 16) if octal is None else int(octal, 8)
    return chr(code) if code <= 0x10FFFF else "\ufffd"


def _languages(text: str) -> Iterable[str]:
    """The name after each word ``language`` of ``text`` (lower case), with the
    whitespace and comments PostgreSQL skips between them skipped too (nested
    ``/* */`` included, as the server nests them); "" where no name follows."""
    for word in _LANGUAGE_WORD.finditer(text):
        at = skip_blanks(text, word.end())
        found = _LANGUAGE_NAME.match(text, at)
        yield next((g for g in found.groups() if g is not None), "") if found else ""


def limit_hit(decision: Decision, pins: LimitPins, sql: str | None) -> LimitHit:
    """What the session's recording keeps of a refusal by :func:`decide_pins`."""
    limit = decision.limit or PINNED_LIMITS
    if limit == "advisory_locks":
        value = "false"
    elif limit in pins.values:
        value = pins.values[limit]
    else:
        value = ", ".join(f"{k}={v}" for k, v in sorted(pins.values.items()))
    return LimitHit(
        limit=limit,
        value=value,
        scope=pins.scope,
        action="refused",
        sqlstate="42501",
        message=decision.message,
        statement=sql,
    )


def startup_refusal(params: Mapping[str, str], pins: LimitPins) -> tuple[str, str] | None:
    """(message, hint) when the client's startup parameters set a pinned limit, else None."""
    for name in _names(params):
        if name in pins.settings:
            return (
                f"startup parameter {name!r} is not allowed: {name} is a limit that "
                f"{pins.where()} sets",
                f"the limits come from the policy (limits.{name}); connect without {name}",
            )
    return None


def startup_limit_hit(params: Mapping[str, str], pins: LimitPins, message: str) -> LimitHit:
    """What the session's recording keeps of a refusal by :func:`startup_refusal`
    (``message``: the refusal's message)."""
    limit = next(name for name in _names(params) if name in pins.settings)
    return LimitHit(
        limit=limit,
        value=pins.values[limit],
        scope=pins.scope,
        action="refused",
        sqlstate="42501",
        message=message,
    )


def _names(params: Mapping[str, str]) -> Iterable[str]:
    return (name.lower() for name in params)
