"""What the MCP tests share: a broker whose policy has scopes for agents, an agent's
token, and the MCP SDK's own client talking to ``dbaccess mcp`` (stdio) or to the
broker's ``/mcp`` endpoint (streamable HTTP).

``call(client, tool, **arguments)`` returns ``(is_error, structured_content, text)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import pytest
from mcp import Client, StdioServerParameters

from server.demo.provision import DemoTarget
from tests.fix_broker import BIN, CUSTOMER_MASKING, Broker, demo_policy, new_broker

T = TypeVar("T")

# Agents may use "read" (read-only by name) and "peek" (read-only by preset, with a
# 50-row budget), "agentfix" (writable, agents allowed: writes by review) and "gated"
# (the same with an approval rule whose grants last 3 seconds); not "write".
AGENT_SCOPES = """\
      peek:
        grants: [demo_read]
        default_ttl: 30m
        max_ttl: 1h
        allow:
          groups: [dev]
        guardrails:
          preset: read
        agents:
          limits:
            max_result_rows: 50
      agentfix:
        grants: [demo_write]
        default_ttl: 15m
        max_ttl: 1h
        allow:
          groups: [dev]
        agents:
          allow: true
      gated:
        grants: [demo_write]
        default_ttl: 15m
        max_ttl: 1h
        allow:
          groups: [dev]
        approval:
          approvers: {groups: [dev]}
          approval_ttl: 3s
        agents:
          allow: true
"""
AGENT_POLICY = demo_policy(target=CUSTOMER_MASKING, scopes=AGENT_SCOPES)
AGENT = "helper"
# The dev mode's default profile is "dev" (groups dev, admin): the agent acts for it.
OWNER = "dev"


@pytest.fixture(scope="module")
def agent_broker(demo_target: DemoTarget) -> Iterator[Broker]:
    b = new_broker(demo_target)
    b.start(policy=AGENT_POLICY)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def agent_token(agent_broker: Broker) -> str:
    return agent_broker.token(AGENT, "dev", owner=OWNER)


def stdio(broker: Broker, token: str) -> StdioServerParameters:
    """``dbaccess mcp`` as an agent host spawns it, acting with ``token``."""
    return StdioServerParameters(
        command=str(BIN / "dbaccess"), args=["mcp"], env=broker.env(DBACCESS_TOKEN=token)
    )


def with_client(server: Any, body: Callable[[Client], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        async with Client(server, **kw) as client:
            return await body(client)

    return anyio.run(main)


async def call(client: Client, tool: str, **arguments: Any) -> tuple[bool, dict[str, Any], str]:
    result = await client.call_tool(tool, arguments)
    text = "".join(getattr(c, "text", "") for c in result.content)
    return bool(result.is_error), dict(result.structured_content or {}), text
