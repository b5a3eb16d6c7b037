"""``dbaccess mcp`` driven by the MCP SDK's own client over stdio, against a real broker,
gateway and PostgreSQL: the tools, masking, the known ways read-only agents get
around their limits, the review flow, and a session killed under an agent."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import psycopg
import pytest
from mcp import Client

from common.mcp.tools import TOOLS
from tests.fix_broker import Broker
from tests.fix_mcp import AGENT, OWNER, call, stdio, with_client

pytestmark = pytest.mark.slow

Admin = psycopg.Connection[tuple[object, ...]]
SCRATCH = "mcp_scratch"


def raw_secrets(admin: Admin) -> list[str]:
    """The demo's e-mails and card numbers in the clear: none may leave through a tool."""
    rows = admin.execute("SELECT email, card_number FROM customers").fetchall()
    return [str(v) for row in rows for v in row]


def assert_nothing_clear(text: str, secrets: list[str]) -> None:
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"masked values in a tool result: {leaked[:3]}"


def test_tools_schemas_targets_describe_and_masked_reads(
    agent_broker: Broker, agent_token: str, admin_conn: Admin
) -> None:
    secrets = raw_secrets(admin_conn)

    async def body(c: Client) -> None:
        listed = {t.name: t for t in (await c.list_tools()).tools}
        assert list(listed) == [t.name for t in TOOLS]
        for spec in TOOLS:
            assert listed[spec.name].input_schema == dict(spec.input_schema)
            assert listed[spec.name].output_schema == dict(spec.output_schema)
            assert listed[spec.name].description == spec.description

        err, out, _ = await call(c, "list_targets")
        assert not err
        [demo] = out["targets"]
        # Not "write": agents use read-only scopes unless the policy lets them in.
        assert [s["name"] for s in demo["scopes"]] == ["read", "peek", "agentfix", "gated"]
        gated = demo["scopes"][3]
        assert gated["needs_approval"] is True

        err, out, text = await call(c, "describe", target="demo", table="customers")
        assert not err, text
        [customers] = out["tables"]
        masked = {col["name"]: col["masked"] for col in customers["columns"]}
        assert masked == {
            "id": False,
            "full_name": False,
            "email": True,
            "phone": False,
            "card_number": True,
            "city": False,
            "created_at": False,
        }
        assert customers["estimated_rows"] in (None, 300) or customers["estimated_rows"] > 0
        assert out["scope"] == "read"

        err, out, text = await call(
            c, "query", target="demo", sql="SELECT id, email, card_number FROM customers"
        )
        assert not err, text
        assert out["masked_columns"] == ["email", "card_number"]
        assert out["row_count"] == 300 and not out["truncated"]
        assert all(row[1].endswith("@example.com") for row in out["rows"])
        assert_nothing_clear(text + json.dumps(out), secrets)

        # A result over the scope's budget for agents (50 rows in peek) is cut, and says so;
        # what it holds is still masked.
        err, out, text = await call(
            c, "query", target="demo", scope="peek", sql="SELECT email FROM customers"
        )
        assert not err, text
        assert out["truncated"] is True and 0 < out["row_count"] <= 50
        assert out["masked_columns"] == ["email"]
        assert "max_result_rows" in (out["limit"] or "")
        assert_nothing_clear(text, secrets)

        # An error about a masked value does not carry it either.
        err, out, text = await call(
            c, "query", target="demo", sql="SELECT email::int FROM customers"
        )
        assert err
        assert_nothing_clear(text, secrets)

    with_client(stdio(agent_broker, agent_token), body)


# The failure classes of PostgreSQL MCP servers, each tried in the scope an agent
# gets by default (read).  Each must be refused before anything changes.
ATTACKS = [
    ("commit_escape", "COMMIT; DELETE FROM orders", "guardrails"),
    ("two_statements", "SELECT 1; SELECT 2", "guardrails"),
    (
        "write_in_with",
        "WITH d AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM d",
        "guardrails",
    ),
    ("leading_comment", "/* just a read */ DELETE FROM orders", "guardrails"),
    ("read_server_file", "SELECT pg_read_file('/etc/passwd')", "guardrails"),
    ("copy_to_program", "COPY (SELECT 1) TO PROGRAM 'touch /tmp/dbaccess-pwned'", "guardrails"),
    ("drop_table", "DROP TABLE orders", "guardrails"),
]


