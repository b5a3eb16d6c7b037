"""The gateway's asyncio shell: the one module of the gateway that touches sockets.

Each accepted client gets a ``ClientConnection`` (an asyncio Protocol).  It
answers SSLRequest and then runs the client's TLS itself over memory buffers
(``tls.py``: one SSL_read per request, one SSL_write per response, straight
from the socket callbacks), feeds the plaintext to the sans-IO startup logic
in ``session.py``, resolves the
session ticket with the session service (in a worker thread, as it may hit the
store), checks the connection caps, opens the upstream connection as the
session's role, and then hands both byte streams to a ``Relay`` (``relay.py``),
which frames message boundaries, refuses unknown client message types, runs
the hooks registered per message type and returns the bytes to write on.
Callbacks run straight from the event loop's reads: no task per connection
once it relays.

Write-buffer backpressure works in both directions: when the client does not
read, its transport's buffer passes the high-water mark and reading from the
target pauses until it drains (and the other way round), so a slow reader
costs the gateway a bounded buffer instead of the whole result.

A bug in the gateway never shows as a database failure: an exception that
escapes the startup logic, the relay setup or a relay hook ends the
connection with ``XX000 dbaccess: internal error (see the broker log, id
…)``, and the broker log holds the traceback under the same id
(:meth:`ClientConnection.internal_error`).  Relay state after such an
exception cannot be trusted, so the connection is not kept.

Analysis off the event loop.  The hooks of client messages analyse every
statement (guardrails, masking), which costs time linear in its length.  A
chunk of client bytes that completes more than ``OFFLOAD_BYTES`` of messages is
handed to ``Relay.from_client`` in one of a few analysis threads
(``ANALYSIS_THREADS``) instead: meanwhile the connection reads neither its
client nor its target (so its messages keep their order and its relay is only
ever used by one thread at a time), every other connection, and the API, go
on; the bytes the relay decided on are written when the thread is done.
Smaller chunks are analysed inline: measured (``bench/analysis_cost.py``), a
statement of up to 1 kB costs at most a few milliseconds whatever its shape.
A thread alone would still stall the loop while sqlglot's compiled code holds
the interpreter lock, so the thread sends statement texts over 2 KiB on to a
worker process (``Gateway.workers``, ``server.gateway.analysis_pool``) and
waits for the answer without the lock.
What a statement may cost at all is bounded by ``server.gateway.analysis_limits``.
Messages a gate holds because they wait on the store (a review's approval,
``Relay.gate_client``; the gates are asked in the analysis threads too) go
through the hooks the same way, in threads of their own (``WAIT_THREADS``), one
such message a turn: a slow store holds up no other session's analysis.

Shutdown (``Gateway.stop``) stops accepting, closes connections that are
idle or still logging in, lets the others finish what is in flight up to a
grace period (a connection closes once its last ReadyForQuery has been
forwarded: at the client's next message, or a second later) and then closes
the rest, each with 57P01.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import cast

from server.audit.recording import LimitHit, record_limit
from server.errors import DbaccessError, TooManyConnections
from server.gateway import pgwire
from server.gateway.analysis_pool import AnalysisPool, offloading
from server.gateway.limits import (
    CANCEL_RATE_PER_ADDRESS,
    CancelLimiter,
    CapRefused,
    ConnectionCaps,
)
from server.gateway.pgwire import ProtocolViolation
from server.gateway.pinning import LimitPins, startup_limit_hit, startup_refusal
from server.gateway.relay import Relay
from server.gateway.search_path import DEFAULT_SEARCH_PATH
from server.gateway.session import (
    FORWARDED_STARTUP,
    CancelResult,
    ClientStartup,
    GatewayError,
    StartTls,
    StartupResult,
    UpstreamLogin,
    UpstreamPhase,
    startup_packet,
)
from server.gateway.signals import SIGNALS
from server.gateway.tls import ServerTls, TlsError
from server.policy.limits import SUPERUSER_SETTINGS, database_settings
from server.sessions.service import LiveSession, SessionService
from server.store.db import utcnow

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 15.0
UPSTREAM_CONNECT_TIMEOUT = 10.0
HIGH_WATER = 512 * 1024
LOW_WATER = 64 * 1024
SHUTDOWN_MESSAGE = "terminating connection: the broker is shutting down"
SHUTDOWN_HINT = "start a new session with dbaccess connect when the broker is back"
SHUTDOWN_LINGER = 1.0
INTERNAL_HINT = "tell the broker's administrator the id; start a new connection to go on"
_TERMINATE = pgwire.Terminate().encode()
# Client bytes that complete more than this of messages are relayed (and so
# analysed) in an analysis thread, off the event loop.
OFFLOAD_BYTES = 1024
ANALYSIS_THREADS = 2
# Threads that run client messages a hook holds to wait on the store (a review's
# approval): apart from the analysis threads, so that a slow store holds up no
# other session's analysis, and several reviews wait at once.
WAIT_THREADS = 8
# The client's startup parameters that go upstream as given (application_name
# has a default of its own).
_PASSED_ON = sorted(FORWARDED_STARTUP - {"application_name"})

# Called for every connection that enters the relay phase, to register hooks
# (guardrails, masking, recording) for the session it belongs to.
RelaySetup = Callable[[Relay, LiveSession], None]
# Called in a worker thread for every connection once its session is known,
# before the relay starts: blocking preparation (masking rules, catalog).
SessionPrepare = Callable[[LiveSession], None]


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
        startup_timeout: float = STARTUP_TIMEOUT,
        max_connections: int = 1000,
        max_connections_per_identity: int = 100,
        cancel_rate: float = CANCEL_RATE_PER_ADDRESS,
        use_workers: bool = True,
    ) -> None:
        self.service = service
        self.ssl_context = ssl_context
        self.require_tls = require_tls and ssl_context is not None
        self.startup_timeout = startup_timeout
        self.caps = ConnectionCaps(max_connections, max_connections_per_identity)
        self.cancel_rate = cancel_rate
        self.connections: set[ClientConnection] = set()
        self.cancel_keys: dict[tuple[int, int], CancelTarget] = {}
        self.relay_setup: list[RelaySetup] = []
        self.session_prepare: list[SessionPrepare] = []
        self.draining = False
        self._server: asyncio.base_events.Server | None = None
        # Bounded: a client that sends costly statements waits for a thread, the
        # event loop never does.
        self.analysis = ThreadPoolExecutor(ANALYSIS_THREADS, thread_name_prefix="dbaccess-analysis")
        # Where the analysis threads send long texts (``analysis_pool``): its
        # processes start when the first such text comes (most brokers never see
        # one), and are stopped with the gateway.  None: the threads read them.
        self.workers: AnalysisPool | None = AnalysisPool(ANALYSIS_THREADS) if use_workers else None
        self.waits = ThreadPoolExecutor(WAIT_THREADS, thread_name_prefix="dbaccess-store-wait")
        self._cancel_limiter: CancelLimiter | None = None
        self._cancel_logged = float("-inf")
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._cancel_limiter = CancelLimiter.for_rate(self.cancel_rate, loop.time())
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.host, self.port = sock.getsockname()[:2]

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting, let statements in flight finish for up to ``grace`` seconds,
        then close every connection with 57P01."""
        loop = asyncio.get_running_loop()
        if self._server is not None:
            self._server.close()
        self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.connections:
            log.warning(
                "shutdown: closing %d connections with statements still running",
                len(self.connections),
            )
        for conn in list(self.connections):
            conn.abort("57P01", SHUTDOWN_MESSAGE, SHUTDOWN_HINT)
        # An analysis still running ends within its CPU budget; queued ones never start.
        self.analysis.shutdown(wait=False, cancel_futures=True)
        self.waits.shutdown(wait=False, cancel_futures=True)
        if self.workers is not None:
            # Killed: an analysis thread waiting for one gets an answer at once.
            self.workers.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def cancel(self, key: tuple[int, int], address: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        limiter = self._cancel_limiter
        if limiter is not None and not limiter.allow(address, now):
            if now - self._cancel_logged >= 1.0:
                self._cancel_logged = now
                log.warning(
                    "ignoring CancelRequests over the rate limit (from %s; %d ignored so far)",
                    address,
                    limiter.refused,
                )
            return
        target = self.cancel_keys.get(key)
        if target is None:
            return  # unknown keys are ignored, as PostgreSQL does
        try:
            _r, w = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port), UPSTREAM_CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            return
        w.write(pgwire.CancelRequest(target.pid, target.secret).encode())
        with contextlib.suppress(Exception):
            await w.drain()
        w.close()


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, owner: ClientConnection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        # Straight to the connection: one Python call less per read.
        self.data_received = owner.upstream_data  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        _nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        # Upstream is not reading what the client sends: stop reading the client.
        self.owner.upstream_full = True
        self.owner.reading_client()

    def resume_writing(self) -> None:
        self.owner.upstream_full = False
        self.owner.reading_client()


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
        self.identity: str | None = None  # set once counted against the caps
        self.cap_target: str | None = None  # the target it is counted against
        self.relay: Relay | None = None
        self.closed = False
        # close() cleans up and connection_lost() follows it: only the first counts.
        self._cleaned_up = False
        self.key = (secrets.randbits(31), secrets.randbits(32))
        self.id = f"c-{secrets.token_hex(6)}"  # names the connection in the broker's log
        self._ssl_answer: asyncio.Future[bytes] | None = None
        self.tls: ServerTls | None = None
        self._closing = False
        self._timers: list[asyncio.TimerHandle] = []
        # Direct references for the relay hot path.
        self._up: asyncio.Transport | None = None
        self._session_params: dict[str, str] = {}  # what the upstream login set
        self._connection_facts: dict[str, object] | None = None  # for the recording
        # Why the client is not read: the target's buffer is full, or the relay
        # holds the client's messages while it asks the target something.
        self.upstream_full = False
        self._client_paused = False
        # An analysis thread has the relay: neither side is read meanwhile, and
        # whatever still arrives waits here, in order.
        self._analysing = False
        self._client_full = False  # the client's transport is over its high-water mark
        self._held_client: list[bytes] = []
        self._held_upstream: list[bytes] = []

    @property
    def relaying(self) -> bool:
        return self.relay is not None

    def gone(self) -> bool:
        """Closed meanwhile (asked after an await, where the flag may have changed)."""
        return self.closed

    # -- client side ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        _nodelay(transport)
        self.gateway.connections.add(self)
        SIGNALS.connections += 1
        if self.gateway.draining:
            self.abort("57P01", SHUTDOWN_MESSAGE, SHUTDOWN_HINT)
            return
        self._timers.append(
            self.loop.call_later(self.gateway.startup_timeout, self._startup_timeout)
        )

    def _startup_timeout(self) -> None:
        if not self.relaying:
            self.abort("08P01", "timeout waiting for the client to log in", None)

    def data_received(self, data: bytes) -> None:
        SIGNALS.bytes_from_clients += len(data)
        tls = self.tls
        if tls is not None:
            try:
                data, back = tls.receive(data)
            except TlsError as exc:
                log.info("closing a client connection: %s", exc, extra=self.log_ids())
                self.close()
                return
            if back and not self.closed:
                assert self.transport is not None
                self.transport.write(back)
            if tls.closed:
                self.close()
                return
            if not data:
                return
        relay = self.relay
        if relay is not None and not self.closed:
            self._relay_client(relay, data)
            return
        if self.closed:
            return
        try:
            self.parser.feed(data)
            while not self.closed and not self.relaying:
                startup_msg = self.parser.next_raw()
                if startup_msg is None:
                    break
                reply, result = self.startup.handle(startup_msg)
                if reply:
                    self._write(reply)
                if isinstance(result, StartTls):
                    # From here on every byte from the client is a TLS record;
                    # the parser has already refused bytes sent after the
                    # request in the clear (CVE-2021-23214).
                    assert self.gateway.ssl_context is not None
                    self.tls = ServerTls(self.gateway.ssl_context)
                    self.startup.tls_active = True
                    return
                if isinstance(result, CancelResult):
                    self.loop.create_task(
                        self.gateway.cancel((result.pid, result.secret), self._peer())
                    )
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
        except Exception:
            self.internal_error("handling the client's startup")

    def _relay_client(self, relay: Relay, data: bytes) -> None:
        if self._analysing:
            self._held_client.append(data)
            return
        if self._closing:
            # Shutting down: the client's next statement gets the reason.
            self.abort("57P01", SHUTDOWN_MESSAGE, SHUTDOWN_HINT)
            return
        if relay.client_whole_bytes(len(data)) > OFFLOAD_BYTES:
            self._analyse_off_loop(relay, data)
            return
        relayed = self._relay_step(partial(relay.from_client, data), "relaying a client message")
        if relayed is not None:
            self._client_relayed(relay, *relayed)

    def _relay_step(
        self, step: Callable[[], tuple[bytes, bytes]], doing: str, source: str = ""
    ) -> tuple[bytes, bytes] | None:
        """``step()`` (a call of the relay, or the result of one made in an
        analysis thread); None when it failed, after the connection was aborted
        with the reason (``source`` names where a protocol violation came from)."""
        try:
            return step()
        except ProtocolViolation as exc:
            self.abort("08P01", f"protocol violation{source}: {exc}", None)
        except GatewayError as exc:
            self.abort(exc.sqlstate, exc.message, exc.hint)
        except CancelledError:  # an analysis that never started: the broker is stopping
            self.abort("57P01", SHUTDOWN_MESSAGE, SHUTDOWN_HINT)
        except Exception:
            self.internal_error(doing)
        return None

    def _client_relayed(self, relay: Relay, up: bytes, back: bytes) -> None:
        if up:
            assert self._up is not None
            self._up.write(up)
        if back:
            self._write(back)
        if relay.off_loop_wanted and not self.closed:
            # A gate held a message that waits on the store: its hooks run on a thread.
            self._analyse_off_loop(relay, b"", relay.release_off_loop, waits=True)
            return
        if relay.holding:
            self.reading_client()

    def _analyse_off_loop(
        self,
        relay: Relay,
        data: bytes,
        work: Callable[[], tuple[bytes, bytes]] | None = None,
        *,
        waits: bool = False,
    ) -> None:
        """``relay.from_client(data)`` (or ``work``, another call of the relay that
        runs client hooks) in an analysis thread, where the gates hold what must
        wait on the store; ``waits``: ``relay.release_off_loop`` in one of the
        threads that may wait on it (``Gateway.waits``).  The connection reads
        neither side until it is done (``_analysed``)."""
        self._analysing = True
        self.reading_client()
        if self._up is not None:
            self._up.pause_reading()
        try:
            job = (self.gateway.waits if waits else self.gateway.analysis).submit(
                _relay_off_loop,
                self.gateway.workers,
                relay,
                work or partial(relay.from_client, data),
                self.gone,
                waits,
            )
        except RuntimeError:  # shut down: the broker is stopping
            self.abort("57P01", SHUTDOWN_MESSAGE, SHUTDOWN_HINT)
            return
        job.add_done_callback(
            lambda done: self.loop.call_soon_threadsafe(self._analysed, relay, done)
        )

    def _analysed(self, relay: Relay, job: Future[tuple[bytes, bytes]]) -> None:
        self._analysing = False
        if self.closed:
            return
        relayed = self._relay_step(job.result, "relaying a client message")
        if relayed is None:
            return
        self._client_relayed(relay, *relayed)
        if self._analysing:
            return  # the next held statement's turn off the loop: still reading neither side
        if self._up is not None and not self._client_full:
            self._up.resume_reading()
        self.reading_client()
        # What arrived while the thread had the relay (normally nothing: neither
        # side was read), in the order it came; either may start the next analysis.
        while self._held_upstream and not self._analysing and not self.closed:
            self.upstream_data(self._held_upstream.pop(0))
        while self._held_client and not self._analysing and not self.closed:
            self._relay_client(relay, self._held_client.pop(0))

    def _record_connection(self, kind: str) -> None:
        """``connection.open`` / ``connection.close`` in the session's recording."""
        live = self.live
        if live is None:
            return
        data = self._connection_facts
        if data is None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            data = self._connection_facts = {
                "client_addr": str(peer[0]) if isinstance(peer, tuple) and peer else "unknown",
                "client_port": peer[1] if isinstance(peer, tuple) and len(peer) > 1 else None,
                "application_name": self._session_params.get("application_name"),
            }
        try:
            self.gateway.service.recorder.record(live.id, kind, data)
        except Exception:  # recording problems never break the connection
            log.exception("recording %s failed", kind)

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    async def _upstream_tls(
        self, proto: UpstreamProtocol, sslmode: str, host: str, rootcert: str | None
    ) -> bool:
        """SSLRequest to the target and the handshake its sslmode asks for.

        Returns False when the connection was aborted (the client got the reason).
        """
        assert proto.transport is not None
        self.upstream_parser.expect_ssl_response()
        self._ssl_answer = self.loop.create_future()
        proto.transport.write(pgwire.SSLRequest().encode())
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
        tls.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        proto.transport = tls
        return True

    async def _open_session(self, result: StartupResult) -> None:
        service = self.gateway.service
        try:
            live = await self.loop.run_in_executor(
                None, service.resolve_ticket, result.ticket, result.params.get("database")
            )
            if self.gone():
                return
            limits = service.limits(live)
            pins = LimitPins.of(limits, live.record.target, live.record.scope)
            refused = startup_refusal(result.params, pins)
            if refused is not None:
                hit = startup_limit_hit(result.params, pins, refused[0])
                record_limit(service.recorder.record, live.id, hit)
                self.abort("42501", *refused)
                return
            caps = await self.loop.run_in_executor(None, service.connection_caps, live)
            if self.gone():
                return
            try:
                self.gateway.caps.admit(live.record.identity, caps)
                self.identity = live.record.identity
                self.cap_target = caps.target
                service.attach(live, self)
            except (CapRefused, TooManyConnections) as exc:
                # A refused connection is a limit event of the session it asked to join.
                hit = LimitHit(
                    limit=exc.limit,
                    value=exc.value,
                    scope=live.record.scope,
                    action="refused",
                    sqlstate="53300",
                    message=exc.message,
                )
                record_limit(service.recorder.record, live.id, hit)
                raise
            # Known from here, so that _cleanup detaches it however this ends.
            self.live = live
            for prepare in self.gateway.session_prepare:
                await self.loop.run_in_executor(None, prepare, live)
                if self.gone():
                    return
        except GatewayError as exc:
            self.abort(exc.sqlstate, exc.message, exc.hint)
            return
        except DbaccessError as exc:
            self.abort(exc.sqlstate, exc.message, exc.hint)
            return
        except Exception:
            self.internal_error("opening the session")
            return
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
        if self.gone():
            if proto.transport is not None:
                proto.transport.close()
            return
        self.upstream = proto
        sslmode = (up.sslmode or "prefer").lower()
        wants_tls = sslmode in ("prefer", "require", "verify-ca", "verify-full")
        if wants_tls and not await self._upstream_tls(proto, sslmode, up.host, up.sslrootcert):
            return
        password = live.credential.password
        if live.credential.password_provider is not None:
            # A login token (RDS IAM) is minted for each connection: it expires in minutes.
            try:
                password = await self.loop.run_in_executor(None, live.credential.login_password)
            except DbaccessError as exc:
                self.abort(exc.sqlstate, exc.message, exc.hint)
                return
        self.login = UpstreamLogin(
            live.credential.username,
            password,
            tls_verified=sslmode in ("verify-ca", "verify-full"),
        )
        params = {
            "user": live.credential.username,
            "database": up.database,
            "client_encoding": "UTF8",
            # Pinned (the guardrails refuse changing them): the analysis reads
            # statements as UTF-8 with standard-conforming string literals.
            "standard_conforming_strings": "on",
            "application_name": result.params.get("application_name", "dbaccess"),
        }
        for key in _PASSED_ON:
            if key in result.params:
                params[key] = result.params[key]
        # The scope's limits, again at every login: they hold from the first
        # statement whatever the role carries (a Vault role, a shared IAM user).
        # temp_file_limit only a superuser may pass; the role carries it.
        for key, value in database_settings(limits).items():
            if key not in SUPERUSER_SETTINGS:
                params[key] = value
        # Always sent, so that a default set on the database or role (which the
        # analysis cannot see) never applies; the guardrails keep it fixed.
        params.setdefault("search_path", DEFAULT_SEARCH_PATH)
        self._session_params = {k: v for k, v in params.items() if k not in ("user", "database")}
        assert proto.transport is not None
        proto.transport.write(startup_packet(params))

    def close_from_broker(self, sqlstate: str, message: str, hint: str | None) -> None:
        """Called from any thread when the broker ends the session."""
        self.loop.call_soon_threadsafe(self.abort, sqlstate, message, hint)

    def _close_after_last_answer(self) -> None:
        """At shutdown, once the last statement in flight is answered.

        The reason is sent as the answer to the client's next message, or after
        a short linger: sent right behind the last ReadyForQuery, libpq would
        read it together with that answer and take it for a mere notice.
        """
        self._closing = True
        self._timers.append(
            self.loop.call_later(
                SHUTDOWN_LINGER, self.abort, "57P01", SHUTDOWN_MESSAGE, SHUTDOWN_HINT
            )
        )

    def close_if_idle(self) -> None:
        """At shutdown: close now unless a statement is in flight (then after its answer)."""
        relay = self.relay
        if relay is None or not (relay.busy or self._analysing):
            self.abort("57P01", SHUTDOWN_MESSAGE, SHUTDOWN_HINT)

    def reading_client(self) -> None:
        """Read the client unless the target's buffer is full or the relay holds
        the client's messages (both would otherwise grow without bound)."""
        relay = self.relay
        pause = self.upstream_full or self._analysing or (relay is not None and relay.holding)
        if pause == self._client_paused or self.transport is None or self.closed:
            return
        self._client_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        # The client is not reading: stop reading upstream until it catches up.
        self._client_full = True
        if self._up is not None:
            self._up.pause_reading()

    def resume_writing(self) -> None:
        self._client_full = False
        if self._up is not None and not self._analysing:
            self._up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cleanup()

    # -- upstream side ----------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        SIGNALS.bytes_from_targets += len(data)
        relay = self.relay
        if relay is not None and not self.closed:
            if self._analysing:
                self._held_upstream.append(data)
                return
            relayed = self._relay_step(
                partial(relay.from_server, data), "relaying a server message", " from the target"
            )
            if relayed is None:
                return
            out, back = relayed
            if out:
                assert self.transport is not None
                tls = self.tls
                if tls is not None:
                    try:
                        out = tls.send(out)
                    except TlsError:
                        self.close()
                        return
                self.transport.write(out)
            if back and self._up is not None:
                self._up.write(back)
            if relay.cancel_wanted:
                # Before anything held goes on (the relay keeps it until the cancel is out).
                relay.cancel_wanted = False
                self.loop.create_task(self._cancel_cut(relay))
            if relay.off_loop_wanted and not self.closed:
                # Released client messages (a detour or a cut ended): one waits on the store.
                self._analyse_off_loop(relay, b"", relay.release_off_loop, waits=True)
                return
            if self._client_paused and not relay.holding:
                self.reading_client()
            if self.gateway.draining and not relay.busy and not self._closing:
                self._close_after_last_answer()
            return
        if self.closed:
            return
        try:
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
                    if self.upstream_parser.pending_bytes:
                        raise ProtocolViolation("target sent data before the client's first query")
                    self._enter_relay()
                    break
        except ProtocolViolation as exc:
            self.abort("08P01", f"protocol violation from the target: {exc}", None)
        except GatewayError as exc:
            self.abort(exc.sqlstate, exc.message, exc.hint)
        except DbaccessError as exc:
            self.abort(exc.sqlstate, exc.message, exc.hint)
        except Exception:
            self.internal_error("starting the relay")

    def _enter_relay(self) -> None:
        assert self.login is not None and self.live is not None and self.upstream is not None
        if self.login.backend_key is not None:
            up = self.live.upstream
            self.gateway.cancel_keys[self.key] = CancelTarget(
                up.host, up.port, *self.login.backend_key
            )
        relay = Relay(self._session_params)
        relay.may_block = False  # its calls from here run on the loop of every connection
        for setup in self.gateway.relay_setup:
            setup(relay, self.live)
        out = [pgwire.auth_ok()]
        out += [pgwire.parameter_status(n, v) for n, v in self.login.parameters]
        out.append(pgwire.backend_key_data(*self.key))
        out += relay.greeting
        out.append(pgwire.ready_for_query("I"))
        self._up = self.upstream.transport
        self.relay = relay
        self._record_connection("connection.open")
        for timer in self._timers[:1]:
            timer.cancel()  # the startup timeout
        self._write(b"".join(out))
        if self.gateway.draining:
            self.abort("57P01", SHUTDOWN_MESSAGE, SHUTDOWN_HINT)
            return
        assert self.transport is not None
        self.transport.resume_reading()

    async def _cancel_cut(self, relay: Relay) -> None:
        """Cancel the statement whose result the relay cut, then let the relay go on.

        The target closes a cancel connection once it has signalled the backend,
        so the relay (which holds the client's next messages until now) knows
        that a late cancel cannot reach a statement the client sends next.
        """
        target = self.gateway.cancel_keys.get(self.key)
        if target is not None:
            try:
                r, w = await asyncio.wait_for(
                    asyncio.open_connection(target.host, target.port), UPSTREAM_CONNECT_TIMEOUT
                )
                try:
                    w.write(pgwire.CancelRequest(target.pid, target.secret).encode())
                    await w.drain()
                    await asyncio.wait_for(r.read(), UPSTREAM_CONNECT_TIMEOUT)
                finally:
                    w.close()
            except (OSError, TimeoutError) as exc:
                log.warning(
                    "cancelling a statement whose result was cut failed: %s",
                    exc,
                    extra=self.log_ids(),
                )
        while self._analysing and not self.closed:
            # An analysis thread has the relay (it is only holding what arrives).
            await asyncio.sleep(0.005)
        if self.closed or self.relay is not relay:
            return
        if relay.held_bytes > OFFLOAD_BYTES:
            # The held messages go through the hooks now: analysed off the loop.
            self._analyse_off_loop(relay, b"", relay.cancel_done)
            return
        relayed = self._relay_step(relay.cancel_done, "relaying a client message")
        if relayed is None:
            return
        self._client_relayed(relay, *relayed)
        if self._client_paused and not relay.holding:
            self.reading_client()

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
        if self.transport is None or self.closed:
            return
        tls = self.tls
        if tls is not None:
            if not tls.established:
                return  # nothing can be said to a client before its handshake
            try:
                data = tls.send(data)
            except TlsError:
                return
        self.transport.write(data)

    def log_ids(self) -> dict[str, str | None]:
        """This connection's and its session's ids, for a log line's ``extra``."""
        return {"connection_id": self.id, "session_id": self.live.id if self.live else None}

    def internal_error(self, doing: str) -> None:
        """A bug: the traceback goes to the broker log under a fresh id, and the
        client gets ``XX000`` naming that id (never a database failure)."""
        incident = secrets.token_hex(4)
        session = self.live.id if self.live is not None else "-"
        log.exception(
            "internal error %s while %s (session %s)",
            incident,
            doing,
            session,
            extra=self.log_ids(),
        )
        self.abort("XX000", f"internal error (see the broker log, id {incident})", INTERNAL_HINT)

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
                    self.upstream.transport.write(_TERMINATE)
            self.upstream.transport.close()
        self._cleanup()

    def _cleanup(self) -> None:
        self.closed = True
        if self._cleaned_up:
            return
        self._cleaned_up = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.gateway.connections.discard(self)
        self.gateway.cancel_keys.pop(self.key, None)
        if self.identity is not None:
            self.gateway.caps.release(self.identity, self.cap_target)
            self.identity = None
        if self.live is not None:
            if self.relay is not None and self.gateway.service.live(self.live.id) is not None:
                # Not once the session ended: its recording is closing then.
                self._record_connection("connection.close")
            self.gateway.service.detach(self.live, self)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


def _relay_off_loop(
    workers: AnalysisPool | None,
    relay: Relay,
    work: Callable[[], tuple[bytes, bytes]],
    gone: Callable[[], bool],
    may_block: bool,
) -> tuple[bytes, bytes]:
    """``work`` (a call of the relay that runs client hooks) in a thread, long texts
    read by ``workers``; its hooks may wait on the store only where ``may_block``
    (a thread of ``Gateway.waits``: elsewhere the gates hold what would).
    Nothing for a connection ``gone`` meanwhile (its turn may have waited behind
    others): no review's approval is used up, nor one opened, for what will
    never run."""
    if gone():
        return b"", b""
    relay.may_block = may_block
    try:
        with offloading(workers):
            return work()
    finally:
        relay.may_block = False


def _nodelay(transport: asyncio.BaseTransport) -> None:
    # Small request/response messages must not wait for Nagle's algorithm.
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
