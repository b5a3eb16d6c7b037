"""One client connection's protocol state, sans-IO (``state``: its prepared
statements, portals and transaction status, kept once for every hook)."""

from server.gateway.connection.state import ConnectionState, Note, Portal, Prepared

__all__ = ["ConnectionState", "Note", "Portal", "Prepared"]