def test_the_known_escapes_are_refused_and_recorded(
    agent_broker: Broker, agent_token: str, admin_conn: Admin
) -> None:
    before = admin_conn.execute("SELECT count(*) FROM orders").fetchone()

    async def body(c: Client) -> dict[str, Any]:
        refused = {}
        for name, sql, rule in ATTACKS:
            err, out, text = await call(c, "query", target="demo", sql=sql)
            assert err, f"{name} was not refused: {text}"
            assert out["error"]["rule"].startswith(rule), (name, out)
            assert out["error"].get("hint"), (name, out)
            refused[name] = out["error"]
        # The session is still usable after all that.
        err, out, _ = await call(c, "query", target="demo", sql="SELECT count(*) FROM orders")
        assert not err and out["rows"] == [[before[0]]]  # type: ignore[index]
        refused["session_id"] = out["session_id"]
        return refused

    refused = with_client(stdio(agent_broker, agent_token), body)
    assert admin_conn.execute("SELECT count(*) FROM orders").fetchone() == before
    assert admin_conn.execute("SELECT to_regclass('orders')").fetchone() == ("orders",)
    # The gateway's refusals are in the audit log, under the agent's name.
    events = auditor_events(agent_broker)
    rules = {e["data"]["rule"] for e in events if e["kind"] == "statement.blocked"}
    for name, _sql, rule in ATTACKS:
        if rule == "guardrails":
            assert refused[name]["rule"] in rules, name
    # The session names the person the agent acts for, in the audit log and its recording.
    started = [e for e in events if e["kind"] == "session.started"]
    assert started and started[-1]["data"]["on_behalf_of"] == OWNER
    assert started[-1]["data"]["identity_kind"] == "agent"
    client = agent_broker.client(agent_token)
    try:
        recorded = client.recording(refused["session_id"])
    finally:
        client.close()
    assert recorded["events"][0]["data"]["on_behalf_of"] == OWNER
    assert recorded["events"][0]["data"]["identity_kind"] == "agent"


def auditor_events(broker: Broker) -> list[dict[str, Any]]:
    auditor = broker.client(broker.token("audit-reader", "auditor"))
    try:
        return auditor.audit(identity=AGENT, limit=1000)
    finally:
        auditor.close()


@pytest.fixture
def scratch(admin_conn: Admin) -> Any:
    admin_conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
    admin_conn.execute(f"CREATE TABLE {SCRATCH} (id int PRIMARY KEY)")
    admin_conn.execute(f"ALTER TABLE {SCRATCH} OWNER TO demo_write")
    yield
    admin_conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")


