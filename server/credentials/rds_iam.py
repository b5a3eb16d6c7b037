"""The ``rds-iam`` issuer: IAM database authentication for Amazon RDS and Aurora PostgreSQL.

An IAM auth token is a SigV4-presigned ``connect`` request for one host, port,
database user and region (``rds.generate_db_auth_token``); RDS accepts it as the
password of a user that is a member of ``rds_iam``, over TLS only.  A token is
good for logging in during 15 minutes and does nothing after that: it neither
ends nor limits a session that is already connected.  So:

* the credential carries no password but a ``password_provider`` that the
  gateway calls just before *each* upstream connection, so a session longer
  than 15 minutes can still open new connections;
* the gateway sends the token as a cleartext password, which it does only over
  TLS that verified the server (``verify-full`` by default, against
  ``rds_iam.ca_bundle``), and never to a server that asks for it otherwise;
* what ends a session is the gateway: it closes the session's connections at
  the deadline, on ``dbaccess kill`` and when the client ends, and with them the
  upstream connections.

Two ways to map sessions to database users:

with an admin DSN
    Each session gets a role of its own, created like the ``postgres`` issuer's
    (``VALID UNTIL`` the deadline, member of the marker role and the scope's
    grants) plus ``rds_iam``, and with no password at all; at the end it is
    revoked the same way (NOLOGIN, backends terminated, role dropped, checked).
without one
    Sessions log in as an existing IAM-enabled user named by the policy
    (``db_user``, or ``db_user_template`` with ``{scope}`` for one user per
    scope).  Nothing is created or dropped in the database; the session's
    privileges are that user's, and its end is the gateway closing its
    connections (backends of a shared user cannot be told apart, so none are
    terminated by the broker).

AWS credentials come from boto3's standard chain (environment, shared config
and credentials files, container or instance role); boto3 is imported only when
a token is first needed.  A token is minted once at session start as well, so
missing AWS credentials refuse the session instead of failing its first login.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from server.credentials.base import (
    Credential,
    ManagedRole,
    RevocationResult,
    RoleMark,
    role_name_for,
)
from server.errors import InvalidInput, Unavailable
from server.policy.model import MaskingPolicy, RdsIamSettings, SessionLimits

IAM_LOGIN_ROLE = "rds_iam"
TOKEN_LIFETIME_SECONDS = 900


class RdsIamIssuer:
    """Mints per-connection IAM auth tokens for one RDS target."""

    def __init__(
        self,
        settings: RdsIamSettings,
        *,
        host: str,
        port: int,
        admin_dsn: str | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self._client: Any = None
        self._lock = threading.Lock()
        self._roles = None
        if admin_dsn is not None:
            from server.credentials.postgres import PostgresIssuer

            self._roles = PostgresIssuer(
                admin_dsn, login_roles=(IAM_LOGIN_ROLE,), password_login=False
            )

    def __repr__(self) -> str:
        return f"RdsIamIssuer({self.host}:{self.port}, region={self.settings.region!r})"

    # -- tokens -----------------------------------------------------------------
    def _rds(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.session.Session().client(
                    "rds",
                    region_name=self.settings.region,
                    endpoint_url=self.settings.endpoint_url,
                )
            return self._client

    def token(self, username: str) -> str:
        """A fresh IAM auth token for ``username`` (valid for logging in for 15 minutes)."""
        from botocore.exceptions import BotoCoreError, NoCredentialsError

        try:
            return str(
                self._rds().generate_db_auth_token(
                    DBHostname=self.host,
                    Port=self.port,
                    DBUsername=username,
                    Region=self.settings.region,
                )
            )
        except NoCredentialsError:
            raise Unavailable(
                "no AWS credentials for IAM database authentication",
                hint="give the broker AWS credentials the standard way (environment, "
                "shared credentials file, or an instance or container role)",
            ) from None
        except BotoCoreError as exc:
            raise Unavailable(f"cannot mint an IAM auth token: {exc}") from None

    def user_for(self, scope: str | None) -> str:
        if self.settings.db_user is not None:
            return self.settings.db_user
        template = self.settings.db_user_template
        if template is None:
            raise InvalidInput("rds_iam needs db_user or db_user_template without an admin DSN")
        return template.replace("{scope}", scope or "")

    # -- Issuer -----------------------------------------------------------------
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
        # A shared IAM user is not ours to alter: its sessions get ``limits`` from the
        # gateway, as startup parameters of every login.
        if self._roles is None:
            if masking is not None and masking.database_grants:
                raise Unavailable(
                    "masking.database_grants needs a role per session: give the rds-iam "
                    "target an admin DSN, or turn database_grants off",
                )
            username = self.user_for(scope)
            self.token(username)
            return Credential(
                username=username,
                password="",
                valid_until=valid_until,
                password_provider=lambda: self.token(username),
            )
        # Fail on missing AWS credentials before a role exists that would need dropping.
        self.token(role_name_for(identity, session_id))
        credential = self._roles.issue(
            identity=identity,
            session_id=session_id,
            grants=grants,
            valid_until=valid_until,
            scope=scope,
            masking=masking,
            limits=limits,
        )
        username = credential.username
        return dataclasses.replace(credential, password_provider=lambda: self.token(username))

    def revoke(self, username: str) -> RevocationResult:
        if self._roles is not None:
            return self._roles.revoke(username)
        return RevocationResult(
            username,
            0,
            dropped=False,
            verified=True,
            detail="shared IAM user: nothing to drop; the gateway closed the session's "
            "connections and its tokens only ever gated logins",
        )

    def terminate_backends(self, username: str) -> int:
        return self._roles.terminate_backends(username) if self._roles is not None else 0

    def list_managed(self) -> list[ManagedRole]:
        return self._roles.list_managed() if self._roles is not None else []

    def mark_roles(self, mark: RoleMark) -> None:
        if self._roles is not None:
            self._roles.mark_roles(mark)

    def close(self) -> None:
        if self._roles is not None:
            self._roles.close()
