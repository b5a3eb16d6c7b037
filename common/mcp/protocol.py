"""The tools as an MCP server (the official SDK's low-level ``Server``), for any transport.

``mcp_server(tools_for)`` lists :data:`~common.mcp.tools.TOOLS` with their
schemas and answers each call with the structured result and the same JSON as
text (for hosts that read only text); a :class:`~common.mcp.tools.ToolError`
becomes a tool error (``isError``) whose structured content carries the
message, the rule, the hint and the SQLSTATE.  ``tools_for(ctx)`` gives the
caller's :class:`~common.mcp.tools.Tools` (the one of the process for stdio,
the bearer token's for HTTP).  Tools block (HTTP to the broker, SQL through
the gateway), so each call runs in a worker thread.
"""

from __future__ import annotations

import json
import logging
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


def _result(payload: dict[str, Any], *, error: bool) -> types.CallToolResult:
    text = json.dumps(payload, ensure_ascii=False, default=str)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=payload,
        is_error=error,
    )


def mcp_server(tools_for: ToolsFor, *, version: str = "") -> Server[Any]:
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
            payload = await anyio.to_thread.run_sync(tools.call, params.name, arguments)
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
