"""The policy as typed, immutable values: what ``load_policy`` returns and ``evaluate`` reads.

Everything here has already been checked by the loader (names are valid,
``default_ttl <= max_ttl``, at most one admin DSN source), so code that receives
a :class:`Policy` need not re-check.  Mappings are read-only views, keeping the
order of the file so listings show targets and scopes as their author wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from pathlib import Path


class Issuer(StrEnum):
    """How session credentials are minted for a target."""

    POSTGRES = "postgres"
    VAULT = "vault"
    RDS_IAM = "rds-iam"


class SslMode(StrEnum):
    """libpq's ``sslmode`` values."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


@dataclass(frozen=True)
class ApprovalPolicy:
    """Who must agree before a scope may be used, and how long their agreement lasts.

    ``min_approvals`` counts distinct approvers other than the requester.
    ``approval_ttl`` is how long an approved grant stays usable if unused;
    ``pending_ttl`` how long a request waits for a decision.  A ``single_use``
    grant starts one session; otherwise it may start sessions until the approved
    session lifetime, counted from its first use, runs out.
    """

    required: bool = False
    approver_groups: frozenset[str] = frozenset()
    approver_identities: frozenset[str] = frozenset()
    min_approvals: int = 1
    approval_ttl: timedelta = timedelta(hours=1)
    pending_ttl: timedelta = timedelta(hours=24)
    single_use: bool = True


NO_APPROVAL = ApprovalPolicy()


GUARDRAIL_PRESETS = ("read", "write", "admin")
GUARDRAIL_CLASSES = ("read", "write", "ddl", "privilege", "session_state", "transaction", "utility")


@dataclass(frozen=True, kw_only=True)
class GuardrailSettings:
    """A ``guardrails`` section as written: None means "not said here".

    A target's section gives defaults to its scopes; a scope's section overrides
    them key by key.  ``preset`` None means ``read`` for a scope named read and
    ``write`` otherwise; the other keys replace the preset's value.  The gateway
    turns the result into its rules (``server.gateway.rules``).
    """

    preset: str | None = None
    production: bool | None = None
    review: frozenset[str] | None = None
    block: frozenset[str] | None = None
    functions_allow: frozenset[str] | None = None
    functions_deny: frozenset[str] | None = None
    require_where: bool | None = None
    allow_listen_notify: bool | None = None
    allow_code: bool | None = None
    unknown: str | None = None
    max_rows_by_explain: int | None = None

    def over(self, base: GuardrailSettings) -> GuardrailSettings:
        """These settings, with what they leave unsaid taken from ``base``."""
        return GuardrailSettings(
            **{
                key: getattr(self, key) if getattr(self, key) is not None else getattr(base, key)
                for key in self.__dataclass_fields__
            }
        )


NO_GUARDRAIL_SETTINGS = GuardrailSettings()


@dataclass(frozen=True, kw_only=True)
class SessionLimits:
    """What one session of a scope may cost the database and the gateway.

    The first five are PostgreSQL settings attached to the session role when it
    is created, so they hold even where the gateway is bypassed; the gateway
    refuses every way of changing them (``server.gateway.pinning``).  A
    ``timedelta(0)`` turns a timeout off, as 0 does in PostgreSQL.
    ``temp_file_limit`` is in bytes (-1: no limit).
    ``max_result_rows``/``max_result_bytes`` bound what one statement may return
    through the gateway (None: unbounded).  The connection caps count client
    connections through the gateway: per session, per identity across its
    sessions, per target across everyone's; None for the last two means a share
    of the target's own ``max_connections``, read at first use.
    ``advisory_locks`` lets sessions call ``pg_advisory_lock`` and kin.
    The policy's ``limits`` sections are read by :mod:`server.policy.limits`.
    """

    statement_timeout: timedelta
    lock_timeout: timedelta
    idle_in_transaction_session_timeout: timedelta
    idle_session_timeout: timedelta
    temp_file_limit: int
    max_result_rows: int | None
    max_result_bytes: int | None
    max_connections_per_session: int
    max_connections_per_identity: int | None = None
    max_connections_per_target: int | None = None
    advisory_locks: bool = False


# The limits a scope gets for what its policy leaves unsaid (docs/limits.md).
READ_LIMITS = SessionLimits(
    statement_timeout=timedelta(minutes=5),
    lock_timeout=timedelta(seconds=10),
    idle_in_transaction_session_timeout=timedelta(minutes=1),
    idle_session_timeout=timedelta(hours=1),
    temp_file_limit=1 << 30,
    max_result_rows=1_000_000,
    max_result_bytes=1 << 30,
    max_connections_per_session=20,
)
# Writes wait longer and spill more; the rest is read's.
WRITE_LIMITS = replace(
    READ_LIMITS,
    statement_timeout=timedelta(minutes=15),
    lock_timeout=timedelta(seconds=30),
    idle_in_transaction_session_timeout=timedelta(minutes=5),
    temp_file_limit=4 << 30,
)


