"""The broker's ``/mcp`` endpoint driven by the MCP SDK's own client over streamable HTTP,
against a real broker, gateway and PostgreSQL: who may call it, the same tools and
schemas as ``dbaccess mcp``, masking, a refused escape, and the review flow."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from common.mcp.tools import TOOLS
from tests.fix_broker import Broker
from tests.fix_mcp import call, with_client

pytestmark = pytest.mark.slow

Admin = psycopg.Connection[tuple[object, ...]]
SCRATCH = "mcp_http_scratch"


def ca_file(broker: Broker) -> str:
    return str(json.loads((broker.config_dir / "profile.json").read_text())["ca_file"])


@asynccontextmanager
async def over_http(broker: Broker, token: str) -> AsyncIterator[Any]:
    """The SDK's streamable HTTP transport to the broker's /mcp, with a bearer token."""
    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=ca_file(broker)),
            timeout=60,
        ) as http,
        streamable_http_client(f"{broker.api_url}/mcp", http_client=http) as streams,
    ):
        yield streams


def test_only_a_live_agent_token_is_served(agent_broker: Broker) -> None:
    url = f"{agent_broker.api_url}/mcp"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    person = agent_broker.token("carol", "dev")
    with httpx.Client(verify=ssl.create_default_context(cafile=ca_file(agent_broker))) as http:
        anonymous = http.post(url, json=body)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "not_authenticated"
        wrong = http.post(url, json=body, headers={"Authorization": "Bearer dba_nope"})
        assert wrong.status_code == 401
        refused = http.post(url, json=body, headers={"Authorization": f"Bearer {person}"})
        assert refused.status_code == 403
        assert "not an agent identity" in refused.json()["message"]


def test_the_tools_over_http(agent_broker: Broker, agent_token: str, admin_conn: Admin) -> None:
    emails = [str(r[0]) for r in admin_conn.execute("SELECT email FROM customers")]

    async def body(c: Client) -> None:
        listed = {t.name: t for t in (await c.list_tools()).tools}
        assert [listed[t.name].input_schema for t in TOOLS] == [dict(t.input_schema) for t in TOOLS]
        err, out, text = await call(
            c, "query", target="demo", sql="SELECT id, email FROM customers"
        )
        assert not err, text
        assert out["masked_columns"] == ["email"] and out["row_count"] == 300
        assert not [e for e in emails if e in text]
        err, again, _ = await call(c, "query", target="demo", sql="SELECT 1 AS one")
        assert not err and again["session_id"] == out["session_id"]  # kept between requests
        # Killed by an admin: one clear tool error, the role gone, then a new session.
        session_id = again["session_id"]
        client = agent_broker.client(agent_token)
        role = client.session(session_id)["db_user"]
        client.close()
        killed = await anyio.to_thread.run_sync(lambda: agent_broker.cli("kill", session_id))
        assert killed.returncode == 0, killed.stderr
        err, out, _ = await call(c, "query", target="demo", sql="SELECT 2")
        assert (
            err and out["error"]["rule"] == "session.ended" and "killed" in out["error"]["message"]
        )
        gone = admin_conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,))
        assert gone.fetchone() == (0,)
        err, out, _ = await call(c, "query", target="demo", sql="SELECT 3 AS three")
        assert not err and out["rows"] == [[3]] and out["session_id"] != session_id
        err, out, _ = await call(
            c, "query", target="demo",
            sql="WITH d AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM d",
        )  # fmt: skip
        assert err and out["error"]["rule"].startswith("guardrails.")
        # A write hidden in a function call: held for review, nothing advanced.
        err, out, _ = await call(
            c, "query", target="demo", scope="agentfix", sql="SELECT nextval('orders_id_seq')"
        )
        assert err and out["error"]["rule"] == "guardrails.review_write"
        err, out, _ = await call(c, "list_targets")
        assert [s["name"] for s in out["targets"][0]["scopes"]] == [
            "read", "peek", "agentfix", "gated",
        ]  # fmt: skip

    sequence = admin_conn.execute("SELECT last_value FROM orders_id_seq").fetchone()
    with_client(over_http(agent_broker, agent_token), body)
    assert admin_conn.execute("SELECT count(*) FROM orders").fetchone() == (900,)
    assert admin_conn.execute("SELECT last_value FROM orders_id_seq").fetchone() == sequence


@pytest.fixture
def scratch(admin_conn: Admin) -> Any:
    admin_conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
    admin_conn.execute(f"CREATE TABLE {SCRATCH} (id int PRIMARY KEY)")
    admin_conn.execute(f"ALTER TABLE {SCRATCH} OWNER TO demo_write")
    yield
    admin_conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")


def test_review_flow_over_http(
    agent_broker: Broker, agent_token: str, admin_conn: Admin, scratch: None
) -> None:
    statement = f"INSERT INTO {SCRATCH} VALUES (7)"

    async def propose(c: Client) -> str:
        # DDL is never for agents by default: not even a review is opened for it.
        err, out, _ = await call(
            c, "propose_change", target="demo", scope="agentfix",
            statement=f"DROP TABLE {SCRATCH}", reason="cleanup",
        )  # fmt: skip
        assert err and out["error"]["rule"].startswith("guardrails.")
        err, out, text = await call(
            c, "propose_change", target="demo", scope="agentfix", statement=statement,
            reason="INC-7",
        )  # fmt: skip
        assert not err, text
        return str(out["request_id"])

    rid = with_client(over_http(agent_broker, agent_token), propose)
    ok = agent_broker.cli("--profile", "reviewer", "approve", rid, "--yes")
    assert ok.returncode == 0, ok.stderr

    async def run(c: Client) -> None:
        # A scope that needs approval first: the tool error names the access request,
        # which the agent can wait for like a review.
        err, out, _ = await call(c, "query", target="demo", scope="gated", sql="SELECT 1")
        assert err and out["error"]["kind"] == "approval_required"
        access = out["error"]["request_id"]
        ok = await anyio.to_thread.run_sync(
            lambda: agent_broker.cli("--profile", "reviewer", "approve", access, "--yes")
        )
        assert ok.returncode == 0, ok.stderr
        err, out, _ = await call(c, "wait_for_review", request_id=access, timeout_seconds=5)
        assert not err and out["status"] == "approved"
        err, out, text = await call(c, "query", target="demo", scope="gated", sql="SELECT 1")
        assert not err and out["scope"] == "gated", text

        err, out, text = await call(c, "run_approved", request_id=rid, statement=statement)
        assert not err, text
        assert out["status"] == "INSERT 0 1"
        err, out, _ = await call(c, "run_approved", request_id=rid)
        assert err and out["error"]["rule"] == "review.used"

    with_client(over_http(agent_broker, agent_token), run)
    assert admin_conn.execute(f"SELECT count(*) FROM {SCRATCH}").fetchone() == (1,)


def test_waiting_agents_do_not_stall_the_broker(
    agent_broker: Broker, agent_token: str, scratch: None
) -> None:
    # wait_for_review holds its call for up to ten minutes: calls that wait must
    # not take the worker threads the broker's API answers with, nor may one
    # token take all of the endpoint's.
    async def propose(c: Client) -> str:
        err, out, text = await call(
            c, "propose_change", target="demo", scope="agentfix",
            statement=f"INSERT INTO {SCRATCH} VALUES (8)", reason="INC-8",
        )  # fmt: skip
        assert not err, text
        return str(out["request_id"])

    rid = with_client(over_http(agent_broker, agent_token), propose)
    wait = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "wait_for_review",
                   "arguments": {"request_id": rid, "timeout_seconds": 5}},
    }  # fmt: skip
    headers = {
        "Authorization": f"Bearer {agent_token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    verify = ssl.create_default_context(cafile=ca_file(agent_broker))
    took: list[float] = []

    async def main() -> None:
        async with httpx2.AsyncClient(verify=verify, timeout=60) as http:

            async def waiter() -> None:
                await http.post(f"{agent_broker.api_url}/mcp", json=wait, headers=headers)

            async with anyio.create_task_group() as tg:
                # More than anyio's 40 default worker threads, all from one token.
                for _ in range(44):
                    tg.start_soon(waiter)
                await anyio.sleep(1)
                started = anyio.current_time()
                health = await http.get(f"{agent_broker.api_url}/v1/health")
                took.append(anyio.current_time() - started)
                assert health.status_code == 200
                tg.cancel_scope.cancel()

    anyio.run(main)
    assert took[0] < 2, f"the API answered after {took[0]:.1f}s"
