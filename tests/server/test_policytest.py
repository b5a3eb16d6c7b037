"""``dbaccess-server policy test``: a candidate policy replayed over recorded sessions.

A store gets two recorded sessions (statement events as the recorder writes
them: redacted texts, most with their access facts, one from before access
facts were recorded); then the real command replays them against the policy
in force (nothing changes, exit 0) and against one that masks one more column,
blocks DDL where it was reviewed and puts the write scope under approval
(exactly the affected sessions and statements, exit 1).
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from server.audit import access
from server.audit.access import RelationAccess, SessionFacts, access_event
from server.audit.recording import SessionEvent
from server.store import tables as t
from server.store.db import Store
from tests.fix_broker import BIN
from tests.fix_store import insert_events

POLICY = """\
version: 1
targets:
  prod:
    database: prod
    issuer: postgres
    admin_dsn_file: admin.dsn
    masking:
      rules:
        - column: public.customers.email
          method: partial
          keep: domain
{extra_rules}    scopes:
      read:
        grants: [app_read]
        max_ttl: 1h
        allow: {{groups: [dev]}}
      write:
        grants: [app_write]
        max_ttl: 1h
        allow: {{groups: [dev]}}
        guardrails:
          review: [ddl]
{write_extra}"""
CURRENT = POLICY.format(extra_rules="", write_extra="")
CANDIDATE = POLICY.format(
    extra_rules="        - column: public.customers.phone\n          method: redact\n",
    write_extra="          block: [ddl]\n        approval:\n          approvers: {groups: [dba]}\n",
)
NOW = datetime.now(UTC).replace(microsecond=0)


def customers(*columns: str, action: str = access.READ) -> RelationAccess:
    masked = frozenset({"email"} & set(columns)) if action == access.READ else frozenset()
    return RelationAccess("public", "customers", action, columns, masked)


# (session, identity, scope, [(text, relations or None: recorded without access facts)])
SESSIONS = [
    (
        "s-alice",
        "alice",
        "read",
        [
            ("select id, email from customers where id = 0", [customers("id", "email")]),
            ("select phone from customers", [customers("phone")]),
            ("select count(*) from orders", [RelationAccess("public", "orders", access.READ)]),
            # It filtered by the phone, which the candidate masks: inference would refuse it.
            (
                "select id from customers where phone = '[redacted]'",
                [customers("id"), customers("phone", action=access.FILTER)],
            ),
        ],
    ),
    (
        "s-bob",
        "bob",
        "write",
        [
            (
                "update customers set email = '[redacted]' where id = [redacted]",
                [customers("email", action=access.WRITE), customers("id")],
            ),
            ("create index on orders (id)", []),
            ("select phone, email from customers", None),
        ],
    ),
]


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with store.tx() as conn:
            for n, (session_id, identity, scope, statements) in enumerate(SESSIONS):
                start = NOW - timedelta(days=2, hours=n)
                conn.execute(
                    t.sessions.insert().values(
                        id=session_id,
                        identity=identity,
                        groups=["dev"],
                        target="prod",
                        scope=scope,
                        db_user=f"dba_{identity}",
                        ticket_hash=session_id,
                        status="ended",
                        created_at=start,
                        expires_at=start + timedelta(hours=1),
                        ended_at=start + timedelta(minutes=30),
                    )
                )
                events = [SessionEvent(session_id, 1, start, "session.start", {"scope": scope})]
                facts = SessionFacts("prod", identity, "user")
                for text, relations in statements:
                    data: dict[str, object] = {"text": text, "decision": "allowed"}
                    if relations is not None:
                        data["access"] = access_event(
                            facts, command=text.split()[0].upper(), relations=relations, rows=1
                        )
                    seq = len(events) + 1
                    events.append(
                        SessionEvent(
                            session_id, seq, start + timedelta(seconds=seq), "statement", data
                        )
                    )
                insert_events(conn, events)
                access.write_index(conn, events)
    finally:
        store.close()
    (tmp_path / "current.yaml").write_text(CURRENT)
    (tmp_path / "candidate.yaml").write_text(CANDIDATE)
    return tmp_path


def policy_test(folder: Path, candidate: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "dbaccess-server"),
            "policy",
            "test",
            str(folder / candidate),
            "--policy",
            str(folder / "current.yaml"),
            "--store-url",
            f"sqlite:///{folder / 'store.db'}",
            "--since",
            "7d",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_identical_policy_changes_nothing(recorded: Path) -> None:
    res = policy_test(recorded, "current.yaml")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "replayed 2 sessions and 7 statements" in res.stdout
    assert res.stdout.rstrip().endswith("nothing would change")


def test_the_candidate_reports_exactly_the_affected_statements(recorded: Path) -> None:
    res = policy_test(recorded, "candidate.yaml", "--json")
    assert res.returncode == 1, res.stderr + res.stdout
    report = json.loads(res.stdout)
    got = {
        (g["kind"], g["rule"], g["before"], g["after"]): sorted(
            (e["session_id"], e["what"]) for e in g["examples"]
        )
        for g in report["groups"]
    }
    assert got == {
        ("masking", "public.customers.phone", "clear", "masked (redact)"): [
            ("s-alice", "select phone from customers"),
            ("s-bob", "select phone, email from customers"),
        ],
        ("statement", "guardrails.block_ddl", "review", "block"): [
            ("s-bob", "create index on orders (id)")
        ],
        ("statement", "masking.inference", "allow", "block"): [
            ("s-alice", "select id from customers where phone = '[redacted]'")
        ],
        ("session", "targets.prod.scopes.write.approval", "allowed", "needs_approval"): [
            ("s-bob", "write")
        ],
    }
    assert report["changes"] == 5
    text = policy_test(recorded, "candidate.yaml")
    assert text.returncode == 1
    assert "masking: public.customers.phone: clear -> masked (redact): 2 statements" in text.stdout
