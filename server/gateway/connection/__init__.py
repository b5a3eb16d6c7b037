"""One client connection's protocol state, sans-IO (``state``: its prepared
statements and portals, kept once for every hook, in step with the server's)."""

from server.gateway.connection.state import ConnectionState, Note, Portal, Prepared

__all__ = ["ConnectionState", "Note", "Portal", "Prepared"]
