"""The policy as typed, immutable values: what ``load_policy`` returns and ``evaluate`` reads.

Everything here has already been checked by the loader (names are valid,
``default_ttl <= max_ttl``, exactly one admin DSN source), so code that receives
a :class:`Policy` need not re-check.  Mappings are read-only views, keeping the
order of the file so listings show targets and scopes as their author wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path


class Issuer(StrEnum):
    """How session credentials are minted for a target."""

    POSTGRES = "postgres"


class SslMode(StrEnum):
    """libpq's ``sslmode`` values."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


@dataclass(frozen=True)
class ScopePolicy:
    """One way of using a target: the roles a session gets, for how long, and who may ask."""

    name: str
    grants: tuple[str, ...]
    max_ttl: timedelta
    default_ttl: timedelta
    allow_groups: frozenset[str]
    allow_identities: frozenset[str]


@dataclass(frozen=True, kw_only=True)
class TargetPolicy:
    """A database sessions connect to, and how the broker administers it.

    ``admin_dsn`` is kept out of ``repr`` because it may hold a password and
    objects end up in logs.  Use ``resolve_admin_dsn`` to obtain the DSN whichever
    way it is given.
    """

    name: str
    database: str
    description: str | None = None
    issuer: Issuer = Issuer.POSTGRES
    admin_dsn: str | None = field(default=None, repr=False)
    admin_dsn_env: str | None = None
    admin_dsn_file: Path | None = None
    sslmode: SslMode | None = None
    sslrootcert: Path | None = None
    scopes: Mapping[str, ScopePolicy]


@dataclass(frozen=True)
class Policy:
    """The whole policy file: targets, static groups (group -> identities), and its source."""

    targets: Mapping[str, TargetPolicy]
    groups: Mapping[str, frozenset[str]]
    source: str
