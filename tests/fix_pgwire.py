"""Raw-socket PostgreSQL clients for tests that need to see the gateway's exact
ErrorResponse fields (SQLSTATE, severity, hint), which libpq does not expose
for failed logins."""

from __future__ import annotations

import contextlib
import socket

from server.gateway import pgwire
from server.gateway.pgwire import RawMessage
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


def login_error(port: int, database: str, password: str, **params: str) -> dict[str, str]:
    """Log in with ``password`` (and startup ``params``) over a plain socket; the fields
    of the ErrorResponse."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(startup_packet({"user": "dev", "database": database, **params}))
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


class RawClient:
    """A logged-in plain-socket client that speaks the messages it is given, for
    what libpq cannot send (a ``search_path`` startup parameter) or hides (the
    exact order of answers in a pipeline)."""

    def __init__(self, port: int, database: str, password: str, **params: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.parser = pgwire.BackendParser()
        self.sock.sendall(startup_packet({"user": "dev", "database": database, **params}))
        for raw in self.until_ready(password=password):
            if raw.type == ord("E"):
                raise AssertionError(f"login refused: {pgwire.decode_backend(raw)}")

    def until_ready(self, *, password: str | None = None) -> list[RawMessage]:
        """Every message up to and including the next ReadyForQuery."""
        got: list[RawMessage] = []
        while True:
            for raw in self.parser.messages():
                if raw.type == ord("R") and raw.body == b"\0\0\0\x03" and password is not None:
                    self.sock.sendall(pgwire.PasswordMessage.from_password(password).encode())
                    continue
                got.append(raw)
                if raw.type == ord("Z"):
                    return got
                if raw.type == ord("E") and password is not None:
                    return got  # a refused login ends without ReadyForQuery
            data = self.sock.recv(65536)
            assert data, f"the gateway closed the connection after {got}"
            self.parser.feed(data)

    def send(self, *messages: pgwire.Message) -> None:
        self.sock.sendall(b"".join(m.encode() for m in messages))

    def query(self, sql: str) -> tuple[list[list[str | None]], dict[str, str] | None]:
        """A simple Query: its rows as text, and the ErrorResponse's fields if it failed."""
        self.send(pgwire.Query(sql))
        return rows_and_error(self.until_ready())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(pgwire.Terminate().encode())
        self.sock.close()


def rows_and_error(
    messages: list[RawMessage],
) -> tuple[list[list[str | None]], dict[str, str] | None]:
    rows: list[list[str | None]] = []
    error: dict[str, str] | None = None
    for raw in messages:
        msg = pgwire.decode_backend(raw)
        if isinstance(msg, pgwire.DataRow):
            rows.append([None if v is None else bytes(v).decode() for v in msg.values])
        elif isinstance(msg, pgwire.ErrorResponse) and error is None:
            error = dict(msg.fields)
    return rows, error
