"""The local tunnel: a loopback-only TCP listener that pipes each client
connection to the gateway.

It runs an asyncio loop in a daemon thread so the CLI's main thread can run
psql (or a child command) and wait for it.  The tunnel carries bytes only; the
gateway authenticates every connection by its session ticket.  When the gateway
speaks TLS, the tunnel connects with TLS verified against the pinned broker CA
and never falls back to plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


class TunnelError(Exception):
    pass


_CHUNK = 256 * 1024


@dataclass(frozen=True)
class TunnelTarget:
    host: str
    port: int
    tls: bool
    ca_file: str | None = None


class Tunnel:
    def __init__(self, target: TunnelTarget, *, port: int = 0) -> None:
        self.target = target
        self._requested_port = port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="dbaccess-tunnel", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections_total = 0

    def __enter__(self) -> Tunnel:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.target.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.target.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        if not self.port:
            raise RuntimeError("the local tunnel did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, LOOPBACK, self._requested_port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        # Drain: cancel open pipes, then close the loop.
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            self._loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
        self._loop.close()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_total += 1
        g_writer: asyncio.StreamWriter | None = None
        try:
            try:
                g_reader, gw = await asyncio.wait_for(self._connect(), timeout=10)
            except (OSError, EOFError, TimeoutError, ssl.SSLError, TunnelError) as exc:
                c_writer.write(_gateway_unreachable(self.target, exc))
                with contextlib.suppress(Exception):
                    await c_writer.drain()
                return
            g_writer = gw
            await asyncio.gather(
                _pipe(c_reader, gw), _pipe(g_reader, c_writer), return_exceptions=True
            )
        except asyncio.CancelledError:
            pass  # the tunnel is stopping: end quietly instead of logging a cancelled task
        finally:
            if g_writer is not None:
                g_writer.close()
            c_writer.close()
            self._tasks.discard(task)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.target.tls:
            return await asyncio.open_connection(self.target.host, self.target.port)
        # PostgreSQL-style negotiation on a plain socket (SSLRequest, one-byte
        # answer), then asyncio wraps the same socket in TLS from the start.
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.target.host, self.target.port, type=socket.SOCK_STREAM)
        family, type_, proto, _name, addr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            await loop.sock_sendall(sock, SSL_REQUEST)
            answer = await loop.sock_recv(sock, 1)
            if answer != b"S":
                raise TunnelError(
                    "the gateway did not accept TLS; refusing to continue in plaintext"
                )
            return await asyncio.open_connection(
                sock=sock, ssl=self._ssl_context(), server_hostname=self.target.host
            )
        except BaseException:
            sock.close()
            raise

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        def _shutdown() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(_shutdown)
        self._thread.join(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()


def _gateway_unreachable(target: TunnelTarget, exc: BaseException) -> bytes:
    """An ErrorResponse so psql shows why, instead of 'server closed the connection'."""
    fields = [
        (b"S", b"FATAL"),
        (b"V", b"FATAL"),
        (b"C", b"08006"),
        (
            b"M",
            f"dbaccess: cannot reach the gateway at {target.host}:{target.port}: {exc}".encode(),
        ),
        (b"H", b"check that the broker is running and reachable"),
    ]
    body = b"".join(code + value + b"\0" for code, value in fields) + b"\0"
    return b"E" + (len(body) + 4).to_bytes(4, "big") + body
