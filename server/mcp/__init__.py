"""The broker's side of the agents' MCP tools (:mod:`common.mcp`): ``/mcp`` over HTTP."""
