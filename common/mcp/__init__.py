"""The agents' front door: MCP tools that reach databases only through the gateway.

AI agents speak the Model Context Protocol.  The same tools are served two
ways, built on the official ``mcp`` SDK:

* ``dbaccess mcp`` (:mod:`brokercli.commands.mcp`): an MCP server over stdio,
  which agent hosts spawn; it talks to the broker's API with the agent's broker
  token and to the gateway through the CLI's tunnel, as ``dbaccess exec`` does;
* the broker's ``/mcp`` endpoint (:mod:`server.mcp.http`): MCP over streamable
  HTTP on the API listener, authenticated with a broker bearer token; it starts
  sessions with the session service and connects to its own gateway.

Either way every tool call runs in a session of the caller's own (a fresh role,
the gateway's guardrails, masking, limits and recording), never on a
connection of the broker's: :mod:`common.mcp.tools` holds the tools, their
schemas and the session pool, over a :class:`~common.mcp.tools.Backend` that
each transport provides; :mod:`common.mcp.protocol` makes them an MCP server.
Both the CLI and the broker serve them, so they live in ``common``.
"""
