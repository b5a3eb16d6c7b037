"""The ``vault`` issuer: session credentials from a Vault/OpenBao database secrets engine.

issue
    ``GET <mount>/creds/<role>`` (hvac ``generate_credentials``) mints a database
    user and password under a lease.  If the lease would end before the session's
    deadline it is renewed up to the deadline; if Vault will not grant that much
    (the role's ``max_ttl``), the lease is revoked and the session refused rather
    than cut short later.  When the target has an admin DSN the new role's OID is
    looked up.  Then the lease is written to the broker's store
    (:class:`~server.credentials.base.LeaseBook`) before the credential is handed
    out, so that a broker that crashes later can still revoke it.  Nothing is
    written when Vault cannot be reached: the session fails with ``Unavailable``.

revoke
    With an admin DSN: the role's backends are terminated (matched by the OID
    recorded at issue and, while the role exists, its name), the lease is revoked
    in Vault (``sys/leases/revoke``, which runs the Vault role's
    ``revocation_statements``), the backends are terminated again and polled until
    none is left, and a last check looks for the role and its backends by OID.
    Without an admin DSN: the lease is revoked and Vault is asked whether it still
    knows it.  Either way the lease is marked revoked in the store only once Vault
    has accepted the revocation, so a failure is retried by the reaper.

What is guaranteed when a session ends
    * The gateway closes every client connection of the session and its upstream
      connections (the session service does this before revoking).
    * The lease is revoked in Vault, which runs the role's revocation statements
      (with the statements shown in docs/issuers.md: terminate the role's backends,
      then ``DROP ROLE``).
    * With an admin DSN the broker itself terminates the role's backends before
      and after the revocation and checks that none is left and the role is gone.
      Vault's revocation alone does not end open connections unless its
      statements do so (OpenBao 2.7.2's default statements do not, and they fail
      for a least-privilege admin anyway); the admin DSN makes it independent of
      how the Vault role was written.
    * Without an admin DSN a statement that was still running when the gateway
      closed its connection may run on until PostgreSQL notices the closed socket,
      unless the Vault role's revocation statements terminate backends.
    * The broker only ever terminates backends of roles it holds a lease for; it
      never alters or drops a Vault-created role itself (Vault does that).

Vault login
    ``token`` (from a file, re-read at each login so an agent can rotate it, or an
    environment variable), ``approle`` (role_id plus a secret id from a file or
    variable) or ``jwt`` (a JWT from a file, e.g. a Kubernetes service-account
    token, for a role at a ``jwt`` or ``kubernetes`` auth mount).  The token's TTL
    is tracked: once a third of it is left the token is renewed (``renew-self``),
    and when it cannot be renewed any further the broker logs in again.  A request
    refused with 403 is retried once after a fresh login, since the usual cause is
    a token that expired or was revoked under the broker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from psycopg import sql

from server.credentials.base import (
    Credential,
    Lease,
    LeaseBook,
    ManagedRole,
    RevocationResult,
    sql_template,
)
from server.errors import Conflict, DbaccessError, Forbidden, InvalidInput, Unavailable
from server.policy.model import MaskingPolicy, SessionLimits, VaultAuthMethod, VaultSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

_TIMEOUT_SECONDS = 10.0
# Renew the broker's token once this share of its TTL is left.
_RENEW_SHARE = 1 / 3
_TERMINATE_WAIT_SECONDS = 5.0
_POLL_INTERVAL_SECONDS = 0.02
# A lease may end this much before the session without being renewed.
_LEASE_SLACK = timedelta(seconds=5)
_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _query(name: str) -> sql.SQL:
    return sql.SQL(sql_template(name))


def _reason(exc: BaseException) -> str:
    """A short cause for a connection failure: requests' own text is a page long."""
    found = _ERRNO_TEXT.search(str(exc))
    if found:
        return found.group(1).strip()
    name = type(exc).__name__
    return "timed out" if "Timeout" in name else name


