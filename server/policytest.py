"""``dbaccess-server policy test``: what a candidate policy would have changed, replayed offline.

:func:`replay` takes the sessions and recorded statements of a period from the
store and judges each twice, under the policy in force and under the
candidate, exactly alike (the same offline method on both sides, so an
identical policy changes nothing):

* **sessions** — ``evaluate`` for the session's identity (its groups and kind
  as recorded at its start), target and scope: a session that would now need
  approval, be denied, or no longer need approval is a change;
* **statements** — each recorded ``statement`` event's text is analysed with
  the session's search path (PostgreSQL's default, ``$user`` being its role)
  and decided by the guardrails of the session's scope (an agent's rules for
  an agent): a different outcome, or a refusal by another rule, is a change;
* **masking** — for each column a statement touched (the ``access`` facts of
  its event), whether and how it is masked for that session: a column that
  would be masked, clear, or masked by another method is a change.  A
  statement recorded without access facts is judged by the relations it read:
  a masking rule that names a column of one of them and changes is counted;
* **inference** — for the columns a statement decided rows by (its facts'
  ``filter`` columns), what masking's ``inference`` rule does with it under
  each policy (``allow`` where none of them is masked for the session, else
  the target's ``inference``: ``review`` or ``block``): a statement that
  would now be refused or reviewed for filtering on a masked column, or no
  longer, is a ``statement`` change of rule ``masking.inference``.

Nothing connects to a database: this is pure judgement over what was
recorded.  Recorded texts are redacted (``'[redacted]'`` strings stay strings;
a redacted number becomes ``0``, so the text still parses), and a text the
recording cut is judged as the analysis reads it (it is UNKNOWN to both).
Statements refused by masking checks that need the live catalog
(``masking_guard``) are not replayed; their recorded decision stands on both
sides.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from server.audit.access import FACTS, FILTER, READ, FactsReader
from server.gateway.guardrails import Decision, GuardrailRules, decide
from server.gateway.masking import MaskingRules
from server.gateway.masking.rules import ColumnRef
from server.gateway.rules import agent_rules, target_rules
from server.gateway.search_path import session_search_path
from server.gateway.sqlcheck import analyze
from server.policy.evaluate import Identity, evaluate
from server.policy.model import Policy
from server.store import tables as t
from server.store.db import Store, _aware

EXAMPLES = 3
# A redacted number (``limit_event``, all-literal redaction) as the analysis can read it.
_REDACTED_NUMBER = re.compile(r"(?<!')\[redacted\](?!')")
# Masking rules are built for deciding only: no value is ever hashed with this.
_NO_KEY = b"\0" * 32


@dataclass(frozen=True)
class Change:
    """One thing the candidate policy decides otherwise.

    ``kind`` is ``session``, ``statement`` or ``masking``; ``rule`` the rule
    it is grouped by (the candidate's where it refuses or masks, else the one
    that no longer applies); ``before`` and ``after`` the two outcomes.
    """

    kind: str
    rule: str
    before: str
    after: str
    session_id: str
    identity: str
    target: str
    scope: str
    ts: datetime
    what: str  # the statement's text, a column, or the session's scope

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rule": self.rule,
            "before": self.before,
            "after": self.after,
            "session_id": self.session_id,
            "identity": self.identity,
            "target": self.target,
            "scope": self.scope,
            "ts": self.ts.isoformat(),
            "what": self.what,
        }


@dataclass(frozen=True)
class Replayed:
    sessions: int
    statements: int
    changes: tuple[Change, ...]

    def groups(self) -> list[dict[str, Any]]:
        """The changes grouped by kind, rule and outcomes, most first, with examples."""
        grouped: dict[tuple[str, str, str, str], list[Change]] = defaultdict(list)
        for change in self.changes:
            grouped[(change.kind, change.rule, change.before, change.after)].append(change)
        return [
            {
                "kind": kind,
                "rule": rule,
                "before": before,
                "after": after,
                "count": len(found),
                "examples": [c.to_json() for c in found[:EXAMPLES]],
            }
            for (kind, rule, before, after), found in sorted(
                grouped.items(), key=lambda item: (-len(item[1]), item[0])
            )
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "statements": self.statements,
            "changes": len(self.changes),
            "groups": self.groups(),
        }


@dataclass(frozen=True)
class _Session:
    id: str
    identity: str
    groups: frozenset[str]
    kind: str
    target: str
    scope: str
    reason: str | None
    db_user: str
    created_at: datetime


class _Judge:
    """One policy's decisions, kept per session's (target, scope, groups, kind)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._rules: dict[tuple[str, str, bool], GuardrailRules | None] = {}
        self._masking: dict[tuple[str, str, frozenset[str]], MaskingRules] = {}

    def session(self, s: _Session) -> tuple[str, str]:
        who = Identity(s.identity, s.groups, s.kind)
        decision = evaluate(
            self.policy, who, s.target, s.scope, None, s.created_at, reason=s.reason
        )
        return decision.outcome, decision.rule

    def rules(self, s: _Session) -> GuardrailRules | None:
        key = (s.target, s.scope, s.kind == "agent")
        if key not in self._rules:
            target = self.policy.targets.get(s.target)
            scope = target.scopes.get(s.scope) if target is not None else None
            if target is None or scope is None:
                self._rules[key] = None
            else:
                rules = target_rules(target, scope.name)
                self._rules[key] = agent_rules(rules, scope) if key[2] else rules
        return self._rules[key]

    def statement(self, s: _Session, text: str) -> Decision | None:
        rules = self.rules(s)
        if rules is None:
            return None  # the session itself would not exist: a session change says so
        path = session_search_path(None, s.db_user)
        return decide(analyze(text, search_path=path), rules)

    def masking(self, s: _Session) -> MaskingRules:
        key = (s.target, s.scope, s.groups)
        if key not in self._masking:
            target = self.policy.targets.get(s.target)
            self._masking[key] = MaskingRules.for_session(
                target.masking if target is not None else None, s.scope, s.groups, _NO_KEY
            )
        return self._masking[key]


