"""Session lifecycle: the broker's one place that starts, ends and reaps sessions.

A session is an identity's time-boxed use of one (target, scope).  Starting one
evaluates policy, has the target's issuer mint a database role valid until the
deadline, stores the session and a hash of its ticket, and keeps the credential
in memory only (``LiveSession``).  The gateway resolves tickets here and
registers each client connection so that ending the session (client exit, admin
kill, deadline, shutdown) closes every connection before the role is revoked.

**Replicas.**  Several brokers may share one store (PostgreSQL).  Each process is
a replica with an id (``replica_id``) and a heartbeat lease in the store
(:mod:`server.sessions.replicas` keeps it); a session is *owned* by the replica
that started it and holds its credential.  Any replica may end any session:
ending one that another live replica owns revokes its role (which cuts its
connections at the database at once), records the end in the store and the audit
chain, and wakes the owner (``NOTIFY``, or its polling), whose
:meth:`SessionService.sync_live` then closes the client connections and the
recording.  The reaper ends this replica's expired sessions, and claims the
sessions of replicas whose lease has run out (``SELECT … FOR UPDATE SKIP LOCKED``
in :meth:`~server.store.db.Store.claim_orphans`, so one replica ends each) to end
them; sessions of live replicas are never touched.

**Deployments.**  Every role an issuer creates is marked with the store's
deployment id, the replica and the session (:class:`RoleMark`, on the role's
comment).  The reaper revokes a role only when it is this deployment's and no
active session holds it, and then only if its replica is dead or is this one, or
its session has ended; an unmarked role only when this store's ended session used
it.  Brokers of another deployment on the same target are thus left alone, and
so is a role a live replica is minting right now.  ``VALID UNTIL`` on each role
stops new logins in any case.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from server import metrics
from server.approvals.service import Approvals, Notifier
from server.audit import chain
from server.audit.archive import Archiver
from server.audit.deferred import AuditWriter
from server.audit.recording import Recorder
from server.credentials.base import (
    Credential,
    Issuer,
    KeepsLeases,
    ManagedRole,
    MarksRoles,
    MintsLoginTokens,
    RevocationResult,
    RoleMark,
    role_name_for,
)
from server.errors import (
    Forbidden,
    NotAuthenticated,
    NotFound,
    TooManyConnections,
    Unavailable,
)
from server.gateway.masking import session_rules
from server.policy import Issuer as PolicyIssuer
from server.policy import Policy, TargetPolicy, resolve_admin_dsn
from server.policy.agents import agent_default_limits, agent_limits
from server.policy.evaluate import Identity, evaluate, refusal
from server.policy.limits import connection_shares
from server.policy.model import SessionLimits, default_limits
from server.sessions import handoff
from server.store.db import SessionRecord, Store, StoreLeaseBook, hash_secret, new_id, utcnow

log = logging.getLogger(__name__)

# Where a replica that ended another's session wakes it (the payload: the owner's id).
SESSIONS_CHANNEL = "dbaccess_sessions"
# How long the store remembers a dead replica that no session names any more.
REPLICAS_KEPT = timedelta(days=7)


class ConnectionHandle(Protocol):
    """What the gateway registers per client connection so a session end can close it."""

    def close_from_broker(self, sqlstate: str, message: str, hint: str | None) -> None: ...


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    database: str
    sslmode: str | None
    sslrootcert: str | None


@dataclass
class LiveSession:
    """A session this broker holds; ``agent`` is set when an AI agent holds it
    (its rules and limits are the scope's ``agents`` ones), ``on_behalf_of``
    then names the person it acts for."""

    record: SessionRecord
    credential: Credential
    upstream: Upstream
    connections: set[ConnectionHandle] = field(default_factory=set)
    agent: bool = False
    on_behalf_of: str | None = None
    kind: str = "user"  # the identity's kind, for its access events
    request_id: str | None = None  # the access request the session was approved under

    @property
    def id(self) -> str:
        return self.record.id


@dataclass(frozen=True)
class ReapReport:
    expired_sessions: list[str]
    orphaned_sessions: list[str]
    revoked_roles: list[str]
    errors: list[str]


IssuerFactory = Callable[[TargetPolicy], Issuer]

# What a target without an admin DSN (or one that cannot be read) is taken to
# allow: PostgreSQL's default max_connections.
ASSUMED_MAX_CONNECTIONS = 100


@dataclass(frozen=True)
class TargetCaps:
    """The caps on one session's connections to its target (``limits.*`` of its scope);
    ``*_auto`` when the number is the share of ``max_connections`` that ``auto`` means."""

    target: str
    scope: str
    per_identity: int
    per_target: int
    identity_auto: bool = False
    target_auto: bool = False
    max_connections: int | None = None


def read_capacity(admin_dsn: str) -> tuple[int, int, int]:
    """A target's max_connections, superuser_reserved_connections and (PostgreSQL 16+)
    reserved_connections, through its admin DSN."""
    import psycopg

    with psycopg.connect(
        admin_dsn, connect_timeout=5, autocommit=True, application_name="dbaccess-broker"
    ) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int,"
            " coalesce(current_setting('reserved_connections', true), '0')::int"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def default_issuer_factory(target: TargetPolicy) -> Issuer:
    admin_dsn = resolve_admin_dsn(target) if target.has_admin_dsn else None
    if target.issuer is PolicyIssuer.VAULT:
        from server.credentials.vault import VaultIssuer

        assert target.vault is not None
        return VaultIssuer(target.vault, admin_dsn=admin_dsn)
    if target.issuer is PolicyIssuer.RDS_IAM:
        from server.credentials.rds_iam import RdsIamIssuer

        assert target.rds_iam is not None
        up = upstream_for(target)
        return RdsIamIssuer(target.rds_iam, host=up.host, port=up.port, admin_dsn=admin_dsn)
    from server.credentials.postgres import PostgresIssuer

    assert admin_dsn is not None
    return PostgresIssuer(admin_dsn)


def upstream_for(target: TargetPolicy) -> Upstream:
    """Where the gateway connects for a target.

    ``host``/``port`` from the policy win; otherwise they come from the admin DSN
    (into which the policy's sslmode/sslrootcert are merged).  An ``rds-iam``
    target is always verified against its CA bundle (verify-full by default),
    since its login token travels as a cleartext password.
    """
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(resolve_admin_dsn(target)) if target.has_admin_dsn else {}
    host = target.host or str(info.get("host") or "127.0.0.1")
    port = target.port or int(str(info.get("port") or 5432))
    sslmode = target.sslmode or info.get("sslmode")
    rootcert = target.sslrootcert or info.get("sslrootcert")
    if target.rds_iam is not None:
        sslmode = target.sslmode or "verify-full"
        rootcert = target.rds_iam.ca_bundle
    return Upstream(
        host,
        port,
        target.database,
        str(sslmode) if sslmode else None,
        str(rootcert) if rootcert else None,
    )


class SessionService:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        issuer_factory: IssuerFactory = default_issuer_factory,
        max_connections_per_session: int | None = None,
        notifier: Notifier | None = None,
        recorder: Recorder | None = None,
        archiver: Archiver | None = None,
        replica_id: str | None = None,
        hand_off: bool = False,
        recording_process: bool = False,
    ) -> None:
        self.store = store
        # An API-only replica's: the sessions it starts are handed, credential and
        # recording, to the gateway replica their client connects to (see the module).
        self.hand_off = hand_off
        # This process among the replicas on the store: the owner of the sessions it starts.
        self.replica_id = replica_id or new_id("r-")
        self.policy = policy
        # Every session is recorded from its start to its end; a recording that
        # fails ends its session (unless the target says recording_failure: continue).
        # ``recording_process``: its store writes in a process of their own (the
        # broker's: server/audit/event_writes.py says why).
        self.recorder = recorder or Recorder(
            store,
            on_failure=self._recording_failed,
            writer=self.replica_id,
            write_process=recording_process,
        )
        # Audit events the gateway decides on its data path, appended off it.
        self.audit = AuditWriter(store)
        # Closed recordings go to S3 when an archive is configured.
        self.archiver = archiver
        # Reads self.policy on every call, so a reloaded policy applies to requests at once.
        self.approvals = Approvals(store, lambda: self.policy, notifier=notifier)
        self._issuer_factory = issuer_factory
        self._issuers: dict[str, Issuer] = {}
        self._live: dict[str, LiveSession] = {}
        self._by_ticket: dict[str, str] = {}
        # Roles being minted right now: the reaper must not take them for orphans.
        self._minting: set[str] = set()
        # The same by session id, for issuers whose role names are not ours to choose (Vault).
        self._minting_sessions: set[str] = set()
        self._lock = threading.RLock()
        # Deprecated server-wide ceiling on limits.max_connections_per_session (None: none).
        self.max_connections_per_session = max_connections_per_session
        # Per target: (max_connections, superuser_reserved_connections, reserved_connections).
        self._capacity: dict[str, tuple[int, int, int]] = {}
        # One handed-off session taken at a time: a client's second connection must find
        # the first one's session here rather than race it for the store's row.
        self._taking = threading.Lock()

    # -- helpers ------------------------------------------------------------
    def target(self, name: str) -> TargetPolicy:
        target = self.policy.targets.get(name)
        if target is None:
            known = ", ".join(sorted(self.policy.targets)) or "none"
            raise NotFound(f"unknown target {name!r}", hint=f"known targets: {known}")
        return target

    def issuer(self, target: TargetPolicy) -> Issuer:
        with self._lock:
            issuer = self._issuers.get(target.name)
            if issuer is None:
                issuer = self._issuers[target.name] = self._issuer_factory(target)
                if isinstance(issuer, KeepsLeases):
                    issuer.keep_leases_in(StoreLeaseBook(self.store, target.name))
                if isinstance(issuer, MarksRoles):
                    issuer.mark_roles(RoleMark(self.store.deployment_id, self.replica_id))
            return issuer

    def close_issuers(self) -> None:
        """Close the issuers' pooled admin connections (at shutdown)."""
        with self._lock:
            issuers = list(self._issuers.values())
            self._issuers.clear()
        for issuer in issuers:
            close = getattr(issuer, "close", None)
            if callable(close):
                close()

    def live_sessions(self) -> list[LiveSession]:
        """The sessions this broker holds now."""
        with self._lock:
            return list(self._live.values())

    def live(self, session_id: str) -> LiveSession | None:
        with self._lock:
            return self._live.get(session_id)

    def database_of(self, record: SessionRecord) -> str:
        """The database a session's connections log in to."""
        live = self.live(record.id)
        if live is not None:
            return live.upstream.database
        return self.target(record.target).database

    def limits(self, live: LiveSession) -> SessionLimits:
        """The limits of a session's scope as the policy says now (its scope's
        defaults if a reload removed the scope)."""
        target = self.policy.targets.get(live.record.target)
        scope = target.scopes.get(live.record.scope) if target is not None else None
        if scope is None:
            limits = default_limits(live.record.scope)
            return agent_default_limits(limits) if live.agent else limits
        return agent_limits(scope) if live.agent else scope.effective_limits

    # -- start --------------------------------------------------------------
    def start(
        self,
        identity: Identity,
        target_name: str,
        scope: str | None,
        ttl: timedelta | None,
        reason: str | None,
        client: dict[str, Any] | None = None,
        *,
        break_glass: bool = False,
        request_id: str | None = None,
    ) -> tuple[SessionRecord, str]:
        """Start a session; where the scope needs approval, an approved grant is used up.

        Without a usable grant this raises ApprovalRequired naming the pending
        request (created if there was none).  ``request_id`` picks the grant.
        """
        target = self.target(target_name)
        now = utcnow()
        decision = evaluate(
            self.policy,
            identity,
            target_name,
            scope,
            ttl,
            now,
            reason=reason,
            break_glass=break_glass,
        )
        if not decision.allowed and not decision.needs_approval:
            chain.append(
                self.store,
                "session.denied",
                identity=identity.name,
                target=target_name,
                data={"scope": scope, "rule": decision.rule, "reason": decision.reason},
            )
            raise refusal(decision)
        assert decision.scope is not None and decision.ttl is not None
        scope_policy = target.scopes[decision.scope]
        # A masking key the session needs and cannot have refuses the session
        # here, naming the target and the key's source, before a grant is used
        # up or a role is made (the gateway reads the key again at each login).
        session_rules(target, decision.scope, identity.groups)
        session_id = new_id("s-")
        # An agent's session names the person it acts for wherever it is recorded.
        acting: dict[str, Any] = (
            {"identity_kind": identity.kind, "on_behalf_of": identity.owner}
            if identity.agent
            else {}
        )
        db_user = role_name_for(identity.name, session_id)
        upstream = upstream_for(target)
        issuer = self.issuer(target)
        grant = None
        lifetime = decision.ttl
        if decision.needs_approval:
            grant = self.approvals.claim(
                identity, decision, target_name, ttl, reason, session_id, request_id
            )
            lifetime = ttl or grant.ttl
        deadline = (now + lifetime).replace(microsecond=0)
        if grant is not None and not grant.rule.single_use and grant.grant_expires_at:
            # A multi-use grant lasts the approved lifetime from its first use, not per session.
            deadline = min(deadline, grant.grant_expires_at.replace(microsecond=0))
        with self._lock:
            self._minting.add(db_user)
            self._minting_sessions.add(session_id)
        try:
            with metrics.timed(metrics.ISSUE_SECONDS, metrics.ISSUE_FAILURES, target_name):
                credential = issuer.issue(
                    identity=identity.name,
                    session_id=session_id,
                    grants=scope_policy.grants,
                    valid_until=deadline,
                    scope=decision.scope,
                    # The policy as it is now (issuers are kept across policy reloads).
                    masking=target.masking,
                    limits=agent_limits(scope_policy)
                    if identity.agent
                    else scope_policy.effective_limits,
                )
            ticket = "dbt_" + secrets.token_urlsafe(32)
            ticket_hash = hash_secret(ticket)
            record = SessionRecord(
                id=session_id,
                identity=identity.name,
                groups=tuple(sorted(identity.groups)),
                target=target_name,
                scope=decision.scope,
                reason=reason,
                db_user=credential.username,
                status="active",
                created_at=now,
                expires_at=deadline,
                ended_at=None,
                end_reason=None,
                revocation=None,
                owner=self.replica_id,
            )
            sealed = None
            if self.hand_off:
                sealed = handoff.seal(
                    ticket,
                    {
                        "username": credential.username,
                        "password": credential.password,
                        "valid_until": credential.valid_until.isoformat(),
                        "lease_id": credential.lease_id,
                        "tokens": credential.password_provider is not None,
                        "agent": identity.agent,
                        "on_behalf_of": identity.owner if identity.agent else None,
                        "kind": identity.kind,
                        "request_id": grant.id if grant is not None else None,
                    },
                )
            try:
                self.store.insert_session(record, ticket_hash, handoff=sealed)
            except Exception:
                # Nothing half-created survives: the role goes if the session cannot be stored.
                issuer.revoke(credential.username)
                raise
            try:
                self.recorder.open(
                    session_id,
                    {
                        "identity": identity.name,
                        "groups": sorted(identity.groups),
                        "target": target_name,
                        "scope": decision.scope,
                        "reason": reason,
                        "db_user": credential.username,
                        "expires_at": deadline.isoformat(),
                        "request_id": grant.id if grant is not None else None,
                        "break_glass": decision.break_glass,
                        "client": client or {},
                        **acting,
                    },
                    failure=target.recording_failure,
                )
                # The gateway replica that takes the session continues the recording
                # after its session.start, which must be in the store by then.
                if self.hand_off and not self.recorder.hand_over(session_id):
                    raise Unavailable("the session's first event was not written")
            except Exception as exc:
                # A session that cannot be recorded does not start.
                issuer.revoke(credential.username)
                self.store.finish_session(
                    session_id, status="failed", reason="its recording could not be started"
                )
                log.error("recording of session %s could not be started: %s", session_id, exc)
                raise Unavailable(
                    "the session's recording could not be started",
                    hint="the broker's store is failing; try again, or ask an admin",
                ) from None
            if not self.hand_off:
                with self._lock:
                    self._live[session_id] = LiveSession(
                        record,
                        credential,
                        upstream,
                        agent=identity.agent,
                        on_behalf_of=identity.owner if identity.agent else None,
                        kind=identity.kind,
                        request_id=grant.id if grant is not None else None,
                    )
                    self._by_ticket[ticket_hash] = session_id
        except Exception:
            # A session that never started must not use up its approval.
            if grant is not None:
                self.approvals.release(grant, session_id)
            raise
        finally:
            with self._lock:
                self._minting.discard(db_user)
                self._minting_sessions.discard(session_id)
        chain.append(
            self.store,
            "session.started",
            identity=identity.name,
            target=target_name,
            session_id=session_id,
            data={
                "scope": decision.scope,
                "rule": decision.rule,
                "reason": reason,
                "db_user": credential.username,
                "expires_at": deadline.isoformat(),
                "client": client or {},
                "request_id": grant.id if grant is not None else None,
                "break_glass": decision.break_glass,
                **acting,
            },
        )
        metrics.SESSIONS_STARTED.labels(target_name, decision.scope, identity.kind).inc()
        if decision.break_glass:
            self.approvals.break_glass(record.to_json(), decision.rule)
        return record, ticket

    # -- gateway side -------------------------------------------------------
    def resolve_ticket(self, ticket: str, database: str | None) -> LiveSession:
        digest = hash_secret(ticket)
        live = self._held(digest)
        if live is None:
            live = self._take_handed_off(ticket, digest)
        if live is None:
            message, hint = self._why_ticket_rejected(digest)
            raise NotAuthenticated(message, hint=hint)
        if utcnow() >= live.record.expires_at:
            raise NotAuthenticated(
                f"session {live.id} expired at {live.record.expires_at:%Y-%m-%d %H:%M:%S} UTC",
                hint=f"start a new session: dbaccess connect {live.record.target}",
            )
        if database is not None and database != live.upstream.database:
            raise NotAuthenticated(
                f"this session is for database {live.upstream.database!r}, not {database!r}",
                hint="connect with the database name dbaccess printed",
            )
        return live

    def _held(self, digest: str) -> LiveSession | None:
        with self._lock:
            session_id = self._by_ticket.get(digest)
            return self._live.get(session_id) if session_id else None

    def _take_handed_off(self, ticket: str, digest: str) -> LiveSession | None:
        """A session an API-only replica started, taken over by this (gateway) replica at
        its client's first connection: its credential unsealed with the ticket, its
        ownership and its recording moved here.  None when there is no such session."""
        with self._taking:
            live = self._held(digest)
            if live is not None:
                return live
            found = self.store.session_handoff(digest)
            if found is None:
                return None
            record, sealed = found
            if sealed is None or record.status != "active":
                return None
            target = self.policy.targets.get(record.target)
            if target is None:
                return None
            try:
                sealed_by_ticket = handoff.open_sealed(ticket, sealed)
            except handoff.SealBroken as exc:
                log.error("session %s: its handed-off credential: %s", record.id, exc)
                return None
            with self._lock:  # the reaper must not take it for one this replica lost
                self._minting_sessions.add(record.id)
            try:
                live = self._handed_live(record, target, sealed_by_ticket)
                if not self.store.take_handoff(record.id, self.replica_id):
                    return None  # ended meanwhile, or another gateway replica took it
                if not self.recorder.take_over(record.id, target.recording_failure):
                    log.error("session %s was handed over with its recording closed", record.id)
                    return None
                with self._lock:
                    self._live[record.id] = live
                    self._by_ticket[digest] = record.id
            finally:
                with self._lock:
                    self._minting_sessions.discard(record.id)
        chain.append(
            self.store,
            "session.taken",
            identity=record.identity,
            target=record.target,
            session_id=record.id,
            data={"replica": self.replica_id, "from": record.owner},
        )
        return live

    def _handed_live(
        self, record: SessionRecord, target: TargetPolicy, sealed_by_ticket: dict[str, Any]
    ) -> LiveSession:
        """The live session a handed-off session becomes on the replica that took it."""
        credential = Credential(
            username=str(sealed_by_ticket["username"]),
            password=str(sealed_by_ticket["password"]),
            valid_until=datetime.fromisoformat(str(sealed_by_ticket["valid_until"])),
            lease_id=sealed_by_ticket.get("lease_id"),
        )
        if sealed_by_ticket.get("tokens"):
            issuer = self.issuer(target)
            if not isinstance(issuer, MintsLoginTokens):
                raise Unavailable(
                    f"session {record.id} logs in with tokens that target "
                    f"{record.target!r}'s issuer here does not mint",
                    hint="start a new session: dbaccess connect " + record.target,
                )
            username = credential.username
            credential = replace(credential, password_provider=lambda: issuer.token(username))
        return LiveSession(
            replace(record, owner=self.replica_id),
            credential,
            upstream_for(target),
            agent=bool(sealed_by_ticket.get("agent")),
            on_behalf_of=sealed_by_ticket.get("on_behalf_of"),
            kind=str(sealed_by_ticket.get("kind") or "user"),
            request_id=sealed_by_ticket.get("request_id"),
        )

    def _why_ticket_rejected(self, digest: str) -> tuple[str, str]:
        row = self.store.session_by_ticket(digest)
        if row is None:
            return (
                "invalid session ticket",
                "the password must be the ticket of a live dbaccess session: "
                "use dbaccess connect or dbaccess run",
            )
        if row.status == "active" and row.owner not in (None, self.replica_id):
            return (
                f"session {row.id} is held by another broker replica",
                "every connection of a session goes to the gateway its broker named: "
                "have the load balancer keep a client's connections on one replica",
            )
        return (
            f"session {row.id} has ended ({row.status}: {row.end_reason})",
            "tickets die with their session: start a new one with dbaccess connect",
        )

    def connection_caps(self, live: LiveSession) -> TargetCaps:
        """The caps on a session's connections to its target, per identity and in all,
        from its scope's limits; ``auto`` is a share of the target's ``max_connections``,
        read once per target through its admin DSN (may block: call it off the event loop)."""
        limits = self.limits(live)
        target_name, scope = live.record.target, live.record.scope
        per_identity = limits.max_connections_per_identity
        per_target = limits.max_connections_per_target
        capacity: tuple[int, int, int] | None = None
        if per_identity is None or per_target is None:
            capacity = self._target_capacity(target_name)
            shares = connection_shares(*capacity)
            per_identity = per_identity if per_identity is not None else shares.per_identity
            per_target = per_target if per_target is not None else shares.per_target
        return TargetCaps(
            target=target_name,
            scope=scope,
            per_identity=per_identity,
            per_target=per_target,
            identity_auto=limits.max_connections_per_identity is None,
            target_auto=limits.max_connections_per_target is None,
            max_connections=capacity[0] if capacity is not None else None,
        )

    def _target_capacity(self, target_name: str) -> tuple[int, int, int]:
        with self._lock:
            known = self._capacity.get(target_name)
        if known is not None:
            return known
        target = self.policy.targets.get(target_name)
        if target is None or not target.has_admin_dsn:
            log.warning(
                "target %s has no admin DSN to read max_connections from: its automatic "
                "connection caps assume PostgreSQL's default of %d (set "
                "limits.max_connections_per_identity and _per_target to choose them)",
                target_name,
                ASSUMED_MAX_CONNECTIONS,
            )
            found = (ASSUMED_MAX_CONNECTIONS, 3, 0)
        else:
            try:
                found = read_capacity(resolve_admin_dsn(target))
            except Exception as exc:  # not cached: the next connection tries again
                log.warning(
                    "cannot read max_connections of target %s (%s): assuming %d for now",
                    target_name,
                    exc,
                    ASSUMED_MAX_CONNECTIONS,
                )
                return (ASSUMED_MAX_CONNECTIONS, 3, 0)
        with self._lock:
            self._capacity[target_name] = found
        return found

    def attach(self, live: LiveSession, conn: ConnectionHandle) -> None:
        with self._lock:
            if live.id not in self._live:
                raise NotAuthenticated("session has ended")
            cap = self.limits(live).max_connections_per_session
            ceiling = self.max_connections_per_session
            limit = "max_connections_per_session"
            key = f"limits.max_connections_per_session of scope {live.record.scope!r}"
            if ceiling is not None and ceiling < cap:
                cap, key = ceiling, "the broker's session_max_connections (deprecated)"
                limit = "session_max_connections"
            if len(live.connections) >= cap:
                raise TooManyConnections(
                    f"too many connections for session {live.id} (limit {cap})",
                    hint=f"close some of the session's connections; the limit is {key}, "
                    "which an administrator can raise in the policy",
                    limit=limit,
                    value=cap,
                )
            live.connections.add(conn)

    def detach(self, live: LiveSession, conn: ConnectionHandle) -> None:
        with self._lock:
            live.connections.discard(conn)

    # -- end ----------------------------------------------------------------
    def _release(self, session_id: str) -> tuple[LiveSession | None, list[ConnectionHandle]]:
        """Forget a live session here: its tickets, and its connections (returned to close)."""
        with self._lock:
            live = self._live.pop(session_id, None)
            if live is None:
                return None, []
            for digest, sid in list(self._by_ticket.items()):
                if sid == session_id:
                    del self._by_ticket[digest]
            conns = list(live.connections)
            live.connections.clear()
        return live, conns

    @staticmethod
    def _close_connections(conns: list[ConnectionHandle], status: str) -> None:
        message = {
            "killed": "terminating connection: the session was ended by an administrator",
            "expired": "terminating connection: the session reached its deadline",
            "shutdown": "terminating connection: the broker is shutting down",
        }.get(status, "terminating connection: the session has ended")
        for conn in conns:
            conn.close_from_broker("57P01", message, "start a new session with dbaccess connect")

    def end(
        self,
        session_id: str,
        *,
        status: str = "ended",
        reason: str = "client ended the session",
        actor: str | None = None,
    ) -> SessionRecord:
        record = self.store.get_session(session_id)
        if record is None:
            raise NotFound(f"unknown session {session_id!r}")
        live, conns = self._release(session_id)
        if record.status != "active" and live is None:
            return record
        self._close_connections(conns, status)
        if not self.store.finish_session(session_id, status=status, reason=reason):
            # Another replica ended it meanwhile, and revoked its role.
            return self._ended_elsewhere(session_id, live is not None)
        result = self._revoke(record.target, record.db_user)
        self.store.record_revocation(session_id, result)
        self.audit.flush()  # the session's refusals come before its end
        chain.append(
            self.store,
            "session.ended",
            identity=record.identity,
            target=record.target,
            session_id=session_id,
            data={"status": status, "reason": reason, "actor": actor, "revocation": result},
        )
        closing = {"status": status, "reason": reason, "actor": actor, "revocation": result}
        owner = record.owner
        if self.hand_off and live is None:
            # A gateway replica may have taken the session just before it ended here.
            ending = self.store.get_session(session_id)
            owner = ending.owner if ending is not None else owner
        if live is None and owner not in (None, self.replica_id):
            if self._alive(owner):
                # The owner holds the connections and the recording: it closes them.
                self.store.notify(SESSIONS_CHANNEL, owner)
            else:
                self.recorder.close(session_id, closing)
        else:
            self.recorder.close(session_id, closing)
        if self.archiver is not None:
            self.archiver.wake()
        ended = self.store.get_session(session_id)
        assert ended is not None
        return ended

    def _alive(self, replica_id: str | None) -> bool:
        now = utcnow()
        return any(r.id == replica_id for r in self.store.replicas(alive_at=now))

    def _ended_elsewhere(self, session_id: str, held: bool) -> SessionRecord:
        """A session another replica ended (or took over): what this one held of it
        is let go, and the recording it kept is closed with the store's account."""
        record = self.store.get_session(session_id)
        assert record is not None
        if held and record.status != "active":
            self.recorder.close(
                session_id,
                {
                    "status": record.status,
                    "reason": record.end_reason,
                    "actor": "another replica",
                    "revocation": dict(record.revocation) if record.revocation else None,
                },
            )
        return record

    def sync_live(self) -> list[str]:
        """Let go of the sessions held here that another replica has ended or taken
        over (an admin's kill through it, or a reaper that took this replica for
        dead): their connections are closed, their recordings closed.  A session
        ended elsewhere is let go once its revocation is recorded (the role's
        connections were cut by it already).  Returns the sessions let go."""
        with self._lock:
            held = list(self._live)
        if not held:
            return []
        released: list[str] = []
        for rec in self.store.changed_sessions(held, self.replica_id):
            if rec.status != "active" and rec.revocation is None:
                continue  # the revocation is under way; the next look finishes it
            live, conns = self._release(rec.id)
            if live is None:
                continue
            self._close_connections(conns, rec.status if rec.status != "active" else "ended")
            self._ended_elsewhere(rec.id, True)
            released.append(rec.id)
        return released

    def _revoke(self, target_name: str, db_user: str) -> dict[str, Any]:
        target = self.policy.targets.get(target_name)
        if target is None:
            return {"ok": False, "detail": f"target {target_name!r} is no longer in the policy"}
        try:
            with metrics.timed(metrics.REVOKE_SECONDS, metrics.REVOKE_FAILURES, target_name):
                res: RevocationResult = self.issuer(target).revoke(db_user)
        except (Unavailable, Forbidden) as exc:
            log.warning("revocation of %s on %s failed: %s", db_user, target_name, exc.message)
            return {"ok": False, "detail": exc.message}
        if not res.verified:
            metrics.REVOKE_FAILURES.labels(target_name).inc()
        return {
            "ok": res.verified,
            "username": res.username,
            "terminated_backends": res.terminated_backends,
            "dropped": res.dropped,
            "verified": res.verified,
            "detail": res.detail,
        }

    def _recording_failed(self, session_id: str, reason: str) -> None:
        metrics.RECORDING_FAILURES.inc()
        if self.live(session_id) is not None:
            self.end(
                session_id, status="killed", reason=f"recording failed: {reason}", actor="recorder"
            )

    def end_all(self, status: str = "shutdown", reason: str = "broker shut down") -> None:
        with self._lock:
            ids = list(self._live)
        if self.hand_off:
            # Handed-off sessions that no gateway replica has taken yet are still this one's.
            ids += [rec.id for rec in self.store.owned_sessions(self.replica_id)]
        for session_id in ids:
            self.end(session_id, status=status, reason=reason)

    # -- reaper -------------------------------------------------------------
    def _starting(self, session_id: str) -> bool:
        # start() stores the session a moment before it goes live: not an orphan.
        with self._lock:
            return session_id in self._minting_sessions

    def _owned(self, role: ManagedRole) -> bool:
        """Whether a live or starting session holds ``role``, asked when the reaper gets to it:
        a session that started after the role was listed has registered before minting it."""
        with self._lock:
            return (
                role.name in self._minting
                or role.session_id in self._minting_sessions
                or role.session_id in self._live
                or any(live.credential.username == role.name for live in self._live.values())
            )

    def reap(self, now: datetime | None = None, *, startup: bool = False) -> ReapReport:
        """End expired sessions and revoke credentials nobody holds.

        This replica's sessions past their deadline are ended; so are sessions
        the store says are this replica's but that it does not hold (a start
        that failed half-way, a previous life of it).  Sessions of replicas
        whose lease has run out are claimed (one replica claims each) and
        ended: ``expired`` past their deadline, ``orphaned`` before it; the open
        recordings of ended sessions whose writer died are closed.
        Sessions of live replicas are theirs.  Then each target's session roles
        that no active session holds are revoked where they are this
        deployment's to revoke (see the module's docstring); ``startup`` only
        says whether this is the pass a broker makes when it starts.
        """
        now = now or utcnow()
        expired: list[str] = []
        orphaned: list[str] = []
        revoked: list[str] = []
        errors: list[str] = []
        try:
            self.approvals.expire_due()
        except Exception as exc:  # requests must not stop the sessions' sweep either
            errors.append(f"access requests: {exc}")

        def finish(rec: SessionRecord, why: str) -> None:
            try:
                if rec.expires_at <= now:
                    self.end(rec.id, status="expired", reason="deadline passed", actor="reaper")
                    expired.append(rec.id)
                else:
                    self.end(rec.id, status="orphaned", reason=why, actor="reaper")
                    orphaned.append(rec.id)
            except Exception as exc:  # one bad target must not stop the sweep
                errors.append(f"{rec.id}: {exc}")

        with self._lock:
            mine = [live.record for live in self._live.values()]
        for rec in mine:
            if rec.expires_at <= now:
                finish(rec, "")
        try:
            for rec in self.store.owned_sessions(self.replica_id):
                if self.live(rec.id) is None and not self._starting(rec.id):
                    if self.hand_off and rec.expires_at > now:
                        continue  # waiting for its client's first connection to a gateway
                    finish(rec, "broker restarted; credential revoked")
            while claimed := self.store.claim_orphans(self.replica_id, now):
                for rec in claimed:
                    finish(rec, "its broker stopped; credential revoked")
            for rec in self.store.abandoned_recordings(self.replica_id, now):
                # Ended through another replica; its owner died before closing the recording.
                self.recorder.close(
                    rec.id,
                    {
                        "status": rec.status,
                        "reason": rec.end_reason,
                        "actor": "reaper",
                        "revocation": dict(rec.revocation) if rec.revocation else None,
                    },
                )
        except Exception as exc:
            errors.append(f"sessions: {exc}")
        try:
            in_store = {rec.db_user for rec in self.store.list_sessions(active=True, limit=100_000)}
            alive = {r.id for r in self.store.replicas(alive_at=now)} | {self.replica_id}
            self.store.prune_replicas(now - REPLICAS_KEPT)
        except Exception as exc:
            errors.append(f"sessions: {exc}")
            return ReapReport(expired, orphaned, revoked, errors)
        for target in self.policy.targets.values():
            try:
                issuer = self.issuer(target)
                for role in issuer.list_managed():
                    if self._owned(role) or role.name in in_store:
                        continue
                    if not self._reapable(role, alive):
                        continue
                    res = issuer.revoke(role.name)
                    revoked.append(role.name)
                    chain.append(
                        self.store,
                        "credential.reaped",
                        target=target.name,
                        data={"db_user": role.name, "verified": res.verified},
                    )
            except Exception as exc:
                errors.append(f"{target.name}: {exc}")
        return ReapReport(expired, orphaned, revoked, errors)

    def _reapable(self, role: ManagedRole, alive: set[str]) -> bool:
        """Whether this replica may revoke ``role``, which no active session holds."""
        mark = role.mark
        if mark is not None:
            if mark.deployment != self.store.deployment_id:
                return False  # another deployment's, on a target both use
            if mark.replica not in alive:
                return True  # its replica died, perhaps before the session was stored
        elif role.session_id is not None and alive == {self.replica_id}:
            # A lease issuer's (the leases are this store's): with no other replica
            # alive, none can be starting its session.
            return True
        # A live replica's role (it may be starting its session) or an unmarked one:
        # only once this store's session that used it has ended.
        session = self.store.session_of_db_user(role.name)
        return session is not None and session.status != "active"
