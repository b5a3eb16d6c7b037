"""Running the broker: API and gateway in one asyncio loop, plus the reaper.

``Runtime`` wires the store, policy, session service, HTTP API (uvicorn) and
gateway together and owns shutdown.  ``role`` splits them between processes
(replicas on one PostgreSQL store): ``api`` serves the API without a gateway and
hands each session it starts to the gateway replica its client connects to
(:mod:`server.sessions.handoff`); ``gateway`` serves the gateway without the API,
and never imports the web framework (FastAPI, uvicorn, Jinja2, the MCP and
Slack SDKs: :meth:`Runtime._start_api` is the only way in).  Every role keeps
a lease, runs the reaper and records what it holds.

On SIGINT/SIGTERM on SIGINT/SIGTERM the gateway stops
accepting and lets statements in flight finish (up to ``shutdown_grace``
seconds) before it closes every client connection; then every open session is
ended (its role revoked), the replica's lease is ended
(:mod:`server.sessions.replicas`), the archiver (when ``archive`` is configured) spools
the last recordings and audit segment and uploads them if the archive answers,
and the API stops.  SIGHUP reloads the policy file; a policy that does
not load is rejected and the old one stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from server import metrics
from server.audit import chain
from server.audit.archive import ArchiveConfig, Archiver
from server.config import DEFAULT_WORKLOAD_TOKEN_TTL, OidcConfig, SlackConfig
from server.errors import DbaccessError
from server.gateway.analysis_limits import DEFAULT_ANALYSIS_LIMITS, AnalysisLimits
from server.gateway.masking_relay import MaskingSetup
from server.gateway.server import Gateway
from server.gateway.signals import SIGNALS
from server.gateway.wiring import guard_setup, limit_setup
from server.notify.fanout import Fanout
from server.notify.webhooks import WebhookConfig, Webhooks
from server.policy import Policy, load_policy
from server.policy.model import Issuer
from server.sessions.replicas import DEFAULT_LEASE_SECONDS, Membership
from server.sessions.service import SessionService
from server.store.db import Store
from server.store.sealing import StoreKeyError, StoreKeys
from server.tlsutil import TlsFiles, fingerprint, server_context

log = logging.getLogger("dbaccess.server")
# Seconds an analysis thread may hold the interpreter lock while the event loop waits.
SWITCH_INTERVAL = 0.001
# A collection of the youngest objects after this many more made than freed (700 by
# default).  A statement's objects (its analysis, its recording's fields) live
# until the recorder's writer thread has read them, a batch later: at 700 a busy
# gateway collected ~50 times a second, each holding the interpreter lock, and
# so the event loop, for up to 11 ms; at 10,000 it collected 8 times in a run of
# 10 s (bench/gateway_throughput.py, pgbench -S at 8 clients).
YOUNG_COLLECTION = 10_000


@dataclass(frozen=True)
class RuntimeOptions:
    api_host: str
    api_port: int
    gateway_host: str
    gateway_port: int
    policy_path: Path
    store_url: str
    # The keys that seal the secrets the store keeps (server/store/sealing.py).
    store_key_file: Path | None = None
    reaper_interval: float = 30.0
    public_gateway_host: str | None = None
    public_gateway_port: int | None = None
    # Deprecated ceiling on the policy's limits.max_connections_per_session.
    max_connections_per_session: int | None = None
    gateway_max_connections: int = 1000
    gateway_max_connections_per_identity: int = 100
    gateway_startup_timeout: float = 15.0
    shutdown_grace: float = 10.0
    gateway_cancel_rate: float = 5.0
    analysis_limits: AnalysisLimits = DEFAULT_ANALYSIS_LIMITS
    oidc: OidcConfig | None = None
    workload_token_ttl: timedelta = DEFAULT_WORKLOAD_TOKEN_TTL
    tls: TlsFiles | None = None
    require_tls: bool = True
    webhooks: tuple[WebhookConfig, ...] = ()
    archive: ArchiveConfig | None = None
    slack: SlackConfig | None = None
    # Where people reach the API (links in Slack messages, the web inbox's login
    # redirect); default: the listener's URL.
    public_api_url: str | None = None
    # (identity, groups) the web inbox offers a one-click login for: the dev mode's.
    ui_dev_logins: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Seconds this replica's heartbeat lease lasts: how long after its death other
    # replicas on the store wait before they end its sessions.
    replica_lease: float = DEFAULT_LEASE_SECONDS
    # What this process serves: "all", "api" (no gateway: public_gateway_* name the
    # gateway replicas) or "gateway" (no API).
    role: str = "all"
    # Statements carry their access facts (server/audit/access.py).  Off only in a
    # dev broker, to measure what they cost (``dbaccess-server dev --no-access-events``).
    access_events: bool = True


def _open_store(url: str, key_file: Path | None) -> Store:
    """The store, with its secrets sealed under the newest key of ``key_file``."""
    keys = StoreKeys.load(key_file) if key_file is not None else None
    store = Store.open(url, keys)
    try:
        if keys is not None:
            store.check_keys()
            sealed = store.seal_at_rest()
            if sealed:
                log.info(
                    "store: sealed %d secrets kept in clear with key %r", sealed, keys.newest.id
                )
    except BaseException:
        store.close()
        raise
    return store


def _refuse_unkeyed(store: Store, policy: Policy) -> None:
    """A broker without a store key starts only while it has nothing to seal."""
    vault = sorted(n for n, target in policy.targets.items() if target.issuer is Issuer.VAULT)
    kept = sum(store.secrets_at_rest().values())
    if vault or kept:
        store.close()
        what = f"targets {', '.join(vault)} use" if vault else "the store keeps"
        raise StoreKeyError(
            f"{what} Vault leases, which the store keeps only sealed, and no store key "
            "is configured",
            hint="set store_key_file (or DBACCESS_SERVER_STORE_KEY_FILE); "
            "'dbaccess-server store keygen --key-file PATH' writes one (docs/deploy.md)",
        )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _reachable(host: str) -> str:
    """A host to connect to for a listener bound to ``host`` (any address: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


class Runtime:
    def __init__(self, opts: RuntimeOptions) -> None:
        self.opts = opts
        self.store = _open_store(opts.store_url, opts.store_key_file)
        self.policy_path = opts.policy_path
        self.notifier = Fanout(Webhooks(opts.webhooks))
        self.archiver = Archiver(self.store, opts.archive) if opts.archive else None
        if opts.max_connections_per_session is not None:
            log.warning(
                "session_max_connections is deprecated: set limits.max_connections_per_session "
                "in the policy; until it is removed it caps the policy's value at %d",
                opts.max_connections_per_session,
            )
        policy = load_policy(opts.policy_path)
        _warn_masking_keys(policy)
        if self.store.keys is None:
            _refuse_unkeyed(self.store, policy)
        if opts.role == "api" and opts.public_gateway_host is None:
            raise DbaccessError(
                "an API-only broker serves no gateway: it needs public_gateway_address",
                hint="set public_gateway_address to where clients reach the gateway replicas",
            )
        self.service = SessionService(
            self.store,
            policy,
            max_connections_per_session=opts.max_connections_per_session,
            notifier=self.notifier,
            archiver=self.archiver,
            hand_off=opts.role == "api",
            recording_process=True,
        )
        self.membership = Membership(self.service, role=opts.role, lease=opts.replica_lease)
        self.gateway = self._gateway(opts) if opts.role != "api" else None
        self.api_sock = _bind(opts.api_host, opts.api_port) if opts.role != "gateway" else None
        self.api_port = self.api_sock.getsockname()[1] if self.api_sock is not None else None
        self.slack = None
        if opts.slack is not None and opts.role == "gateway":
            log.warning(
                "slack: a gateway-only broker posts no Slack messages; the reviews of "
                "statements it opens are announced by webhooks and the web inbox"
            )
        elif opts.slack is not None:
            # Imported only when configured: the Slack SDK stays out of other brokers.
            from server.integrations.slack import SlackApp

            self.slack = SlackApp(
                opts.slack,
                self.service.approvals,
                lambda: self.service.policy,
                ui_url=opts.public_api_url or self.api_url or "",
            )
            self.notifier.add(self.slack)

    def _gateway(self, opts: RuntimeOptions) -> Gateway:
        gateway = Gateway(
            self.service,
            ssl_context=server_context(opts.tls) if opts.tls else None,
            require_tls=opts.require_tls,
            startup_timeout=opts.gateway_startup_timeout,
            max_connections=opts.gateway_max_connections,
            max_connections_per_identity=opts.gateway_max_connections_per_identity,
            cancel_rate=opts.gateway_cancel_rate,
        )
        masking = MaskingSetup(self.service, opts.analysis_limits, access_events=opts.access_events)
        gateway.relay_setup.append(
            guard_setup(self.service, masking.pre_execution, opts.analysis_limits)
        )
        gateway.session_prepare.append(masking.prepare)
        gateway.relay_setup.append(masking.setup)
        gateway.relay_setup.append(limit_setup(self.service))
        return gateway

    @property
    def api_url(self) -> str | None:
        """The API's URL; None for a gateway-only broker."""
        if self.api_port is None:
            return None
        host = self.opts.api_host
        scheme = "https" if self.opts.tls else "http"
        return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{self.api_port}"

    def reload_policy(self) -> bool:
        try:
            policy = load_policy(self.policy_path)
        except DbaccessError as exc:
            log.error("policy reload rejected, keeping the old policy: %s", exc.message)
            chain.append(self.store, "policy.reload_rejected", data={"error": exc.message})
            return False
        self.service.policy = policy
        _warn_masking_keys(policy)
        chain.append(self.store, "policy.reloaded", data={"path": str(self.policy_path)})
        log.info("policy reloaded from %s", self.policy_path)
        return True

    async def serve(self, on_ready: Callable[[Runtime], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: loop.run_in_executor(None, self.reload_policy)
        )

        # Registered before anything can start a session: until then, another
        # replica would take this one's sessions for a dead replica's.
        self.membership.api_url = self.api_url
        await loop.run_in_executor(None, self.membership.join)
        self.membership.start()  # the lease is renewed from now on, however long start-up takes
        if self.gateway is not None:
            await self.gateway.start(self.opts.gateway_host, self.opts.gateway_port)
        api = await self._start_api() if self.api_sock is not None else None
        # Everything loaded so far (modules, the policy, sqlglot's tables) lives as
        # long as the broker: out of the collector's sight, so that the full
        # collections a large statement's many objects set off stay short (they
        # hold the interpreter lock, and so the event loop, while they run).
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_COLLECTION, *gc.get_threshold()[1:])
        # The event loop asks for the interpreter lock back from an analysis
        # thread after this long (5 ms by default); a thread working through a
        # Query of thousands of statements then delays it less.
        sys.setswitchinterval(SWITCH_INTERVAL)

        report = await loop.run_in_executor(None, lambda: self.service.reap(startup=True))
        if report.revoked_roles or report.orphaned_sessions or report.expired_sessions:
            log.warning(
                "reaper at start-up: %d expired, %d orphaned sessions; revoked roles: %s",
                len(report.expired_sessions),
                len(report.orphaned_sessions),
                ", ".join(report.revoked_roles) or "none",
            )
        integrity = await loop.run_in_executor(None, chain.verify, self.store)
        if not integrity.ok:
            # Loud, and in the chain itself: the evidence must not depend on
            # someone reading this log line.
            log.error(
                "AUDIT LOG TAMPERED: event %s: %s (dbaccess audit verify shows it)",
                integrity.first_bad_seq,
                integrity.problem,
            )
        started: dict[str, Any] = {
            "api": self.api_url,
            "audit_verified": integrity.ok,
            "audit_first_bad_seq": integrity.first_bad_seq,
        }
        if self.opts.role != "all":
            started["role"] = self.opts.role
        chain.append(self.store, "broker.started", data=started)
        reaper = asyncio.create_task(self._reaper(stop))
        if self.archiver is not None:
            self.archiver.start()
        if on_ready is not None:
            on_ready(self)
        try:
            await stop.wait()
        finally:
            log.warning(
                "shutting down: letting statements in flight finish (up to %gs), "
                "then ending open sessions",
                self.opts.shutdown_grace,
            )
            reaper.cancel()
            if self.gateway is not None:
                await self.gateway.stop(self.opts.shutdown_grace)
            await loop.run_in_executor(None, self.service.end_all)
            await loop.run_in_executor(None, self.service.recorder.stop)
            await loop.run_in_executor(None, self.service.audit.stop)
            await loop.run_in_executor(None, self.membership.leave)
            await loop.run_in_executor(None, self.service.close_issuers)
            await loop.run_in_executor(None, self.notifier.close)
            chain.append(self.store, "broker.stopped", data={})
            if self.archiver is not None:
                await loop.run_in_executor(None, self.archiver.stop)
            if api is not None:
                await api()
            self.store.close()

    def _gateway_info(self) -> tuple[str, int]:
        """Where clients reach the gateway: the public address, else this process's own."""
        if self.opts.public_gateway_host is not None and self.opts.public_gateway_port:
            return self.opts.public_gateway_host, self.opts.public_gateway_port
        assert self.gateway is not None  # an API-only broker has a public address
        return (
            self.opts.public_gateway_host or self.gateway.host,
            self.opts.public_gateway_port or self.gateway.port,
        )

    async def _start_api(self) -> Callable[[], Coroutine[Any, Any, None]]:
        """Serve the API, the web inbox, /mcp and /metrics; returns what stops them.

        The only place the web framework is imported: a gateway-only broker never
        gets here, and so never loads it."""
        import uvicorn

        from server.api.app import GatewayInfo, create_app
        from server.api.auth_routes import AuthSettings

        assert self.api_sock is not None
        unregister_metrics = metrics.register(self.service, self.gateway, SIGNALS)
        host, port = self._gateway_info()
        info = GatewayInfo(
            host=host,
            port=port,
            tls=self.opts.tls is not None,
            ca_fingerprint=fingerprint(self.opts.tls.ca)
            if self.opts.tls and self.opts.tls.ca
            else None,
        )
        auth = AuthSettings(oidc=self.opts.oidc, workload_token_ttl=self.opts.workload_token_ttl)
        app = create_app(self.service, info, auth)
        from server.ui.web import UI_SESSION_TTL, UiSettings
        from server.ui.web import register as register_ui

        register_ui(
            app,
            self.service,
            UiSettings(
                oidc=self.opts.oidc,
                dev_logins=self.opts.ui_dev_logins,
                public_url=self.opts.public_api_url,
                session_ttl=self.opts.oidc.token_ttl if self.opts.oidc else UI_SESSION_TTL,
            ),
        )
        if self.slack is not None:
            from server.integrations.slack import register as register_slack

            register_slack(app, self.slack)
        from server.mcp.http import LocalGateway
        from server.mcp.http import register as register_mcp

        # The agents' SQL goes through this process's own gateway, or, from an
        # API-only broker, through the gateway replicas.
        own = self.gateway
        agent_tools = register_mcp(
            app,
            self.service,
            LocalGateway(
                host=_reachable(own.host) if own is not None else host,
                port=own.port if own is not None else port,
                tls=self.opts.tls is not None,
                ca_file=str(self.opts.tls.ca) if self.opts.tls and self.opts.tls.ca else None,
            ),
        )
        await agent_tools.start()

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                # Signals belong to the runtime, which shuts down in order.
                yield

        tls = self.opts.tls
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            access_log=False,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[self.api_sock]))

        async def stop() -> None:
            await agent_tools.stop()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            unregister_metrics()

        return stop

    async def _reaper(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.opts.reaper_interval)
            if stop.is_set():
                return
            try:
                report = await loop.run_in_executor(None, self.service.reap)
            except Exception:
                log.exception("reaper run failed")
                continue
            for err in report.errors:
                log.warning("reaper: %s", err)


def run(opts: RuntimeOptions, on_ready: Callable[[Runtime], None] | None = None) -> None:
    runtime = Runtime(opts)
    try:
        import uvloop
    except ImportError:
        asyncio.run(runtime.serve(on_ready))
    else:
        uvloop.run(runtime.serve(on_ready))


def _warn_masking_keys(policy: Policy) -> None:
    """Say at start and at each reload which masking keys sessions will not find
    (such sessions are refused, naming the key, when they start)."""
    from server.gateway.masking import masking_key_problems

    for problem in masking_key_problems(policy.targets.values(), environment=True):
        log.warning("masking: %s; sessions that need this key are refused", problem)
