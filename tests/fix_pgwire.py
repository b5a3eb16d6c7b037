"""Raw-socket PostgreSQL clients for tests that need to see the gateway's exact
ErrorResponse fields (SQLSTATE, severity, hint), which libpq does not expose
for failed logins."""

from __future__ import annotations

import socket

from server.gateway import pgwire
from server.gateway.session import startup_packet


def read_error(sock: socket.socket) -> dict[str, str]:
    """Read until an ErrorResponse arrives; its fields by one-letter code."""
    parser = pgwire.BackendParser()
    while True:
        data = sock.recv(65536)
        assert data, "the gateway closed without an ErrorResponse"
        parser.feed(data)
        for raw in parser.messages():
            if raw.type == ord("E"):
                return dict(pgwire.decode_backend(raw).fields)  # type: ignore[attr-defined]


def login_error(port: int, database: str, password: str) -> dict[str, str]:
    """Log in with ``password`` over a plain socket; the fields of the ErrorResponse."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(startup_packet({"user": "dev", "database": database}))
        parser = pgwire.BackendParser()
        while True:
            data = sock.recv(65536)
            assert data, "the gateway closed without an ErrorResponse"
            parser.feed(data)
            for raw in parser.messages():
                if raw.type == ord("R") and raw.body == b"\0\0\0\x03":
                    sock.sendall(pgwire.PasswordMessage.from_password(password).encode())
                elif raw.type == ord("E"):
                    return dict(pgwire.decode_backend(raw).fields)  # type: ignore[attr-defined]
                elif raw.type == ord("Z"):
                    raise AssertionError("the login succeeded")