def _inference(judge: _Judge, s: _Session, columns: Sequence[ColumnRef]) -> str:
    """What masking's inference rule does with a statement that decides rows by
    ``columns``, under ``judge``'s policy, for session ``s``: ``allow``, or the
    target's ``inference`` (``review``, ``block``; the names of guardrails'
    outcomes) where one of them is masked for the session."""
    target = judge.policy.targets.get(s.target)
    masking = target.masking if target is not None else None
    if masking is None:
        return "allow"
    rules = judge.masking(s)
    if not any(rules.rule_for(column) is not None for column in columns):
        return "allow"
    return masking.inference


def _method(rules: MaskingRules, column: ColumnRef) -> str:
    rule = rules.rule_for(column)
    return "clear" if rule is None else f"masked ({rule.method.value})"


def _readable(text: str) -> str:
    return _REDACTED_NUMBER.sub("0", text)


def _sessions(store: Store, since: datetime, until: datetime) -> list[_Session]:
    s, e = t.sessions.c, t.session_events.c
    with store.tx() as conn:
        rows = conn.execute(
            sa.select(t.sessions)
            .where(s.created_at < until, sa.or_(s.ended_at.is_(None), s.ended_at >= since))
            .order_by(s.created_at, s.id)
        ).all()
        kinds = {
            session_id: str((data or {}).get("identity_kind") or "user")
            for session_id, data in conn.execute(
                sa.select(e.session_id, e.data).where(e.kind == "session.start")
            )
        }
    out = []
    for row in rows:
        m = row._mapping
        created = _aware(m["created_at"])
        assert created is not None
        out.append(
            _Session(
                id=m["id"],
                identity=m["identity"],
                groups=frozenset(m["groups"]),
                kind=kinds.get(m["id"], "user"),
                target=m["target"],
                scope=m["scope"],
                reason=m["reason"],
                db_user=m["db_user"],
                created_at=created,
            )
        )
    return out