def test_review_flow_runs_exactly_the_approved_statement_once(
    agent_broker: Broker, agent_token: str, admin_conn: Admin, scratch: None
) -> None:
    statement = f"INSERT INTO {SCRATCH} VALUES (1)"
    late = f"INSERT INTO {SCRATCH} VALUES (2)"

    def cli(*args: str, token: str | None = None) -> Any:
        return anyio.to_thread.run_sync(lambda: agent_broker.cli(*args, token=token))

    async def body(c: Client) -> None:
        # Writes are not for query, in any scope the agent may use: held for review.
        err, out, _ = await call(c, "query", target="demo", scope="agentfix", sql=statement)
        assert err and "held for review" in out["error"]["message"]
        err, out, text = await call(
            c, "propose_change", target="demo", scope="agentfix", statement=statement,
            reason="INC-42: seed the scratch table",
        )  # fmt: skip
        assert not err, text
        assert out["status"] == "pending" and out["reviewer_command"].startswith("dbaccess approve")
        rid = str(out["request_id"])
        # In "gated", an approval lasts 3 seconds.
        err, out, text = await call(
            c, "propose_change", target="demo", scope="gated", statement=late, reason="INC-43"
        )
        assert not err, text
        expiring = str(out["request_id"])
        err, out, _ = await call(c, "run_approved", request_id=rid)
        assert err and out["error"]["rule"] == "review.pending"
        err, out, _ = await call(c, "wait_for_review", request_id=rid, timeout_seconds=1)
        assert not err and out["timed_out"] is True and out["status"] == "pending"

        # Neither the agent nor the person it acts for may approve it; someone else may.
        agent_try = await cli("approve", rid, "--yes", token=agent_token)
        assert agent_try.returncode == 5, agent_try.stderr
        assert "an agent cannot approve" in agent_try.stderr
        owner_try = await cli("approve", rid, "--yes")  # the dev profile: the agent's owner
        assert owner_try.returncode == 5, owner_try.stderr
        assert "acts for you" in owner_try.stderr
        for request in (rid, expiring):
            ok = await cli("--profile", "reviewer", "approve", request, "--yes")
            assert ok.returncode == 0, ok.stderr
        approved_at = time.monotonic()

        err, out, _ = await call(c, "wait_for_review", request_id=rid, timeout_seconds=5)
        assert not err and out["status"] == "approved" and out["timed_out"] is False
        err, out, _ = await call(
            c, "run_approved", request_id=rid, statement=statement + " ON CONFLICT DO NOTHING"
        )
        assert err and out["error"]["rule"] == "review.statement_changed"
        err, out, text = await call(c, "run_approved", request_id=rid, statement=statement)
        assert not err, text
        assert out["status"] == "INSERT 0 1" and out["scope"] == "agentfix"
        err, out, _ = await call(c, "run_approved", request_id=rid)
        assert err and out["error"]["rule"] == "review.used"
        # The same text once more through query: held for a review of its own, not run.
        err, out, _ = await call(c, "query", target="demo", scope="agentfix", sql=statement)
        assert err and "held for review" in out["error"]["message"]

        await anyio.sleep(max(0.0, approved_at + 3.5 - time.monotonic()))
        err, out, _ = await call(c, "run_approved", request_id=expiring)
        assert err and out["error"]["rule"] == "review.expired"

    with_client(stdio(agent_broker, agent_token), body)
    assert admin_conn.execute(f"SELECT id FROM {SCRATCH}").fetchall() == [(1,)]


def test_a_killed_session_is_a_clear_error_and_the_next_call_starts_another(
    agent_broker: Broker, agent_token: str, admin_conn: Admin
) -> None:
    async def body(c: Client) -> None:
        err, first, _ = await call(c, "query", target="demo", sql="SELECT 1 AS one")
        assert not err
        err, again, _ = await call(c, "query", target="demo", sql="SELECT 2 AS two")
        assert not err and again["session_id"] == first["session_id"]  # reused
        session_id = first["session_id"]
        role = agent_broker.client(agent_token).session(session_id)["db_user"]
        killed = agent_broker.cli("kill", session_id)  # dev is an admin
        assert killed.returncode == 0, killed.stderr
        err, out, _ = await call(c, "query", target="demo", sql="SELECT 3")
        assert err and out["error"]["rule"] == "session.ended"
        assert "killed" in out["error"]["message"]
        gone = admin_conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,))
        assert gone.fetchone() == (0,)
        err, out, _ = await call(c, "query", target="demo", sql="SELECT 4 AS four")
        assert not err and out["rows"] == [[4]] and out["session_id"] != session_id

    with_client(stdio(agent_broker, agent_token), body)


def test_only_an_agent_token_and_settings_only_their_owner_can_change(
    agent_broker: Broker, agent_token: str
) -> None:
    # The dev mode's own agent profile is one.
    me = json.loads(agent_broker.cli("--profile", "agent", "whoami", "-o", "json").stdout)
    assert (me["identity"], me["kind"], me["owner"]) == ("dev-agent", "agent", "dev")
    person = agent_broker.token("carol", "dev")
    res = agent_broker.cli("mcp", token=person, input="")
    assert res.returncode == 5
    assert "not an agent identity" in res.stderr
    profile = agent_broker.config_dir / "profile.json"
    mode = profile.stat().st_mode
    profile.chmod(mode | 0o020)  # group-writable: anyone in the group could repoint it
    try:
        res = agent_broker.cli("mcp", token=agent_token, input="")
    finally:
        profile.chmod(mode)
    assert res.returncode == 2
    assert "refusing to start" in res.stderr and str(profile) in res.stderr
