"""The tools as an MCP server (the official SDK's low-level ``Server``), for any transport.

``mcp_server(tools_for)`` lists :data:`~common.mcp.tools.TOOLS` with their
schemas and answers each call with the structured result and the same JSON as
text (for hosts that read only text); a :class:`~common.mcp.tools.ToolError`
becomes a tool error (``isError``) whose structured content carries the
message, the rule, the hint and the SQLSTATE.  ``tools_for(ctx)`` gives the
caller's :class:`~common.mcp.tools.Tools` (the one of the process for stdio,
the bearer token's for HTTP).  Tools block (HTTP to the broker, SQL through
the gateway), so each call runs in a worker thread, under limiters of the
server's own (:data:`MAX_CALLS`, :data:`MAX_CALLS_PER_CALLER`), not anyio's
default one, which the broker's API answers with.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from common.mcp.tools import TOOLS, ToolError, Tools

log = logging.getLogger(__name__)

NAME = "dbaccess"
INSTRUCTIONS = (
    "Databases behind dbaccess: every call runs in a short-lived session of your own "
    "through the dbaccess gateway, under its policy (guardrails, masking, result budgets, "
    "recording). Start with list_targets and describe. query runs one read statement. "
    "Changes are proposed with propose_change, approved by a person, and run once with "
    "run_approved. A refusal names its rule and what to do."
)

ToolsFor = Callable[[ServerRequestContext[Any, Any]], Tools]

# Tool calls block a worker thread, wait_for_review for up to ten minutes.  They
# run under limiters of their own, never anyio's default one, which the broker's
# API answers its requests with: waiting agents cannot stall the API, and one
# caller (an agent's token) holds at most a few of the endpoint's threads.
MAX_CALLS = 32
MAX_CALLS_PER_CALLER = 4


def _result(payload: dict[str, Any], *, error: bool) -> types.CallToolResult:
    text = json.dumps(payload, ensure_ascii=False, default=str)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=payload,
        is_error=error,
    )


def mcp_server(tools_for: ToolsFor, *, version: str = "") -> Server[Any]:
    limiters: dict[str, anyio.CapacityLimiter] = {}
    per_caller: weakref.WeakKeyDictionary[Tools, anyio.CapacityLimiter] = (
        weakref.WeakKeyDictionary()
    )

    def limiter_of(tools: Tools) -> tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]:
        # Made in the event loop that uses them (anyio wants that).
        if "all" not in limiters:
            limiters["all"] = anyio.CapacityLimiter(MAX_CALLS)
        mine = per_caller.get(tools)
        if mine is None:
            mine = per_caller[tools] = anyio.CapacityLimiter(MAX_CALLS_PER_CALLER)
        return limiters["all"], mine

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        del ctx, params
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name=t.name,
                    description=t.description,
                    input_schema=dict(t.input_schema),
                    output_schema=dict(t.output_schema),
                )
                for t in TOOLS
            ]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            tools = tools_for(ctx)
            arguments = dict(params.arguments or {})
            everyone, mine = limiter_of(tools)
            async with mine:
                payload = await anyio.to_thread.run_sync(
                    tools.call, params.name, arguments, limiter=everyone
                )
        except ToolError as err:
            return _result(err.to_json(), error=True)
        except Exception:
            log.exception("MCP tool %s failed", params.name)
            return _result(
                ToolError(
                    f"the {params.name} tool failed unexpectedly",
                    hint="try again; if it keeps failing, tell an administrator",
                    rule="mcp.internal_error",
                ).to_json(),
                error=True,
            )
        return _result(payload, error=False)

    return Server(
        NAME,
        version=version,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