def default_limits(scope: str) -> SessionLimits:
    """The defaults of a scope named ``scope``: read's for ``read``, write's for any other."""
    return READ_LIMITS if scope == "read" else WRITE_LIMITS


def preset_of(scope: str, settings: GuardrailSettings) -> str:
    """The guardrail preset a scope named ``scope`` starts from: the one its settings
    name, else ``read`` for a scope named read and ``write`` for any other."""
    return settings.preset or ("read" if scope == "read" else "write")


@dataclass(frozen=True, kw_only=True)
class AgentPolicy:
    """A scope's ``agents`` section: what sessions of ``agent`` identities get there.

    ``allow`` None means agents may use the scope only when it is read-only (its
    guardrail preset is ``read``).  ``guardrails`` is laid over the scope's own
    for agents; what it leaves unsaid keeps the agents' defaults (DDL and
    privilege changes blocked, every write by review).  ``limits`` are the
    agents' limits when the section gives any (None: the scope's, with the
    agents' result budgets); see :mod:`server.policy.agents`.
    """

    allow: bool | None = None
    guardrails: GuardrailSettings = NO_GUARDRAIL_SETTINGS
    limits: SessionLimits | None = None


DEFAULT_AGENT_POLICY = AgentPolicy()


@dataclass(frozen=True)
class ScopePolicy:
    """One way of using a target: the roles a session gets, for how long, and who may ask.

    ``break_glass`` lets an allowed identity skip a required approval by saying so
    (and why); such sessions are flagged in the audit log and notified.
    """

    name: str
    grants: tuple[str, ...]
    max_ttl: timedelta
    default_ttl: timedelta
    allow_groups: frozenset[str]
    allow_identities: frozenset[str]
    approval: ApprovalPolicy = NO_APPROVAL
    reason_required: bool = False
    break_glass: bool = False
    guardrails: GuardrailSettings = NO_GUARDRAIL_SETTINGS
    # None: ``default_limits(name)``; read it through ``effective_limits``.
    limits: SessionLimits | None = None
    agents: AgentPolicy = DEFAULT_AGENT_POLICY

    @property
    def effective_limits(self) -> SessionLimits:
        return self.limits if self.limits is not None else default_limits(self.name)


class VaultAuthMethod(StrEnum):
    """How the broker logs in to Vault/OpenBao."""

    TOKEN = "token"  # noqa: S105 - a method name
    APPROLE = "approle"
    JWT = "jwt"


@dataclass(frozen=True, kw_only=True)
class VaultAuth:
    """Where the broker's Vault login material lives: only file paths and variable names.

    ``token``: a token from ``token_file`` or ``token_env``.  ``approle``: ``role_id``
    and a secret id from ``secret_id_file`` or ``secret_id_env``.  ``jwt``: the JWT in
    ``jwt_file`` (e.g. a Kubernetes service-account token) for ``jwt_role`` at the
    auth mount ``jwt_mount`` (a ``kubernetes`` mount takes the same login).
    """

    method: VaultAuthMethod
    token_file: Path | None = None
    token_env: str | None = None
    role_id: str | None = None
    secret_id_file: Path | None = None
    secret_id_env: str | None = None
    approle_mount: str = "approle"
    jwt_file: Path | None = None
    jwt_role: str | None = None
    jwt_mount: str = "jwt"


@dataclass(frozen=True, kw_only=True)
class VaultSettings:
    """A Vault/OpenBao database secrets engine role that mints a target's session credentials.

    ``role`` may contain ``{scope}``, so that each scope has a Vault role of its own.
    """

    address: str
    role: str
    auth: VaultAuth
    mount: str = "database"
    ca_cert: Path | None = None
    namespace: str | None = None


@dataclass(frozen=True, kw_only=True)
class RdsIamSettings:
    """IAM database authentication for an RDS/Aurora target.

    Without an admin DSN sessions log in as a fixed IAM-enabled user: ``db_user``,
    or ``db_user_template`` with ``{scope}`` for one user per scope.  With an admin
    DSN every session gets its own role in ``rds_iam``.
    """

    region: str
    ca_bundle: Path
    db_user: str | None = None
    db_user_template: str | None = None
    endpoint_url: str | None = None


class MaskMethod(StrEnum):
    """How a masked value is shown.

    ``clear`` exists for exact column rules only: it vouches for a column that a
    name pattern would otherwise mask (or that a view derives from masked ones).
    """

    CLEAR = "clear"
    REDACT = "redact"
    PARTIAL = "partial"
    HASH = "hash"
    NULL = "null"