def _statements(
    store: Store, session_id: str, since: datetime, until: datetime
) -> Iterator[tuple[datetime, Mapping[str, Any]]]:
    """The session's statements of the period, in order, with their access facts
    whole: facts that refer to an earlier statement's (``access.FactsReader``) are
    read from the session's start; ones that cannot be are left out (the statement
    is then judged by its text)."""
    e = t.session_events.c
    with store.tx() as conn:
        rows = conn.execute(
            sa.select(e.ts, e.data)
            .where(e.session_id == session_id, e.kind == "statement", e.ts < until)
            .order_by(e.seq)
        ).all()
    reader = FactsReader()
    for ts, data in rows:
        aware = _aware(ts)
        assert aware is not None
        data = data or {}
        try:
            facts = reader.facts(session_id, "statement", data)
        except LookupError:
            facts = None
        if aware < since:
            continue
        if facts is not data.get(FACTS):
            data = {**data, FACTS: facts}
        yield aware, data


def _touched(data: Mapping[str, Any], action: str = READ) -> list[ColumnRef] | None:
    """The columns a statement read (or, with ``action``, decided rows by, ...), from
    the access facts of its event (None: it has none)."""
    access = data.get("access")
    if not isinstance(access, Mapping):
        return None
    return [
        ColumnRef(str(rel["schema"]), str(rel["table"]), str(column))
        for rel in access.get("relations") or ()
        if rel.get("action") == action
        for column in rel.get("columns") or ()
    ]


def _relation_columns(policies: Sequence[Policy], s: _Session, text: str) -> list[ColumnRef]:
    """For a statement without access facts: the columns that an exact masking rule
    of either policy names in a relation the statement reads."""
    path = session_search_path(None, s.db_user)
    read = {
        (name.parts[0], name.name)
        for st in analyze(text, search_path=path).walk_all()
        for name in st.reads
        if len(name.parts) == 2
    }
    named: set[ColumnRef] = set()
    for policy in policies:
        target = policy.targets.get(s.target)
        masking = target.masking if target is not None else None
        for rule in masking.rules if masking is not None else ():
            if rule.column is None:
                continue
            schema, table, column = rule.column.split(".", 2)
            if (schema, table) in read:
                named.add(ColumnRef(schema, table, column))
    return sorted(named, key=str)


def replay(
    store: Store, current: Policy, candidate: Policy, since: datetime, until: datetime
) -> Replayed:
    """Every difference between ``current`` and ``candidate`` over [``since``, ``until``)."""
    before, after = _Judge(current), _Judge(candidate)
    changes: list[Change] = []
    sessions = _sessions(store, since, until)
    statements = 0
    for s in sessions:
        base = {
            "session_id": s.id,
            "identity": s.identity,
            "target": s.target,
            "scope": s.scope,
        }
        (was, was_rule), (now, now_rule) = before.session(s), after.session(s)
        if was != now:
            rule = now_rule if now != "allowed" else was_rule
            changes.append(Change("session", rule, was, now, ts=s.created_at, what=s.scope, **base))
        for ts, data in _statements(store, s.id, since, until):
            statements += 1
            text = _readable(str(data.get("text") or ""))
            old, new = before.statement(s, text), after.statement(s, text)
            if (
                old is not None
                and new is not None
                and (
                    old.outcome != new.outcome or (old.rule != new.rule and new.outcome != "allow")
                )
            ):
                rule = new.rule if new.outcome != "allow" else old.rule
                changes.append(
                    Change(
                        "statement",
                        rule,
                        old.outcome.value,
                        new.outcome.value,
                        ts=ts,
                        what=text,
                        **base,
                    )
                )
            columns = _touched(data)
            if columns is None:
                columns = _relation_columns((current, candidate), s, text)
            old_masking, new_masking = before.masking(s), after.masking(s)
            for column in dict.fromkeys(columns):
                a, b = _method(old_masking, column), _method(new_masking, column)
                if a != b:
                    changes.append(Change("masking", str(column), a, b, ts=ts, what=text, **base))
            filtered = _touched(data, FILTER)
            if filtered:
                a, b = _inference(before, s, filtered), _inference(after, s, filtered)
                if a != b:
                    rule = "masking.inference"
                    changes.append(Change("statement", rule, a, b, ts=ts, what=text, **base))
    return Replayed(len(sessions), statements, tuple(changes))
