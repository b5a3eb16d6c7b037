"""What the CLI (``brokercli``) and the broker (``server``) both speak, in one place.

The two never import each other: the CLI is a small client that must start fast
and run where the broker's dependencies are not installed, and the broker must
not depend on its client.  What both need lives here, importing neither and
nothing outside the standard library:

* ``durations``   durations and points in time as people write them, in policy
                  and config files, CLI options and API parameters alike.
* ``validation``  the one-line form of a request the API could not validate, which
                  the API answers with and the CLI reads from an older broker.
* ``mcp``         the agents' MCP tools, which ``dbaccess mcp`` serves over stdio and
                  the broker over HTTP: the one exception to the standard library
                  only, it uses the MCP SDK and psycopg (which the CLI's exec uses too).
"""
