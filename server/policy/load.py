"""Reading a policy file into a :class:`~server.policy.model.Policy`, with errors pointing at lines.

The file is composed with :mod:`server.yamlsrc` (line numbers kept, duplicate
keys caught, scalars kept as text) and then walked once, top to bottom, by the
``_read_*`` functions below.  Each of them notes every problem it sees in a shared
:class:`~server.yamlsrc.Checker` and carries on, so one run of ``dbaccess-server``
lists all the mistakes in a file rather than one per attempt.  Only when the walk
found nothing wrong is the typed policy returned.

Names that end up in URLs, CLI arguments and rule strings (targets, scopes) are
restricted to letters, digits, ``-`` and ``_``; role names to what PostgreSQL accepts
without quoting.  Relative paths (``admin_dsn_file``, ``sslrootcert``) are taken
relative to the policy file, not to the broker's working directory, so a policy
directory can be moved as a whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from common.durations import format_duration, parse_positive_duration
from server.addresses import issuer_url
from server.policy.agents import agent_default_limits
from server.policy.limits import (
    LIMIT_KEYS,
    NO_LIMIT_SETTINGS,
    LimitSettings,
    parse_connections,
    parse_result_bytes,
    parse_result_rows,
    parse_shared_connections,
    parse_temp_file_limit,
    parse_timeout,
)
from server.policy.model import (
    DEFAULT_AGENT_POLICY,
    GUARDRAIL_CLASSES,
    GUARDRAIL_PRESETS,
    NO_APPROVAL,
    NO_GUARDRAIL_SETTINGS,
    AgentPolicy,
    ApprovalPolicy,
    DetectorAction,
    DetectorKind,
    GuardrailSettings,
    Issuer,
    MaskingPolicy,
    MaskMethod,
    MaskRule,
    Policy,
    RdsIamSettings,
    RecordingFailure,
    ScopePolicy,
    SessionLimits,
    SslMode,
    TargetPolicy,
    VaultAuth,
    VaultAuthMethod,
    VaultSettings,
    WorkloadIdentity,
    default_limits,
)
from server.yamlsrc import (
    Checker,
    Entry,
    MapReader,
    Node,
    Problem,
    Scalar,
    Seq,
    SourceError,
    is_null,
    join,
    parse_yaml,
)

SUPPORTED_VERSION = 1

_TOP_KEYS = ("version", "groups", "targets", "workload_identities", "slack_users")
_DSN_KEYS = ("admin_dsn", "admin_dsn_env", "admin_dsn_file")
_TARGET_KEYS = (
    "description",
    "database",
    "issuer",
    *_DSN_KEYS,
    "sslmode",
    "sslrootcert",
    "scopes",
    "host",
    "port",
    "vault",
    "rds_iam",
    "masking",
    "recording_failure",
    "guardrails",
    "limits",
)
_SCOPE_KEYS = (
    "grants",
    "max_ttl",
    "default_ttl",
    "allow",
    "approval",
    "reason_required",
    "break_glass",
    "guardrails",
    "limits",
    "agents",
)
_AGENT_KEYS = ("allow", "guardrails", "limits")
_GUARDRAIL_KEYS = (
    "preset",
    "production",
    "review",
    "block",
    "functions_allow",
    "functions_deny",
    "require_where",
    "allow_listen_notify",
    "allow_code",
    "unknown",
    "max_rows_by_explain",
)
# A function as guardrails name it: [schema.]name with an optional trailing * for a
# prefix, or schema.* for a whole schema (unquoted names, as PostgreSQL folds them).
_FUNCTION = re.compile(r"[a-z_][a-z0-9_$]*(?:\.[a-z_][a-z0-9_$]*)?\*?|[a-z_][a-z0-9_$]*\.\*")
_APPROVAL_KEYS = (
    "required",
    "approvers",
    "min_approvals",
    "approval_ttl",
    "pending_ttl",
    "single_use",
)
_ALLOW_KEYS = ("groups", "identities")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PG_NAME_BYTES = 63
_DEFAULT_TTL_CAP = timedelta(hours=1)

E = TypeVar("E", bound=StrEnum)


class PolicyError(SourceError):
    """A policy file the broker cannot use; ``problems`` lists every mistake found."""


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and check the policy file at ``path``; raise :class:`PolicyError` if it is unusable."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([Problem(str(file), None, "", "policy file not found")]) from None
    except UnicodeDecodeError:
        raise PolicyError([Problem(str(file), None, "", "not UTF-8 text")]) from None
    except OSError as exc:
        message = f"cannot read the policy file: {exc.strerror or exc}"
        raise PolicyError([Problem(str(file), None, "", message)]) from None
    return parse_policy(text, str(file), base_dir=file.parent)


def parse_policy(text: str, source: str, *, base_dir: Path | None = None) -> Policy:
    """Check policy ``text``; ``source`` names it in errors, relative paths start at ``base_dir``.

    ``base_dir`` defaults to the directory part of ``source``.
    """
    base = Path(os.path.abspath(base_dir if base_dir is not None else Path(source).parent))
    root, problems = parse_yaml(text, source)
    if root is None:
        if not problems:
            problems = [
                Problem(source, 1, "", "the file is empty (a policy needs 'version' and 'targets')")
            ]
        raise PolicyError(problems)
    check = Checker(source, problems)
    top = check.mapping(root, "", _TOP_KEYS, line=root.line)
    version = top.required("version")
    if version is not None:
        _read_version(check, version)
    groups = _read_groups(check, top.optional("groups"))
    targets: dict[str, TargetPolicy] = {}
    targets_entry = top.required("targets")
    if targets_entry is not None:
        reader = check.mapping(targets_entry.value, "targets", None, line=targets_entry.key_line)
        for name, entry in reader:
            target = _read_target(check, name, entry, base)
            if target is not None:
                targets[name] = target
    workloads = _read_workload_identities(check, top.optional("workload_identities"))
    slack_users = _read_slack_users(check, top.optional("slack_users"))
    if check.problems:
        raise PolicyError(check.problems)
    return Policy(
        targets=MappingProxyType(targets),
        groups=MappingProxyType(groups),
        source=source,
        workload_identities=workloads,
        slack_users=MappingProxyType(slack_users),
    )


def _read_version(check: Checker, entry: Entry) -> None:
    text = check.text(entry.value, "version")
    if text is not None and text.strip() != str(SUPPORTED_VERSION):
        check.add(
            entry.value.line,
            "version",
            f"unsupported policy version {text!r} (this broker reads version {SUPPORTED_VERSION})",
        )


def _read_groups(check: Checker, entry: Entry | None) -> dict[str, frozenset[str]]:
    groups: dict[str, frozenset[str]] = {}
    if entry is None:
        return groups
    for name, member_entry in check.mapping(entry.value, "groups", None, line=entry.key_line):
        path = join("groups", name)
        _check_label(check, member_entry.key_line, path, name)
        groups[name] = frozenset(_read_labels(check, member_entry, path))
    return groups


_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,30}")


def _read_slack_users(check: Checker, entry: Entry | None) -> dict[str, str]:
    """``slack_users``: Slack user id (``U0123ABCD``) -> the dbaccess identity it acts as."""
    users: dict[str, str] = {}
    if entry is None:
        return users
    for user_id, identity_entry in check.mapping(
        entry.value, "slack_users", None, line=entry.key_line
    ):
        path = join("slack_users", user_id)
        if not _SLACK_USER_ID.fullmatch(user_id):
            check.add(identity_entry.key_line, path, f"{user_id!r} is not a Slack user id")
            continue
        identity = check.text(identity_entry.value, path)
        if identity is not None and _check_label(check, identity_entry.key_line, path, identity):
            users[user_id] = identity
    return users


def _read_target(check: Checker, name: str, entry: Entry, base: Path) -> TargetPolicy | None:
    path = join("targets", name)
    _check_name(check, entry.key_line, path, name, "target")
    reader = check.mapping(entry.value, path, _TARGET_KEYS, line=entry.key_line)
    database = _value(check, reader, "database", _pg_name, required=True)
    description = _value(check, reader, "description", str)
    issuer = _value(check, reader, "issuer", _enum(Issuer, "issuer"))
    given = [key for key in _DSN_KEYS if key in reader]
    # An issuer the loader could not read gets no issuer-specific complaints on top.
    kind = issuer or (None if "issuer" in reader else Issuer.POSTGRES)
    if not reader.broken and kind is not None:
        _check_issuer_keys(check, entry.key_line, path, kind, given, reader)
    admin_dsn = _value(check, reader, "admin_dsn", _dsn)
    admin_dsn_env = _value(check, reader, "admin_dsn_env", _env_var)
    admin_dsn_file = _value(check, reader, "admin_dsn_file", _path_under(base))
    sslmode = _value(check, reader, "sslmode", _enum(SslMode, "sslmode"))
    sslrootcert = _value(check, reader, "sslrootcert", _path_under(base))
    host = _value(check, reader, "host", _host)
    port = _value(check, reader, "port", _port)
    # A block under the wrong issuer is reported once, by _check_issuer_keys, and not read.
    vault = (
        _read_vault(check, reader.optional("vault"), join(path, "vault"), base)
        if kind is Issuer.VAULT
        else None
    )
    rds_iam = (
        _read_rds_iam(
            check, reader.optional("rds_iam"), join(path, "rds_iam"), base, with_dsn=bool(given)
        )
        if kind is Issuer.RDS_IAM
        else None
    )
    grants_refused = _grants_refused(kind, with_dsn=bool(given))
    target_guardrails = _read_guardrails(
        check, reader.optional("guardrails"), join(path, "guardrails")
    )
    target_limits = _read_limits(check, reader.optional("limits"), join(path, "limits"))
    scopes: dict[str, ScopePolicy] = {}
    scopes_entry = reader.required("scopes")
    if scopes_entry is not None:
        scopes_path = join(path, "scopes")
        scopes_reader = check.mapping(
            scopes_entry.value, scopes_path, None, line=scopes_entry.key_line
        )
        for scope_name, scope_entry in scopes_reader:
            scope = _read_scope(
                check,
                scope_name,
                scope_entry,
                join(scopes_path, scope_name),
                grants_refused=grants_refused,
                guardrails=target_guardrails,
                limits=target_limits,
            )
            if scope is not None:
                scopes[scope_name] = scope
        if not scopes_reader.node.entries and not scopes_reader.broken:
            check.add(scopes_entry.key_line, scopes_path, "a target needs at least one scope")
    masking = _read_masking(
        check, reader.optional("masking"), join(path, "masking"), base, frozenset(scopes)
    )
    recording_failure = _value(
        check, reader, "recording_failure", _enum(RecordingFailure, "recording_failure")
    )
    if database is None:
        return None
    return TargetPolicy(
        name=name,
        database=database,
        description=description,
        issuer=issuer or Issuer.POSTGRES,
        admin_dsn=admin_dsn,
        admin_dsn_env=admin_dsn_env,
        admin_dsn_file=admin_dsn_file,
        sslmode=sslmode,
        sslrootcert=sslrootcert,
        scopes=MappingProxyType(scopes),
        host=host,
        port=port,
        vault=vault,
        rds_iam=rds_iam,
        masking=masking,
        recording_failure=recording_failure or RecordingFailure.CLOSE,
    )


def _check_issuer_keys(
    check: Checker, line: int, path: str, kind: Issuer, dsn_keys: list[str], reader: MapReader
) -> None:
    """Which admin DSN, host and issuer blocks a target needs, given its issuer."""
    found = f" (found {' and '.join(dsn_keys)})" if dsn_keys else ""
    if kind is Issuer.POSTGRES:
        if len(dsn_keys) != 1:
            check.add(line, path, f"give exactly one of {', '.join(_DSN_KEYS)}{found}")
    elif len(dsn_keys) > 1:
        check.add(line, path, f"give at most one of {', '.join(_DSN_KEYS)}{found}")
    elif not dsn_keys and "host" not in reader:
        check.add(
            line,
            join(path, "host"),
            f"{'an' if kind is Issuer.RDS_IAM else 'a'} {kind.value} target without an "
            "admin DSN needs the host (and port) "
            "the gateway connects to",
        )
    for block, owner in (("vault", Issuer.VAULT), ("rds_iam", Issuer.RDS_IAM)):
        entry = reader.optional(block)
        if entry is not None and kind is not owner:
            check.add(
                entry.key_line, join(path, block), f"only for targets with issuer: {owner.value}"
            )
        elif entry is None and kind is owner:
            check.add(line, join(path, block), f"required key is missing (issuer: {owner.value})")
    if kind is Issuer.RDS_IAM:
        mode = reader.optional("sslmode")
        if (
            mode is not None
            and isinstance(mode.value, Scalar)
            and mode.value.text not in (SslMode.VERIFY_FULL, SslMode.VERIFY_CA)
        ):
            check.add(
                mode.value.line,
                join(path, "sslmode"),
                "an rds-iam target needs verify-full or verify-ca: the IAM token is "
                "sent as a password, and only to a server whose certificate was checked",
            )
        rootcert = reader.optional("sslrootcert")
        if rootcert is not None:
            check.add(
                rootcert.key_line,
                join(path, "sslrootcert"),
                "an rds-iam target names its CA in rds_iam.ca_bundle",
            )


def _grants_refused(kind: Issuer | None, *, with_dsn: bool) -> str | None:
    """Why scopes of this kind of target list no grants (None: they must)."""
    if kind is Issuer.VAULT:
        return (
            "the Vault role decides what a vault session may do, so scopes list no grants "
            "(write vault.role as 'name-{scope}' for a Vault role per scope)"
        )
    if kind is Issuer.RDS_IAM and not with_dsn:
        return (
            "without an admin DSN sessions log in as an existing IAM user and get its "
            "privileges, so scopes list no grants (give an admin DSN for per-session roles)"
        )
    return None


_VAULT_KEYS = ("address", "mount", "role", "auth", "ca_cert", "namespace")
# Secrets never sit in the policy: each inline key names where to keep the secret instead.
_INLINE_SECRETS = {
    "token": "token_file or token_env",
    "secret_id": "secret_id_file or secret_id_env",
    "jwt": "jwt_file",
    "password": "token_file, secret_id_file or jwt_file",
}
_AUTH_METHOD_KEYS = {
    VaultAuthMethod.TOKEN: ("token_file", "token_env"),
    VaultAuthMethod.APPROLE: ("role_id", "secret_id_file", "secret_id_env", "approle_mount"),
    VaultAuthMethod.JWT: ("jwt_file", "jwt_role", "jwt_mount"),
}
_VAULT_AUTH_KEYS = (
    "method",
    *(key for keys in _AUTH_METHOD_KEYS.values() for key in keys),
    *_INLINE_SECRETS,
)
_RDS_IAM_KEYS = ("region", "db_user", "db_user_template", "endpoint_url", "ca_bundle")
_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-[0-9]+")
_MOUNT = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_VAULT_ROLE = re.compile(r"[A-Za-z0-9_.-]*(\{scope\}[A-Za-z0-9_.-]*)*")


def _read_vault(check: Checker, entry: Entry | None, path: str, base: Path) -> VaultSettings | None:
    if entry is None:
        return None
    reader = check.mapping(entry.value, path, _VAULT_KEYS, line=entry.key_line)
    address = _value(check, reader, "address", _http_url, required=True)
    role = _value(check, reader, "role", _vault_role, required=True)
    mount = _value(check, reader, "mount", _mount)
    ca_cert = _value(check, reader, "ca_cert", _path_under(base))
    namespace = _value(check, reader, "namespace", _mount)
    auth = _read_vault_auth(check, reader.required("auth"), join(path, "auth"), base)
    if address is None or role is None or auth is None:
        return None
    return VaultSettings(
        address=address,
        role=role,
        auth=auth,
        mount=mount or "database",
        ca_cert=ca_cert,
        namespace=namespace,
    )


def _read_vault_auth(
    check: Checker, entry: Entry | None, path: str, base: Path
) -> VaultAuth | None:
    if entry is None:
        return None
    reader = check.mapping(entry.value, path, _VAULT_AUTH_KEYS, line=entry.key_line)
    for key, instead in _INLINE_SECRETS.items():
        inline = reader.optional(key)
        if inline is not None:
            check.add(
                inline.key_line,
                join(path, key),
                f"secrets are not written into the policy: use {instead}",
            )
    method = _value(check, reader, "method", _enum(VaultAuthMethod, "auth method"), required=True)
    if method is None:
        return None
    for other, keys in _AUTH_METHOD_KEYS.items():
        for key in keys:
            stray = reader.optional(key)
            if other is not method and stray is not None:
                check.add(
                    stray.key_line,
                    join(path, key),
                    f"{key} is for method {other.value}, not {method.value}",
                )
    auth = VaultAuth(
        method=method,
        token_file=_value(check, reader, "token_file", _path_under(base)),
        token_env=_value(check, reader, "token_env", _env_var),
        role_id=_value(check, reader, "role_id", str),
        secret_id_file=_value(check, reader, "secret_id_file", _path_under(base)),
        secret_id_env=_value(check, reader, "secret_id_env", _env_var),
        approle_mount=_value(check, reader, "approle_mount", _mount) or "approle",
        jwt_file=_value(check, reader, "jwt_file", _path_under(base)),
        jwt_role=_value(check, reader, "jwt_role", str),
        jwt_mount=_value(check, reader, "jwt_mount", _mount) or "jwt",
    )
    if reader.broken:
        return None
    if method is VaultAuthMethod.TOKEN:
        ok = _one_of(check, reader, path, ("token_file", "token_env"))
    elif method is VaultAuthMethod.APPROLE:
        ok = reader.required("role_id") is not None
        ok = _one_of(check, reader, path, ("secret_id_file", "secret_id_env")) and ok
    else:
        ok = reader.required("jwt_file") is not None
        ok = reader.required("jwt_role") is not None and ok
    return auth if ok else None


def _one_of(check: Checker, reader: MapReader, path: str, keys: tuple[str, str]) -> bool:
    given = [key for key in keys if key in reader]
    if len(given) == 1:
        return True
    found = f" (found {' and '.join(given)})" if given else ""
    check.add(reader.line, path, f"give exactly one of {', '.join(keys)}{found}")
    return False


def _read_rds_iam(
    check: Checker, entry: Entry | None, path: str, base: Path, *, with_dsn: bool
) -> RdsIamSettings | None:
    if entry is None:
        return None
    reader = check.mapping(entry.value, path, _RDS_IAM_KEYS, line=entry.key_line)
    region = _value(check, reader, "region", _region, required=True)
    ca_bundle = _value(check, reader, "ca_bundle", _path_under(base), required=True)
    endpoint_url = _value(check, reader, "endpoint_url", _http_url)
    db_user = _value(check, reader, "db_user", _pg_name)
    template = _value(check, reader, "db_user_template", _user_template)
    users = [key for key in ("db_user", "db_user_template") if key in reader]
    if with_dsn:
        for key in users:
            stray = reader.optional(key)
            assert stray is not None
            check.add(
                stray.key_line,
                join(path, key),
                f"with an admin DSN every session gets a role of its own in rds_iam; remove {key}",
            )
    elif not reader.broken and len(users) != 1:
        found = f" (found {' and '.join(users)})" if users else ""
        check.add(
            reader.line,
            path,
            f"without an admin DSN give exactly one of db_user, db_user_template{found}",
        )
    if region is None or ca_bundle is None:
        return None
    return RdsIamSettings(
        region=region,
        ca_bundle=ca_bundle,
        db_user=db_user,
        db_user_template=template,
        endpoint_url=endpoint_url,
    )


def _host(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value) or _CONTROL.search(value) or "/" in value:
        raise ValueError(f"{text!r} is not a host name or address")
    return value


def _port(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text.strip()) or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port number (1 to 65535)")
    return int(text)


def _http_url(text: str) -> str:
    from urllib.parse import urlsplit

    value = text.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{text!r} is not an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("the URL holds a user or password: keep secrets out of the policy")
    return value.rstrip("/")


def _mount(text: str) -> str:
    value = text.strip().strip("/")
    if not _MOUNT.fullmatch(value):
        raise ValueError(f"{text!r} is not a Vault path (letters, digits, '_', '-', '.', '/')")
    return value


def _vault_role(text: str) -> str:
    if not text or not _VAULT_ROLE.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a Vault role name (letters, digits, '_', '-', '.'; "
            "{scope} stands for the scope's name)"
        )
    return text


def _user_template(text: str) -> str:
    import string

    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError:
        raise ValueError(f"{text!r} is not a template (unbalanced braces)") from None
    if any(name != "scope" for name in fields):
        raise ValueError(f"{text!r}: only {{scope}} may be filled into a user name template")
    if not fields:
        raise ValueError(f"{text!r} has no {{scope}} in it: use db_user for a single user")
    return text


def _region(text: str) -> str:
    if not _REGION.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not an AWS region (like eu-central-1)")
    return text.strip()


def _read_scope(
    check: Checker,
    name: str,
    entry: Entry,
    path: str,
    *,
    grants_refused: str | None = None,
    guardrails: GuardrailSettings = NO_GUARDRAIL_SETTINGS,
    limits: LimitSettings = NO_LIMIT_SETTINGS,
) -> ScopePolicy | None:
    """One scope; ``grants_refused`` says why the target's issuer takes no grants (if so);
    ``guardrails`` and ``limits`` are the target's, which the scope's own sections
    override key by key."""
    _check_name(check, entry.key_line, path, name, "scope")
    reader = check.mapping(entry.value, path, _SCOPE_KEYS, line=entry.key_line)
    grants: tuple[str, ...] | None
    if grants_refused is None:
        grants = _read_grants(check, reader.required("grants"), join(path, "grants"))
    else:
        grants = ()
        refused = reader.optional("grants")
        if refused is not None:
            check.add(refused.key_line, join(path, "grants"), grants_refused)
    max_ttl = _value(check, reader, "max_ttl", _ttl, required=True)
    default_ttl = _value(check, reader, "default_ttl", _ttl)
    default_entry = reader.optional("default_ttl")
    if max_ttl is not None and default_ttl is not None and default_ttl > max_ttl:
        assert default_entry is not None
        check.add(
            default_entry.value.line,
            join(path, "default_ttl"),
            f"{format_duration(default_ttl)} is longer than max_ttl ({format_duration(max_ttl)})",
        )
    allow_groups: frozenset[str] = frozenset()
    allow_identities: frozenset[str] = frozenset()
    allow_entry = reader.required("allow")
    if allow_entry is not None:
        allow_path = join(path, "allow")
        allow = check.mapping(allow_entry.value, allow_path, _ALLOW_KEYS, line=allow_entry.key_line)
        if not allow.broken and not any(key in allow for key in _ALLOW_KEYS):
            check.add(
                allow_entry.key_line,
                allow_path,
                "give groups, identities or both (empty lists mean nobody)",
            )
        groups_entry = allow.optional("groups")
        if groups_entry is not None:
            allow_groups = frozenset(_read_labels(check, groups_entry, join(allow_path, "groups")))
        identities_entry = allow.optional("identities")
        if identities_entry is not None:
            identities_path = join(allow_path, "identities")
            allow_identities = frozenset(_read_labels(check, identities_entry, identities_path))
    approval = _read_approval(check, reader.optional("approval"), join(path, "approval"))
    reason_required = _value(check, reader, "reason_required", _bool)
    break_glass = _value(check, reader, "break_glass", _bool)
    if break_glass and not approval.required:
        glass_entry = reader.optional("break_glass")
        assert glass_entry is not None
        check.add(
            glass_entry.value.line,
            join(path, "break_glass"),
            "break-glass skips an approval, but this scope requires none",
        )
    scope_guardrails = _read_guardrails(
        check, reader.optional("guardrails"), join(path, "guardrails")
    ).over(guardrails)
    scope_limits = _read_limits(check, reader.optional("limits"), join(path, "limits")).over(limits)
    effective = None if scope_limits.empty else scope_limits.apply(default_limits(name))
    agents = _read_agents(
        check,
        reader.optional("agents"),
        join(path, "agents"),
        effective if effective is not None else default_limits(name),
    )
    if grants is None or max_ttl is None:
        return None
    return ScopePolicy(
        name=name,
        grants=grants,
        max_ttl=max_ttl,
        default_ttl=default_ttl if default_ttl is not None else min(_DEFAULT_TTL_CAP, max_ttl),
        allow_groups=allow_groups,
        allow_identities=allow_identities,
        approval=approval,
        reason_required=bool(reason_required),
        break_glass=bool(break_glass),
        guardrails=scope_guardrails,
        limits=effective,
        agents=agents,
    )


def _read_agents(
    check: Checker, entry: Entry | None, path: str, limits: SessionLimits
) -> AgentPolicy:
    """A scope's ``agents`` section (``server.policy.agents``); ``limits`` are the scope's."""
    if entry is None:
        return DEFAULT_AGENT_POLICY
    reader = check.mapping(entry.value, path, _AGENT_KEYS, line=entry.key_line)
    settings = _read_limits(check, reader.optional("limits"), join(path, "limits"))
    return AgentPolicy(
        allow=_value(check, reader, "allow", _bool),
        guardrails=_read_guardrails(check, reader.optional("guardrails"), join(path, "guardrails")),
        limits=None if settings.empty else settings.apply(agent_default_limits(limits)),
    )


def _read_limits(check: Checker, entry: Entry | None, path: str) -> LimitSettings:
    """A ``limits`` section; keys it leaves out stay None (inherited or the scope's default)."""
    if entry is None:
        return NO_LIMIT_SETTINGS
    reader = check.mapping(entry.value, path, LIMIT_KEYS, line=entry.key_line)
    return LimitSettings(
        statement_timeout=_value(check, reader, "statement_timeout", parse_timeout),
        lock_timeout=_value(check, reader, "lock_timeout", parse_timeout),
        idle_in_transaction_session_timeout=_value(
            check, reader, "idle_in_transaction_session_timeout", parse_timeout
        ),
        idle_session_timeout=_value(check, reader, "idle_session_timeout", parse_timeout),
        temp_file_limit=_value(check, reader, "temp_file_limit", parse_temp_file_limit),
        max_result_rows=_value(check, reader, "max_result_rows", parse_result_rows),
        max_result_bytes=_value(check, reader, "max_result_bytes", parse_result_bytes),
        max_connections_per_session=_value(
            check, reader, "max_connections_per_session", parse_connections
        ),
        max_connections_per_identity=_value(
            check, reader, "max_connections_per_identity", parse_shared_connections
        ),
        max_connections_per_target=_value(
            check, reader, "max_connections_per_target", parse_shared_connections
        ),
        advisory_locks=_value(check, reader, "advisory_locks", _bool),
    )


def _read_guardrails(check: Checker, entry: Entry | None, path: str) -> GuardrailSettings:
    """A ``guardrails`` section; keys it leaves out stay None (inherited or the preset's)."""
    if entry is None:
        return NO_GUARDRAIL_SETTINGS
    reader = check.mapping(entry.value, path, _GUARDRAIL_KEYS, line=entry.key_line)

    def classes(key: str) -> frozenset[str] | None:
        found = reader.optional(key)
        if found is None:
            return None
        return frozenset(
            _read_choices(check, found, join(path, key), _choice(GUARDRAIL_CLASSES, "class"))
        )

    def functions(key: str) -> frozenset[str] | None:
        found = reader.optional(key)
        if found is None:
            return None
        return frozenset(_read_choices(check, found, join(path, key), _function))

    return GuardrailSettings(
        preset=_value(check, reader, "preset", _choice(GUARDRAIL_PRESETS, "preset")),
        production=_value(check, reader, "production", _bool),
        review=classes("review"),
        block=classes("block"),
        functions_allow=functions("functions_allow"),
        functions_deny=functions("functions_deny"),
        require_where=_value(check, reader, "require_where", _bool),
        allow_listen_notify=_value(check, reader, "allow_listen_notify", _bool),
        allow_code=_value(check, reader, "allow_code", _bool),
        unknown=_value(check, reader, "unknown", _choice(("block", "review"), "unknown")),
        max_rows_by_explain=_value(check, reader, "max_rows_by_explain", _row_budget),
    )


def _choice(options: tuple[str, ...], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"unknown {what} {text!r}: use one of {', '.join(options)}")
        return value

    return parse


def _function(text: str) -> str:
    value = text.strip()
    if not _FUNCTION.fullmatch(value):
        raise ValueError(
            f"{text!r} is not a function name: write [schema.]name in lower case, "
            "optionally ending in * for a prefix"
        )
    return value


def _read_choices(
    check: Checker, entry: Entry, path: str, parse: Callable[[str], str]
) -> list[str]:
    values: list[str] = []
    for index, item in enumerate(check.items(entry.value, path)):
        value = check.convert(item, f"{path}[{index}]", parse)
        if value is not None:
            values.append(value)
    return values


def _read_approval(check: Checker, entry: Entry | None, path: str) -> ApprovalPolicy:
    """An ``approval`` block; writing one means approval is required unless it says otherwise."""
    if entry is None:
        return NO_APPROVAL
    reader = check.mapping(entry.value, path, _APPROVAL_KEYS, line=entry.key_line)
    required = _value(check, reader, "required", _bool)
    groups: frozenset[str] = frozenset()
    identities: frozenset[str] = frozenset()
    approvers_entry = reader.optional("approvers")
    if approvers_entry is not None:
        approvers_path = join(path, "approvers")
        approvers = check.mapping(
            approvers_entry.value, approvers_path, _ALLOW_KEYS, line=approvers_entry.key_line
        )
        groups_entry = approvers.optional("groups")
        if groups_entry is not None:
            groups = frozenset(_read_labels(check, groups_entry, join(approvers_path, "groups")))
        identities_entry = approvers.optional("identities")
        if identities_entry is not None:
            identities = frozenset(
                _read_labels(check, identities_entry, join(approvers_path, "identities"))
            )
    min_approvals = _value(check, reader, "min_approvals", _count)
    approval_ttl = _value(check, reader, "approval_ttl", _ttl)
    pending_ttl = _value(check, reader, "pending_ttl", _ttl)
    single_use = _value(check, reader, "single_use", _bool)
    policy = ApprovalPolicy(
        required=required is not False,
        approver_groups=groups,
        approver_identities=identities,
        min_approvals=min_approvals or 1,
        approval_ttl=approval_ttl or NO_APPROVAL.approval_ttl,
        pending_ttl=pending_ttl or NO_APPROVAL.pending_ttl,
        single_use=single_use is not False,
    )
    if not policy.required or reader.broken or groups:
        return policy
    if not identities:
        where = approvers_entry.key_line if approvers_entry is not None else entry.key_line
        check.add(
            where,
            join(path, "approvers"),
            "approval is required, so name who may approve (groups, identities or both)",
        )
    elif len(identities) < policy.min_approvals:
        count_entry = reader.optional("min_approvals")
        check.add(
            count_entry.value.line if count_entry is not None else entry.key_line,
            join(path, "min_approvals"),
            f"{policy.min_approvals} approvals can never be reached: "
            f"only {len(identities)} approvers are listed",
        )
    return policy


def _read_grants(check: Checker, entry: Entry | None, path: str) -> tuple[str, ...] | None:
    if entry is None:
        return None
    roles: list[str] = []
    items = check.items(entry.value, path)
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        role = check.convert(item, item_path, _role)
        if role is None:
            continue
        if role in roles:
            check.add(item.line, item_path, f"role {role!r} is listed twice")
            continue
        roles.append(role)
    if not items and (isinstance(entry.value, Seq) or is_null(entry.value)):
        check.add(entry.value.line, path, "list at least one database role to grant")
    return tuple(roles)


def _read_labels(check: Checker, entry: Entry, path: str) -> list[str]:
    labels: list[str] = []
    for index, item in enumerate(check.items(entry.value, path)):
        item_path = f"{path}[{index}]"
        label = check.text(item, item_path)
        if label is not None and _check_label(check, item.line, item_path, label):
            labels.append(label)
    return labels


T = TypeVar("T")


def _value(
    check: Checker,
    reader: MapReader,
    key: str,
    parse: Callable[[str], T],
    *,
    required: bool = False,
) -> T | None:
    entry = reader.required(key) if required else reader.optional(key)
    if entry is None:
        return None
    return check.convert(entry.value, join(reader.path, key), parse)


def _check_name(check: Checker, line: int, path: str, name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        check.add(
            line,
            path,
            f"{name!r} is not a valid {what} name "
            "(letters, digits, '-' and '_', starting with a letter or digit, at most 63)",
        )


def _check_label(check: Checker, line: int, path: str, label: str) -> bool:
    """Identities and group names come from identity providers: refuse only obvious typos."""
    if label != label.strip() or not label or _CONTROL.search(label):
        check.add(line, path, f"{label!r} has leading/trailing spaces or control characters")
        return False
    return True


def _pg_name(text: str) -> str:
    if len(text.encode()) > _PG_NAME_BYTES:
        raise ValueError(f"{text!r} is longer than PostgreSQL's {_PG_NAME_BYTES}-byte name limit")
    return text


def _role(text: str) -> str:
    if not _ROLE.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a role name this broker grants "
            "(letters, digits, '_' and '$', not starting with a digit)"
        )
    return _pg_name(text)


def _bool(text: str) -> bool:
    # Only the two words: YAML 1.1's yes/no/on/off are too easy to write by accident.
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(f"{text!r} is not true or false")


def _count(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,4}", text.strip()) or int(text) < 1:
        raise ValueError(f"{text!r} is not a whole number from 1 to 9999")
    return int(text)


def _row_budget(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,10}", text.strip()):
        raise ValueError(f"{text!r} is not a whole number of rows (0 or more)")
    return int(text)


def _env_var(text: str) -> str:
    if not _ENV_VAR.fullmatch(text):
        raise ValueError(f"{text!r} is not an environment variable name")
    return text


def _dsn(text: str) -> str:
    try:
        conninfo_to_dict(text)
    except psycopg.Error:
        # libpq's message quotes the string, and the string may hold a password.
        raise ValueError(
            "not a valid connection string (the value is not shown: it may hold a password)"
        ) from None
    return text


def _ttl(text: str) -> timedelta:
    return parse_positive_duration(text, "a TTL")


def _enum(kind: type[E], key: str) -> Callable[[str], E]:
    def parse(text: str) -> E:
        try:
            return kind(text)
        except ValueError:
            known = ", ".join(member.value for member in kind)
            raise ValueError(f"{text!r} is not a known {key} (one of: {known})") from None

    return parse


def _path_under(base: Path) -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        return Path(os.path.abspath(base / Path(text).expanduser()))

    return parse


_WORKLOAD_KEYS = ("name", "issuer", "audience", "claims", "groups", "agent_for")
# The broker checks these itself; a pattern on them would only mislead the reader.
_RESERVED_CLAIMS = ("iss", "aud", "exp", "nbf", "iat")


def _read_workload_identities(check: Checker, entry: Entry | None) -> tuple[WorkloadIdentity, ...]:
    """``workload_identities``: a list, because the first entry a token matches wins."""
    if entry is None:
        return ()
    found: list[WorkloadIdentity] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(check.items(entry.value, "workload_identities")):
        path = f"workload_identities[{index}]"
        reader = check.mapping(item, path, _WORKLOAD_KEYS, line=item.line)
        name = _value(check, reader, "name", str, required=True)
        name_entry = reader.optional("name")
        if name is not None and name_entry is not None:
            line = name_entry.value.line
            _check_name(check, line, join(path, "name"), name, "workload identity")
            if name in first_index:
                check.add(
                    line,
                    join(path, "name"),
                    f"{name!r} is already the name of workload_identities[{first_index[name]}]",
                )
            first_index.setdefault(name, index)
        issuer = _value(check, reader, "issuer", issuer_url, required=True)
        audience = _value(check, reader, "audience", _audience, required=True)
        claims = _read_claims(check, reader.required("claims"), join(path, "claims"))
        groups_entry = reader.optional("groups")
        groups = (
            frozenset(_read_labels(check, groups_entry, join(path, "groups")))
            if groups_entry is not None
            else frozenset()
        )
        agent_for = _value(check, reader, "agent_for", _person)
        if name is not None and issuer is not None and audience is not None and claims:
            found.append(
                WorkloadIdentity(
                    name=name,
                    issuer=issuer,
                    audience=audience,
                    claims=MappingProxyType(claims),
                    groups=groups,
                    agent_for=agent_for,
                )
            )
    return tuple(found)


def _person(text: str) -> str:
    value = text.strip()
    if not value or _CONTROL.search(value) or len(value) > 200:
        raise ValueError(f"{text!r} is not an identity name")
    return value


def _audience(text: str) -> str:
    value = text.strip()
    if not value or _CONTROL.search(value):
        raise ValueError(f"{text!r} is not an audience")
    return value


def _read_claims(check: Checker, entry: Entry | None, path: str) -> dict[str, str]:
    if entry is None:
        return {}
    reader = check.mapping(entry.value, path, None, line=entry.key_line)
    claims: dict[str, str] = {}
    for claim, claim_entry in reader:
        claim_path = join(path, claim)
        if claim in _RESERVED_CLAIMS:
            check.add(
                claim_entry.key_line,
                claim_path,
                f"'{claim}' is checked by the broker itself: use issuer and audience",
            )
            continue
        pattern = check.text(claim_entry.value, claim_path)
        if pattern is not None:
            claims[claim] = pattern
    if not reader.node.entries and not reader.broken:
        # Without claims, every token the issuer ever signs for the audience would bind.
        check.add(entry.key_line, path, "list at least one claim to match")
    return claims


_MASKING_KEYS = (
    "key_file",
    "key_env",
    "rules",
    "exempt",
    "detectors",
    "database_grants",
    "trusted_functions",
    "inference",
)
_RULE_KEYS = ("column", "pattern", "method", "keep", "keep_last", "length", "scopes")
_EXEMPT_KEYS = ("groups", "scopes")
_COLUMN_PART = re.compile(r"[^.*?\[\]\s]+")
_GLOB_CHARS = re.compile(r"[*?\[]")


def _read_masking(
    check: Checker, entry: Entry | None, path: str, base: Path, scopes: frozenset[str]
) -> MaskingPolicy | None:
    """A target's ``masking`` section; ``scopes`` are the target's, which rules may name."""
    if entry is None:
        return None
    reader = check.mapping(entry.value, path, _MASKING_KEYS, line=entry.key_line)
    if "key_file" in reader and "key_env" in reader:
        check.add(entry.key_line, path, "give key_file or key_env, not both")
    key_file = _value(check, reader, "key_file", _path_under(base))
    key_env = _value(check, reader, "key_env", _env_var)
    rules: list[MaskRule] = []
    seen_columns: dict[str, int] = {}
    rules_entry = reader.optional("rules")
    if rules_entry is not None:
        rules_path = join(path, "rules")
        for index, item in enumerate(check.items(rules_entry.value, rules_path)):
            rule = _read_mask_rule(check, item, f"{rules_path}[{index}]", scopes)
            if rule is None:
                continue
            if rule.column is not None:
                if rule.column in seen_columns:
                    check.add(
                        item.line,
                        f"{rules_path}[{index}].column",
                        f"{rule.column} already has a rule (rules[{seen_columns[rule.column]}])",
                    )
                    continue
                seen_columns[rule.column] = index
            rules.append(rule)
    keyed = "key_file" in reader or "key_env" in reader
    if any(r.method is MaskMethod.HASH for r in rules) and not keyed:
        check.add(
            entry.key_line,
            path,
            "a hash rule needs a key: give key_file or key_env (at least 16 random bytes)",
        )
    exempt_groups: frozenset[str] = frozenset()
    exempt_scopes: frozenset[str] = frozenset()
    exempt_entry = reader.optional("exempt")
    if exempt_entry is not None:
        exempt_path = join(path, "exempt")
        exempt = check.mapping(
            exempt_entry.value, exempt_path, _EXEMPT_KEYS, line=exempt_entry.key_line
        )
        groups_entry = exempt.optional("groups")
        if groups_entry is not None:
            groups_path = join(exempt_path, "groups")
            exempt_groups = frozenset(_read_labels(check, groups_entry, groups_path))
        scopes_entry = exempt.optional("scopes")
        if scopes_entry is not None:
            exempt_scopes = _read_scope_names(
                check, scopes_entry, join(exempt_path, "scopes"), scopes
            )
    detectors: dict[DetectorKind, DetectorAction] = {}
    detectors_entry = reader.optional("detectors")
    if detectors_entry is not None:
        detectors_path = join(path, "detectors")
        kinds = [kind.value for kind in DetectorKind]
        detectors_reader = check.mapping(
            detectors_entry.value, detectors_path, kinds, line=detectors_entry.key_line
        )
        for kind in DetectorKind:
            action = _value(
                check, detectors_reader, kind.value, _enum(DetectorAction, "detector action")
            )
            if action is not None:
                detectors[kind] = action
    database_grants = _value(check, reader, "database_grants", _bool)
    trusted: list[str] = []
    trusted_entry = reader.optional("trusted_functions")
    if trusted_entry is not None:
        trusted = _read_choices(check, trusted_entry, join(path, "trusted_functions"), _function)
    inference = _value(
        check, reader, "inference", _choice(("block", "review", "allow"), "inference")
    )
    return MaskingPolicy(
        rules=tuple(rules),
        key_file=key_file,
        key_env=key_env,
        exempt_groups=exempt_groups,
        exempt_scopes=exempt_scopes,
        detectors=MappingProxyType(detectors),
        database_grants=bool(database_grants),
        trusted_functions=frozenset(trusted),
        inference=inference or "block",
    )


def _read_mask_rule(
    check: Checker, node: Node, path: str, scopes: frozenset[str]
) -> MaskRule | None:
    reader = check.mapping(node, path, _RULE_KEYS, line=node.line)
    if reader.broken:
        return None
    problems_before = len(check.problems)
    given = [key for key in ("column", "pattern") if key in reader]
    if len(given) != 1:
        found = f" (found {' and '.join(given)})" if given else ""
        check.add(node.line, path, f"give exactly one of column, pattern{found}")
    column = _value(check, reader, "column", _column_ref)
    pattern = _value(check, reader, "pattern", _column_glob)
    method = _value(check, reader, "method", _enum(MaskMethod, "method"), required=True)
    keep = _value(check, reader, "keep", _keep)
    keep_last = _value(check, reader, "keep_last", _keep_last)
    length = _value(check, reader, "length", _hash_length)
    rule_scopes: frozenset[str] = frozenset()
    scopes_entry = reader.optional("scopes")
    if scopes_entry is not None:
        rule_scopes = _read_scope_names(check, scopes_entry, join(path, "scopes"), scopes)
    if method is MaskMethod.PARTIAL:
        if ("keep" in reader) == ("keep_last" in reader):
            check.add(node.line, path, "partial needs exactly one of keep: domain or keep_last: N")
    else:
        for key in ("keep", "keep_last"):
            if key in reader and method is not None:
                line = reader.node.entries[key].key_line
                check.add(line, join(path, key), f"only partial keeps characters, not {method}")
    if "length" in reader and method is not None and method is not MaskMethod.HASH:
        line = reader.node.entries["length"].key_line
        check.add(line, join(path, "length"), f"only hash has a length, not {method}")
    if method is MaskMethod.CLEAR and "pattern" in reader:
        check.add(
            node.line,
            join(path, "method"),
            "clear vouches for one column: use it with column, not pattern",
        )
    if method is None or len(check.problems) != problems_before:
        return None
    return MaskRule(
        column=column,
        pattern=pattern,
        method=method,
        keep_last=keep_last,
        keep_domain=keep is not None,
        hash_length=length or 16,
        scopes=rule_scopes,
    )


def _read_scope_names(
    check: Checker, entry: Entry, path: str, scopes: frozenset[str]
) -> frozenset[str]:
    names: list[str] = []
    for index, item in enumerate(check.items(entry.value, path)):
        name = check.text(item, f"{path}[{index}]")
        if name is None:
            continue
        if name not in scopes:
            known = ", ".join(sorted(scopes)) or "none"
            check.add(item.line, f"{path}[{index}]", f"unknown scope {name!r} (scopes: {known})")
            continue
        names.append(name)
    return frozenset(names)


def _column_ref(text: str) -> str:
    if _GLOB_CHARS.search(text):
        raise ValueError(f"{text!r} is a pattern: write it as pattern: (a column-name glob)")
    parts = text.split(".")
    if len(parts) != 3 or not all(_COLUMN_PART.fullmatch(part) for part in parts):
        raise ValueError(f"{text!r} is not schema.table.column")
    return text


def _column_glob(text: str) -> str:
    if "." in text:
        raise ValueError(
            f"{text!r}: a pattern matches column names only; use column: for schema.table.column"
        )
    if not text.strip() or _CONTROL.search(text):
        raise ValueError(f"{text!r} is not a column-name pattern")
    return text


def _keep(text: str) -> str:
    if text.strip() != "domain":
        raise ValueError(f"{text!r} is not something partial keeps (keep: domain)")
    return "domain"


def _keep_last(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,2}", text.strip()) or not 1 <= int(text) <= 32:
        raise ValueError(f"{text!r} is not a number of characters from 1 to 32")
    return int(text)


def _hash_length(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,2}", text.strip()) or not 8 <= int(text) <= 64:
        raise ValueError(f"{text!r} is not a number of hex digits from 8 to 64")
    return int(text)
