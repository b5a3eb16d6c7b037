"""The gateway's asyncio shell: the one module of the gateway that touches sockets.

Each accepted client gets a ``ClientConnection`` (an asyncio Protocol).  It
feeds bytes to the sans-IO parser and the startup logic in ``session.py``,
resolves the session ticket with the session service (in a worker thread, as it
may hit the store), opens the upstream connection as the session's role, and
then relays.  In the relay phase only message framing is parsed; unmodified
chunks are forwarded as they arrived, with write-buffer backpressure in both
directions (a reader that stops reading pauses the other side instead of making
the gateway buffer without bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any, cast

from server.errors import DbaccessError
from server.gateway import pgwire
from server.gateway.pgwire import ProtocolViolation
from server.gateway.session import (
    CancelResult,
    ClientStartup,
    GatewayError,
    StartTls,
    StartupResult,
    UpstreamLogin,
    UpstreamPhase,
    check_frontend,
    startup_packet,
)
from server.sessions.service import LiveSession, SessionService
from server.store.db import utcnow

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 15.0
UPSTREAM_CONNECT_TIMEOUT = 10.0
HIGH_WATER = 512 * 1024
LOW_WATER = 64 * 1024


@dataclass(frozen=True)
class CancelTarget:
    host: str
    port: int
    pid: int
    secret: int


class Gateway:
    """Listens for tunnel connections and owns the per-connection protocols."""

    def __init__(
        self,
        service: SessionService,
        *,
        ssl_context: ssl.SSLContext | None = None,
        require_tls: bool = False,
    ) -> None:
        self.service = service
        self.ssl_context = ssl_context
        self.require_tls = require_tls and ssl_context is not None
        self.connections: set[ClientConnection] = set()
        self.cancel_keys: dict[tuple[int, int], CancelTarget] = {}
        self._server: asyncio.base_events.Server | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for conn in list(self.connections):
            conn.abort("57P01", "terminating connection: the gateway is shutting down", None)

    async def cancel(self, key: tuple[int, int]) -> None:
        target = self.cancel_keys.get(key)
        if target is None:
            return  # unknown keys are ignored, as PostgreSQL does
        try:
            _r, w = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port), UPSTREAM_CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            return
        w.write(struct.pack("!IIII", 16, 80877102, target.pid, target.secret))
        with contextlib.suppress(Exception):
            await w.drain()
        w.close()


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, owner: ClientConnection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        self.owner.upstream_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        # Upstream is not reading what the client sends: stop reading the client.
        if self.owner.transport is not None:
            self.owner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.owner.transport is not None:
            self.owner.transport.resume_reading()


class ClientConnection(asyncio.Protocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = pgwire.FrontendParser()
        self.startup = ClientStartup(
            tls_available=gateway.ssl_context is not None, tls_required=gateway.require_tls
        )
        self.upstream: UpstreamProtocol | None = None
        self.upstream_parser = pgwire.BackendParser()
        self.login: UpstreamLogin | None = None
        self.live: LiveSession | None = None
        self.relaying = False
        self.closed = False
        self.key = (secrets.randbits(31), secrets.randbits(32))
        self._ssl_answer: asyncio.Future[bytes] | None = None
        self._tls_pending: list[bytes] | None = None
        self._timers: list[asyncio.TimerHandle] = []

    # -- client side ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gateway.connections.add(self)
        self._timers.append(
            self.loop.call_later(
                STARTUP_TIMEOUT,
                self._startup_timeout,
            )
        )

    def _startup_timeout(self) -> None:
        if not self.relaying:
            self.abort("08P01", "timeout waiting for the client to log in", None)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._tls_pending is not None:
            # Decrypted bytes can arrive before start_tls() hands back the new
            # transport; hold them so nothing is answered on the raw socket.
            self._tls_pending.append(data)
            return
        try:
            if self.relaying:
                self.parser.feed(data)
                for raw in self.parser.messages():
                    check_frontend(raw)
                assert self.upstream is not None and self.upstream.transport is not None
                self.upstream.transport.write(data)
                return
            self.parser.feed(data)
            while not self.closed and not self.relaying:
                startup_msg = self.parser.next_raw()
                if startup_msg is None:
                    break
                reply, result = self.startup.handle(startup_msg)
                if reply:
                    self._write(reply)
                if isinstance(result, StartTls):
                    # Stop reading now so the ClientHello stays in the socket
                    # for the TLS layer; start_tls resumes reading itself.
                    assert self.transport is not None
                    self.transport.pause_reading()
                    self._tls_pending = []
                    self.loop.create_task(self._start_tls())
                    return
                if isinstance(result, CancelResult):
                    self.loop.create_task(self.gateway.cancel((result.pid, result.secret)))
                    self.close()
                    return
                if isinstance(result, StartupResult):
                    assert self.transport is not None
                    self.transport.pause_reading()
                    if self.parser.pending_bytes:
                        raise ProtocolViolation("data sent before authentication completed")
                    self.loop.create_task(self._open_session(result))
                    return
        except ProtocolViolation as exc:
            self.abort("08P01", f"protocol violation: {exc}", None)
        except GatewayError as exc:
            self.abort(exc.sqlstate, exc.message, exc.hint)

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.gateway.ssl_context is not None
        try:
            tls_transport = await asyncio.wait_for(
                self.loop.start_tls(
                    self.transport, self, self.gateway.ssl_context, server_side=True
                ),
                STARTUP_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.warning("TLS handshake with a client failed: %r", exc)
            self.closed = True
            self.transport.close()
            self._cleanup()
            return
        if tls_transport is None:
            self._cleanup()
            return
        self.transport = tls_transport
        self.startup.tls_active = True
        held, self._tls_pending = self._tls_pending or [], None
        if held:
            self.data_received(b"".join(held))

    async def _upstream_tls(
        self, proto: UpstreamProtocol, sslmode: str, host: str, rootcert: str | None
    ) -> bool:
        """SSLRequest to the target and the handshake its sslmode asks for.

        Returns False when the connection was aborted (the client got the reason).
        """
        assert proto.transport is not None
        self.upstream_parser.expect_ssl_response()
        self._ssl_answer = self.loop.create_future()
        proto.transport.write(struct.pack("!II", 8, pgwire.SSL_REQUEST_CODE))
        try:
            answer = await asyncio.wait_for(self._ssl_answer, UPSTREAM_CONNECT_TIMEOUT)
        except TimeoutError:
            self.abort("08006", "the target database did not answer the TLS request", None)
            return False
        if answer != b"S":
            if sslmode == "prefer" and answer == b"N":
                return True
            self.abort(
                "08006",
                f"the target database refused TLS (sslmode={sslmode})",
                "enable ssl on the target, or lower sslmode in the policy",
            )
            return False
        ctx = upstream_ssl_context(sslmode, rootcert)
        try:
            tls = await asyncio.wait_for(
                self.loop.start_tls(
                    proto.transport,
                    proto,
                    ctx,
                    server_hostname=host if sslmode == "verify-full" else None,
                ),
                UPSTREAM_CONNECT_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.abort(
                "08006",
                f"TLS to the target database failed ({sslmode}): {exc}",
                "check the target's certificate and the policy's sslrootcert",
            )
            return False
        if tls is None:
            self.abort("08006", "the target database closed the connection during TLS", None)
            return False
        proto.transport = tls
        return True

    async def _open_session(self, result: StartupResult) -> None:
        service = self.gateway.service
        try:
            live = await self.loop.run_in_executor(
                None, service.resolve_ticket, result.ticket, result.params.get("database")
            )
            service.attach(live, self)
        except DbaccessError as exc:
            self.abort(exc.sqlstate, exc.message, exc.hint)
            return
        except Exception:
            log.exception("resolving a session ticket failed")
            self.abort("XX000", "internal error in the gateway", "see the broker's log")
            return
        self.live = live
        delay = (live.record.expires_at - utcnow()).total_seconds()
        self._timers.append(
            self.loop.call_later(
                max(delay, 0),
                self.abort,
                "57P01",
                "terminating connection: the session reached its deadline",
                "start a new session with dbaccess connect",
            )
        )
        up = live.upstream
        try:
            _t, proto = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamProtocol(self), up.host, up.port),
                UPSTREAM_CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            self.abort(
                "08006",
                f"cannot reach the target database at {up.host}:{up.port}: {exc}",
                "the target may be down; try again later",
            )
            return
        if self.closed:
            if proto.transport is not None:
                proto.transport.close()
            return
        self.upstream = proto
        sslmode = (up.sslmode or "prefer").lower()
        wants_tls = sslmode in ("prefer", "require", "verify-ca", "verify-full")
        if wants_tls and not await self._upstream_tls(proto, sslmode, up.host, up.sslrootcert):
            return
        self.login = UpstreamLogin(live.credential.username, live.credential.password)
        params = {
            "user": live.credential.username,
            "database": up.database,
            "client_encoding": "UTF8",
            "application_name": result.params.get("application_name", "dbaccess"),
        }
        for key in (
            "datestyle",
            "timezone",
            "extra_float_digits",
            "intervalstyle",
            "search_path",
            "statement_timeout",
            "lock_timeout",
            "idle_in_transaction_session_timeout",
            "default_transaction_read_only",
            "default_transaction_isolation",
            "bytea_output",
        ):
            if key in result.params:
                params[key] = result.params[key]
        assert proto.transport is not None
        proto.transport.write(startup_packet(params))

    def close_from_broker(self, sqlstate: str, message: str, hint: str | None) -> None:
        """Called from any thread when the broker ends the session."""
        self.loop.call_soon_threadsafe(self.abort, sqlstate, message, hint)

    def pause_writing(self) -> None:
        # The client is not reading: stop reading upstream until it catches up.
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cleanup()

    # -- upstream side ----------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            if self.relaying:
                self.upstream_parser.feed(data)
                for _raw in self.upstream_parser.messages():
                    pass
                self._write(data)
                return
            self.upstream_parser.feed(data)
            if self._ssl_answer is not None and not self._ssl_answer.done():
                answer = self.upstream_parser.read_ssl_response()
                if answer is None:
                    return
                self._ssl_answer.set_result(answer)
                return
            assert self.login is not None and self.upstream is not None
            while True:
                raw = self.upstream_parser.next_raw()
                if raw is None:
                    break
                out = self.login.handle(raw)
                if out:
                    assert self.upstream.transport is not None
                    self.upstream.transport.write(out)
                if self.login.phase is UpstreamPhase.READY:
                    self._enter_relay()
                    rest = self.upstream_parser.pending_bytes
                    if rest:
                        raise ProtocolViolation("target sent data before the client's first query")
                    break
        except ProtocolViolation as exc:
            self.abort("08P01", f"protocol violation from the target: {exc}", None)
        except GatewayError as exc:
            self.abort(exc.sqlstate, exc.message, exc.hint)

    def _enter_relay(self) -> None:
        assert self.login is not None and self.live is not None
        if self.login.backend_key is not None:
            up = self.live.upstream
            self.gateway.cancel_keys[self.key] = CancelTarget(
                up.host, up.port, *self.login.backend_key
            )
        out = [pgwire.auth_ok()]
        out += [pgwire.parameter_status(n, v) for n, v in self.login.parameters]
        out.append(pgwire.backend_key_data(*self.key))
        out.append(pgwire.ready_for_query("I"))
        self.relaying = True
        for timer in self._timers[:1]:
            timer.cancel()  # the startup timeout
        self._write(b"".join(out))
        assert self.transport is not None
        self.transport.resume_reading()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        if self.relaying:
            self.abort(
                "57P01",
                "terminating connection: the target database closed the connection",
                "the database may have restarted, or the session's role was revoked",
            )
        else:
            self.abort("08006", "the target database closed the connection during login", None)

    # -- helpers ----------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def abort(self, sqlstate: str, message: str, hint: str | None) -> None:
        if self.closed:
            return
        self._write(pgwire.error_response("FATAL", sqlstate, f"dbaccess: {message}", hint=hint))
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None and self.upstream.transport is not None:
            if self.relaying:
                # A polite Terminate so the backend ends at once.
                with contextlib.suppress(Exception):
                    self.upstream.transport.write(b"X\x00\x00\x00\x04")
            self.upstream.transport.close()
        self._cleanup()

    def _cleanup(self) -> None:
        self.closed = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.gateway.connections.discard(self)
        self.gateway.cancel_keys.pop(self.key, None)
        if self.live is not None:
            self.gateway.service.detach(self.live, self)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


def upstream_ssl_context(sslmode: str, rootcert: str | None) -> ssl.SSLContext:
    """What libpq's sslmode means, as an SSLContext (prefer/require: encrypt only)."""
    if sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=rootcert)
        ctx.check_hostname = sslmode == "verify-full"
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def describe(gw: Gateway) -> dict[str, Any]:
    return {"host": gw.host, "port": gw.port, "connections": len(gw.connections)}