class VaultLogin:
    """One hvac client, logged in, with its token kept alive; safe to share across threads."""

    def __init__(
        self,
        settings: VaultSettings,
        *,
        environ: dict[str, str] | None = None,
        timeout: float = _TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import hvac

        self.settings = settings
        self._environ = environ
        self._clock = clock
        verify: bool | str = str(settings.ca_cert) if settings.ca_cert else True
        self.client = hvac.Client(
            url=settings.address,
            verify=verify,
            timeout=timeout,
            namespace=settings.namespace,
        )
        self._lock = threading.RLock()
        self._logged_in = False
        self._expires: float | None = None  # monotonic; None: the token does not expire
        self._ttl = 0.0
        self._renewable = False
        self.logins = 0
        self.renewals = 0

    # -- secrets from files and variables -------------------------------------
    def _env(self, name: str) -> str:
        env = os.environ if self._environ is None else self._environ
        value = env.get(name, "").strip()
        if not value:
            raise Unavailable(
                f"Vault login: environment variable {name} is not set",
                hint=f"set {name} in the broker's environment",
            )
        return value

    @staticmethod
    def _file(path: os.PathLike[str] | None, what: str) -> str:
        assert path is not None
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise Unavailable(
                f"Vault login: cannot read the {what} file {path}: {exc.strerror or exc}"
            ) from None
        if not value:
            raise Unavailable(f"Vault login: the {what} file {path} is empty")
        return value

    # -- login and renewal ----------------------------------------------------
    def _track(self, ttl: float, renewable: bool) -> None:
        self._ttl = ttl
        self._renewable = renewable
        self._expires = self._clock() + ttl if ttl > 0 else None

    def login(self) -> None:
        """Log in from scratch with the configured method."""
        auth = self.settings.auth
        with self._lock:
            if auth.method is VaultAuthMethod.TOKEN:
                token = (
                    self._file(auth.token_file, "token")
                    if auth.token_file
                    else self._env(auth.token_env or "")
                )
                self.client.token = token
                data = self._raw(lambda c: c.auth.token.lookup_self(), "look up its token")["data"]
                self._track(float(data.get("ttl") or 0), bool(data.get("renewable")))
            else:
                if auth.method is VaultAuthMethod.APPROLE:
                    secret_id = (
                        self._file(auth.secret_id_file, "secret id")
                        if auth.secret_id_file
                        else self._env(auth.secret_id_env or "")
                    )
                    response = self._raw(
                        lambda c: c.auth.approle.login(
                            role_id=auth.role_id,
                            secret_id=secret_id,
                            mount_point=auth.approle_mount,
                        ),
                        "log in with AppRole",
                    )
                else:
                    jwt = self._file(auth.jwt_file, "JWT")
                    response = self._raw(
                        lambda c: c.auth.jwt.jwt_login(
                            role=auth.jwt_role, jwt=jwt, path=auth.jwt_mount
                        ),
                        "log in with a JWT",
                    )
                info = response["auth"]
                self.client.token = info["client_token"]
                self._track(float(info.get("lease_duration") or 0), bool(info.get("renewable")))
            self._logged_in = True
            self.logins += 1

    def _fresh(self) -> None:
        """Log in if needed; renew (or log in again) once little of the token's TTL is left."""
        with self._lock:
            if not self._logged_in:
                self.login()
                return
            if self._expires is None:
                return
            left = self._expires - self._clock()
            if left > self._ttl * _RENEW_SHARE:
                return
            if self._renewable and left > 0:
                try:
                    info = self._raw(lambda c: c.auth.token.renew_self(), "renew its token")["auth"]
                except DbaccessError as exc:
                    log.info("renewing the Vault token failed (%s); logging in again", exc.message)
                else:
                    ttl = float(info.get("lease_duration") or 0)
                    self.renewals += 1
                    # A renewal capped by the token's max TTL is worth keeping only while
                    # it still buys time; near the cap a new login is the way on.
                    if ttl > self._ttl * _RENEW_SHARE or ttl <= 0:
                        self._track(ttl, bool(info.get("renewable")))
                        return
            self.login()

    # -- requests -------------------------------------------------------------
    def _raw(self, call: Callable[[Any], T], what: str) -> T:
        """Run one hvac call; transport and Vault errors leave as the broker's error kinds."""
        import hvac.exceptions as vex
        import requests

        address = self.settings.address
        try:
            return call(self.client)
        except requests.exceptions.SSLError as exc:
            raise Unavailable(
                f"TLS to Vault at {address} failed while trying to {what}: {_reason(exc)}",
                hint="check vault.ca_cert in the policy",
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise Unavailable(
                f"Vault at {address} is unreachable ({_reason(exc)}); could not {what}",
                hint="check that Vault is up and that vault.address in the policy is right",
            ) from None
        except (vex.Forbidden, vex.Unauthorized) as exc:
            raise Forbidden(
                f"Vault at {address} refused to let the broker {what}: {_vault_message(exc)}",
                hint="check the broker's Vault login and the Vault policy attached to it",
            ) from None
        except (vex.VaultDown, vex.VaultNotInitialized, vex.BadGateway) as exc:
            raise Unavailable(
                f"Vault at {address} cannot serve requests ({_vault_message(exc)}); "
                f"could not {what}",
                hint="Vault may be sealed or restarting",
            ) from None
        except vex.InvalidPath as exc:
            raise InvalidInput(
                f"Vault at {address}: nothing at the path used to {what} ({_vault_message(exc)})",
                hint="check vault.mount and vault.role in the policy",
            ) from None
        except vex.VaultError as exc:
            raise DbaccessError(
                f"Vault at {address} failed to {what}: {_vault_message(exc)}"
            ) from None

    def call(self, call: Callable[[Any], T], what: str) -> T:
        """Run one hvac call with a live token; a 403 gets one retry after a fresh login."""
        self._fresh()
        try:
            return self._raw(call, what)
        except Forbidden:
            with self._lock:
                self.login()
            return self._raw(call, what)


def _vault_message(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        return "; ".join(str(e) for e in errors)
    return str(exc).split(", on ")[0] or type(exc).__name__


class VaultIssuer:
    """Leases database credentials from Vault/OpenBao for one target."""

    def __init__(
        self,
        settings: VaultSettings,
        *,
        admin_dsn: str | None = None,
        login: VaultLogin | None = None,
        terminate_wait: float = _TERMINATE_WAIT_SECONDS,
    ) -> None:
        self.settings = settings
        self.vault = login or VaultLogin(settings)
        self._admin = None
        if admin_dsn is not None:
            from server.credentials.postgres import PostgresIssuer

            self._admin = PostgresIssuer(admin_dsn)
        self._book: LeaseBook | None = None
        self.terminate_wait = terminate_wait

    def __repr__(self) -> str:
        return f"VaultIssuer({self.settings.address!r}, {self.settings.mount}/{self.settings.role})"

    def keep_leases_in(self, book: LeaseBook) -> None:
        self._book = book

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()

    @property
    def book(self) -> LeaseBook:
        if self._book is None:
            raise Unavailable("the vault issuer has no lease store to keep its leases in")
        return self._book

    def role_for(self, scope: str | None) -> str:
        return self.settings.role.replace("{scope}", scope or "")

    # -- issue ------------------------------------------------------------------
    def issue(
        self,
        *,
        identity: str,
        session_id: str,
        grants: Sequence[str],
        valid_until: datetime,
        scope: str | None = None,
        masking: MaskingPolicy | None = None,
        limits: SessionLimits | None = None,
    ) -> Credential:
        # ``limits``: Vault's creation statements make the role, so the broker does
        # not alter it; the gateway sends the limits at every login (docs/limits.md
        # shows the ALTER ROLE … SET lines for the Vault role's creation statements).
        if valid_until.tzinfo is None or valid_until.utcoffset() is None:
            raise InvalidInput("valid_until must be timezone-aware")
        if masking is not None and masking.database_grants:
            # Vault's role statements decide the grants: the broker cannot withhold columns.
            raise Unavailable(
                "masking.database_grants is not supported by the vault issuer",
                hint="withhold the masked columns in the Vault role's creation statements, "
                "and turn database_grants off",
            )
        book = self.book
        role, mount = self.role_for(scope), self.settings.mount
        response = self.vault.call(
            lambda c: c.secrets.database.generate_credentials(name=role, mount_point=mount),
            f"read {mount}/creds/{role}",
        )
        lease_id = str(response["lease_id"])
        username = str(response["data"]["username"])
        password = str(response["data"]["password"])
        try:
            self._cover(lease_id, float(response.get("lease_duration") or 0), valid_until)
            oid = self._role_oid(username) if self._admin is not None else None
            book.remember(Lease(lease_id, username, session_id, valid_until, oid))
        except BaseException:
            # Nothing half-made survives a failed start: the lease goes back at once.
            with contextlib.suppress(DbaccessError):
                self.vault.call(lambda c: c.sys.revoke_lease(lease_id), "revoke a lease")
            raise
        return Credential(
            username=username, password=password, valid_until=valid_until, lease_id=lease_id
        )

    def _cover(self, lease_id: str, duration: float, valid_until: datetime) -> None:
        """Make the lease last until the session's deadline, or refuse the session."""
        now = datetime.now(UTC)
        needed = valid_until - now
        if duration <= 0 or now + timedelta(seconds=duration) + _LEASE_SLACK >= valid_until:
            return
        increment = int(needed.total_seconds()) + 1
        renewed = self.vault.call(
            lambda c: c.sys.renew_lease(lease_id=lease_id, increment=increment),
            "renew a lease to the session's deadline",
        )
        granted = float(renewed.get("lease_duration") or 0)
        if datetime.now(UTC) + timedelta(seconds=granted) + _LEASE_SLACK < valid_until:
            raise Conflict(
                f"Vault role {self.settings.mount}/{self.settings.role} grants leases of at most "
                f"{int(granted)}s, shorter than the session ({int(needed.total_seconds())}s)",
                hint="ask for a shorter --ttl, or raise the Vault role's max_ttl",
            )

    def _role_oid(self, username: str) -> int:
        assert self._admin is not None
        with self._admin.admin_connection() as conn:
            row = conn.execute(_query("lease_role_oid.sql"), {"name": username}).fetchone()
        if row is None:
            raise Conflict(
                f"Vault returned user {username!r}, but no such role exists in the target",
                hint="the Vault role's connection must point at the target's cluster",
            )
        return int(row[0])

    # -- revoke -----------------------------------------------------------------
    def revoke(self, username: str) -> RevocationResult:
        lease = self.book.find(username)
        if lease is None:
            return self._nothing_to_revoke(username)
        terminated = 0
        if self._admin is not None and lease.role_oid is not None:
            # Cut live connections first: that must not wait for Vault to answer.
            terminated, _ = self._terminate(lease, wait=False)
        lease_id = lease.lease_id
        self.vault.call(lambda c: c.sys.revoke_lease(lease_id), "revoke a lease")
        self.book.mark_revoked(lease_id)
        if self._admin is None or lease.role_oid is None:
            try:
                gone = self._lease_gone(lease_id)
            except (Unavailable, Forbidden) as exc:
                # Not an answer about the lease: it cannot count as verified.
                return RevocationResult(
                    username,
                    0,
                    dropped=False,
                    verified=False,
                    detail=f"lease revoked in Vault, but not checked: {exc.message}",
                )
            return RevocationResult(
                username,
                0,
                dropped=gone,
                verified=gone,
                detail="lease revoked in Vault; the database was not checked (no admin DSN)"
                if gone
                else "Vault still knows the lease after revoking it",
            )
        late, remaining = self._terminate(lease, wait=True)
        with self._admin.admin_connection() as conn:
            row = conn.execute(_query("role_exists.sql"), {"oid": lease.role_oid}).fetchone()
        role_left = bool(row and row[0])
        verified = not role_left and remaining == 0
        detail = "" if verified else f"role present: {role_left}, backends left: {remaining}"
        if role_left:
            detail += " (check the Vault role's revocation_statements)"
        return RevocationResult(
            username, terminated + late, dropped=not role_left, verified=verified, detail=detail
        )

    def _nothing_to_revoke(self, username: str) -> RevocationResult:
        if self._admin is None:
            return RevocationResult(
                username, 0, dropped=False, verified=True, detail="no outstanding lease"
            )
        with self._admin.admin_connection() as conn:
            row = conn.execute(_query("lease_role_oid.sql"), {"name": username}).fetchone()
        if row is None:
            return RevocationResult(
                username, 0, dropped=False, verified=True, detail="no outstanding lease"
            )
        # A role by that name without a lease of ours: not the broker's to touch.
        return RevocationResult(
            username,
            0,
            dropped=False,
            verified=False,
            detail="the role exists but the broker holds no lease for it; left alone",
        )

    def _lease_gone(self, lease_id: str) -> bool:
        """Whether Vault no longer knows the lease; Unavailable or Forbidden when it did not say."""
        try:
            self.vault.call(lambda c: c.sys.read_lease(lease_id), "look up a lease")
        except (Unavailable, Forbidden):
            raise
        except DbaccessError:
            return True
        return False

    def _terminate(self, lease: Lease, *, wait: bool) -> tuple[int, int]:
        """Signal the leased role's backends; with ``wait``, until none is left or time is up."""
        assert self._admin is not None and lease.role_oid is not None
        params = {"oid": lease.role_oid, "name": lease.username}
        signalled: set[int] = set()
        deadline = time.monotonic() + self.terminate_wait
        with self._admin.admin_connection() as conn:
            while True:
                rows = conn.execute(_query("lease_terminate_backends.sql"), params).fetchall()
                signalled.update(int(pid) for pid, ok in rows if ok)
                row = conn.execute(_query("lease_count_backends.sql"), params).fetchone()
                remaining = int(row[0]) if row else 0
                if not wait or remaining == 0 or time.monotonic() >= deadline:
                    return len(signalled), remaining
                time.sleep(_POLL_INTERVAL_SECONDS)

    def terminate_backends(self, username: str) -> int:
        if self._admin is None:
            return 0
        lease = self.book.find(username)
        if lease is None or lease.role_oid is None:
            return 0
        terminated, _ = self._terminate(lease, wait=True)
        return terminated

    def list_managed(self) -> list[ManagedRole]:
        return [
            ManagedRole(lease.username, lease.valid_until, session_id=lease.session_id)
            for lease in self.book.outstanding()
        ]