class DetectorKind(StrEnum):
    """Families of sensitive content the gateway recognises in values, whatever their column."""

    EMAIL = "email"
    PHONE = "phone"
    CARD = "card"
    NATIONAL_ID = "national_id"
    SECRET = "secret"  # noqa: S105 - a detector name


class DetectorAction(StrEnum):
    """What happens to a value in which a detector found something."""

    MASK = "mask"
    BLOCK = "block"


class RecordingFailure(StrEnum):
    """What a session does when its recording cannot be written: end, or go on unrecorded."""

    CLOSE = "close"
    CONTINUE = "continue"


@dataclass(frozen=True, kw_only=True)
class MaskRule:
    """One masking rule: an exact ``schema.table.column`` or a column-name glob, and a method.

    ``scopes`` limits the rule to some of the target's scopes (empty: all of them).
    ``keep_last`` and ``keep_domain`` shape ``partial``; ``hash_length`` is how many
    hex digits of the keyed hash are shown.
    """

    column: str | None = None
    pattern: str | None = None
    method: MaskMethod
    keep_last: int | None = None
    keep_domain: bool = False
    hash_length: int = 16
    scopes: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True)
class MaskingPolicy:
    """A target's ``masking`` section: rules, the hashing key's source, who is exempt, detectors.

    The key itself is read when a session starts (from ``key_file`` or ``key_env``),
    like the admin DSN, so it is never part of the long-lived policy object.
    ``database_grants`` asks for column-level grants that leave masked columns
    out of the scopes' grant roles as a second wall.  ``trusted_functions``
    names functions outside ``pg_catalog`` and ``information_schema`` that a
    masked session may call (as written in SQL, ``schema.name``, ``name`` or a
    prefix ending in ``*``): any other such function could read masked
    columns itself, and is refused before it runs.  ``inference`` is ``block``
    (refuse statements that filter, join, group or sort on a masked column,
    whose results tell what the values are), ``review`` (such a statement runs
    once a reviewer approved that exact statement, as for a guardrail's
    review) or ``allow``.
    """

    rules: tuple[MaskRule, ...] = ()
    key_file: Path | None = None
    key_env: str | None = None
    exempt_groups: frozenset[str] = frozenset()
    exempt_scopes: frozenset[str] = frozenset()
    detectors: Mapping[DetectorKind, DetectorAction] = field(default_factory=dict)
    database_grants: bool = False
    trusted_functions: frozenset[str] = frozenset()
    inference: str = "block"


@dataclass(frozen=True, kw_only=True)
class TargetPolicy:
    """A database sessions connect to, and how the broker administers it.

    ``admin_dsn`` is kept out of ``repr`` because it may hold a password and
    objects end up in logs.  Use ``resolve_admin_dsn`` to obtain the DSN whichever
    way it is given.  The ``postgres`` issuer always has one; ``vault`` and
    ``rds-iam`` targets may do without, and then name ``host``/``port`` instead.
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
    masking: MaskingPolicy | None = None
    recording_failure: RecordingFailure = RecordingFailure.CLOSE
    # Where the gateway connects when there is no admin DSN to take them from.
    host: str | None = None
    port: int | None = None
    vault: VaultSettings | None = None
    rds_iam: RdsIamSettings | None = None

    @property
    def has_admin_dsn(self) -> bool:
        return any(v is not None for v in (self.admin_dsn, self.admin_dsn_env, self.admin_dsn_file))


@dataclass(frozen=True, kw_only=True)
class WorkloadIdentity:
    """A service identity that CI jobs and agents become by presenting a matching JWT.

    A token binds to this entry when ``issuer`` signed it, ``audience`` is one of
    its audiences, and every claim in ``claims`` matches its pattern (shell-style
    globs: ``*``, ``?``, ``[...]``).  The job is then ``name`` with ``groups``;
    with ``agent_for``, it is an AI agent (identity kind ``agent``) acting for that
    person, held to the policy's ``agents`` rules.
    """

    name: str
    issuer: str
    audience: str
    claims: Mapping[str, str]
    groups: frozenset[str] = frozenset()
    agent_for: str | None = None


@dataclass(frozen=True)
class Policy:
    """The whole policy file: targets, static groups (group -> identities), and its source.

    ``workload_identities`` keep the file's order: the first entry a token matches wins.
    ``slack_users`` maps Slack user ids to the identities they review as.
    """

    targets: Mapping[str, TargetPolicy]
    groups: Mapping[str, frozenset[str]]
    source: str
    workload_identities: tuple[WorkloadIdentity, ...] = ()
    slack_users: Mapping[str, str] = field(default_factory=dict)
