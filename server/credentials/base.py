"""The credential issuer interface shared by every backend (postgres, vault, rds-iam).

An issuer mints one credential per session (``issue``), ends it for real
(``revoke``: no new logins, live connections terminated, the role gone, then a
check that nothing is left), can cut live connections on their own
(``terminate_backends``), and lists what it manages (``list_managed``) so the
reaper can find expired or orphaned credentials after a crash.

Issuers whose credentials are leases (``vault``) also take a :class:`LeaseBook`
(``keep_leases_in``): they write each lease there as soon as they have it, so a
broker that crashes and restarts can still revoke leases it no longer holds in
memory.  A credential may carry a ``password_provider`` instead of a fixed
password (``rds-iam``): the gateway calls it for each upstream connection.

Database role names are derived from the identity and the session id by
:func:`role_name_for`: readable enough that a DBA looking at
``pg_stat_activity`` knows whose session a backend belongs to, unique per
session, made only of ``[a-z0-9_]`` (so they never need quoting, although every
issuer quotes them anyway) and at most 63 bytes (PostgreSQL's NAMEDATALEN-1,
beyond which it silently truncates names, which could merge two sessions).
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Protocol, runtime_checkable

from server.policy.model import MaskingPolicy, SessionLimits

MAX_ROLE_NAME_BYTES = 63
ROLE_PREFIX = "dba_"
_SESSION_PREFIX_CHARS = 8
_SESSION_HASH_CHARS = 6
_NOT_NAME_CHARS = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Credential:
    """What a session connects upstream with. The password is kept out of reprs and logs.

    ``password_provider``, when set, mints the password for each new upstream
    connection (short-lived login tokens); ``password`` is then unused.
    """

    username: str
    password: str = field(repr=False)
    valid_until: datetime
    lease_id: str | None = None
    password_provider: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    def login_password(self) -> str:
        """The password for an upstream login starting now (may block: it can call out)."""
        if self.password_provider is not None:
            return self.password_provider()
        return self.password


@dataclass(frozen=True)
class RoleMark:
    """Whose a session role is: the deployment (one store and its brokers) and the
    replica that minted it.  Kept on the role itself (its comment, which only a role
    with CREATEROLE can set, and a session role has none), so that a reaper tells its
    deployment's roles from another's on a shared target, and a dead replica's from a
    live one's that is still starting a session."""

    deployment: str
    replica: str


_MARK_PREFIX = "dbaccess session role"
_MARK = re.compile(
    r"^dbaccess session role deployment=([0-9a-z_-]+) replica=([0-9a-z_-]+) session=([0-9a-z_-]+)$"
)


def role_comment(mark: RoleMark, session_id: str) -> str:
    """The comment a marked session role carries (:func:`read_role_comment` reads it)."""
    return (
        f"{_MARK_PREFIX} deployment={mark.deployment} replica={mark.replica} session={session_id}"
    )


def read_role_comment(comment: str | None) -> tuple[RoleMark, str] | None:
    """(mark, session id) from a role's comment; None for an unmarked role."""
    found = _MARK.match(comment or "")
    if found is None:
        return None
    return RoleMark(found[1], found[2]), found[3]


@dataclass(frozen=True)
class ManagedRole:
    """A role the issuer manages; ``valid_until`` is None when it has no (finite) deadline.

    ``session_id`` is set when the issuer knows which session the role was minted
    for (lease-based issuers, marked roles), so the reaper can spare one that is
    still starting; ``mark`` says whose a marked role is (None: unmarked, as roles
    from before deployments were marked are).
    """

    name: str
    valid_until: datetime | None
    session_id: str | None = None
    mark: RoleMark | None = None


@dataclass(frozen=True)
class Lease:
    """A credential lease as the broker keeps it: enough to revoke it after a restart."""

    lease_id: str
    username: str
    session_id: str
    valid_until: datetime
    role_oid: int | None = None


class LeaseBook(Protocol):
    """Durable record of one target's leases (the broker's store)."""

    def remember(self, lease: Lease) -> None: ...

    def find(self, username: str) -> Lease | None:
        """The unrevoked lease of ``username``, if any."""
        ...

    def outstanding(self) -> list[Lease]:
        """Every lease not yet marked revoked."""
        ...

    def mark_revoked(self, lease_id: str) -> None: ...


@runtime_checkable
class KeepsLeases(Protocol):
    """An issuer that needs a :class:`LeaseBook` before it can issue or revoke."""

    def keep_leases_in(self, book: LeaseBook) -> None: ...


@runtime_checkable
class MarksRoles(Protocol):
    """An issuer that creates roles itself and marks them with their owner."""

    def mark_roles(self, mark: RoleMark) -> None: ...


@runtime_checkable
class MintsLoginTokens(Protocol):
    """An issuer whose credentials log in with a fresh token each time (``rds-iam``):
    a replica that takes a session over mints them for its role with its own issuer."""

    def token(self, username: str) -> str: ...


@dataclass(frozen=True)
class RevocationResult:
    """What revoke did: backends terminated, whether the role was dropped, and whether a
    check afterwards found neither the role nor any of its backends."""

    username: str
    terminated_backends: int
    dropped: bool
    verified: bool
    detail: str = ""


@runtime_checkable
class Issuer(Protocol):
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
        """A credential for one session.  With ``masking.database_grants`` the masked
        columns of ``scope`` must be unreadable by it inside the database; an issuer
        that cannot see to that raises :class:`~server.errors.Unavailable`.  An issuer
        that creates the role attaches ``limits``' database settings to it; the
        gateway sends them again at every login in any case."""
        ...

    def revoke(self, username: str) -> RevocationResult: ...

    def terminate_backends(self, username: str) -> int: ...

    def list_managed(self) -> list[ManagedRole]: ...


def _sanitize(text: str) -> str:
    # NFKD splits accented letters into letter + mark, so "José" keeps its "jose".
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NOT_NAME_CHARS.sub("_", ascii_text.lower()).strip("_")


def role_name_for(identity: str, session_id: str) -> str:
    """``dba_<identity>_<session>``: traceable, unique per session, ``[a-z0-9_]``, <= 63 bytes.

    The session part is the start of the session id (to find the session from a
    role name at a glance) followed by a hash of the whole id, so that two ids
    which sanitize or truncate to the same text still get different names.
    """
    digest = hashlib.sha256(session_id.encode("utf-8")).digest()
    hashed = base64.b32encode(digest).decode("ascii").lower()[:_SESSION_HASH_CHARS]
    session_part = _sanitize(session_id).replace("_", "")[:_SESSION_PREFIX_CHARS] + hashed
    budget = MAX_ROLE_NAME_BYTES - len(ROLE_PREFIX) - 1 - len(session_part)
    who = _sanitize(identity)[:budget].strip("_") or "user"
    return f"{ROLE_PREFIX}{who}_{session_part}"


@cache
def sql_template(name: str) -> str:
    """The statement in ``server/credentials/sql/<name>`` (the issuers' SQL; read once),
    without surrounding blank space or a closing ``;``."""
    text = (resources.files("server.credentials") / "sql" / name).read_text(encoding="utf-8")
    return text.strip().rstrip(";")
