"""The gateway's asyncio shell driven in process: stand-in transports for the client
and the target, and a ``ClientConnection`` of a ``Gateway`` over a stand-in service,
for tests of what the shell does with the relay's effects."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from server.gateway.server import ClientConnection, Gateway


class StandInTransport:
    """What the shell writes to a peer, and whether it closed it."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connection(
    setup: list[Any] | None = None, gateway: Gateway | None = None
) -> tuple[ClientConnection, StandInTransport]:
    """A client connection of ``gateway`` (one over a stand-in service by default)
    with ``setup`` added to its relay setup, and the client's transport."""
    if gateway is None:
        service = SimpleNamespace(
            recorder=SimpleNamespace(record=lambda *a: None),
            live=lambda session_id: None,
            detach=lambda live, conn: None,
        )
        gateway = Gateway(service)  # type: ignore[arg-type]
    gateway.relay_setup.extend(setup or [])
    conn = ClientConnection(gateway)
    client = StandInTransport()
    conn.connection_made(client)  # type: ignore[arg-type]
    return conn, client
