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

from server.durations import format_duration, parse_duration
from server.policy.model import Issuer, Policy, ScopePolicy, SslMode, TargetPolicy
from server.yamlsrc import (
    Checker,
    Entry,
    MapReader,
    Node,
    Problem,
    Scalar,
    Seq,
    SourceError,
    join,
    parse_yaml,
)

SUPPORTED_VERSION = 1

_TOP_KEYS = ("version", "groups", "targets")
_DSN_KEYS = ("admin_dsn", "admin_dsn_env", "admin_dsn_file")
_TARGET_KEYS = (
    "description",
    "database",
    "issuer",
    *_DSN_KEYS,
    "sslmode",
    "sslrootcert",
    "scopes",
)
_SCOPE_KEYS = ("grants", "max_ttl", "default_ttl", "allow")
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
    if check.problems:
        raise PolicyError(check.problems)
    return Policy(targets=MappingProxyType(targets), groups=MappingProxyType(groups), source=source)


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


def _read_target(check: Checker, name: str, entry: Entry, base: Path) -> TargetPolicy | None:
    path = join("targets", name)
    _check_name(check, entry.key_line, path, name, "target")
    reader = check.mapping(entry.value, path, _TARGET_KEYS, line=entry.key_line)
    database = _value(check, reader, "database", _pg_name, required=True)
    description = _value(check, reader, "description", str)
    issuer = _value(check, reader, "issuer", _enum(Issuer, "issuer"))
    given = [key for key in _DSN_KEYS if key in reader]
    if len(given) != 1 and not reader.broken:
        found = f" (found {' and '.join(given)})" if given else ""
        check.add(entry.key_line, path, f"give exactly one of {', '.join(_DSN_KEYS)}{found}")
    admin_dsn = _value(check, reader, "admin_dsn", _dsn)
    admin_dsn_env = _value(check, reader, "admin_dsn_env", _env_var)
    admin_dsn_file = _value(check, reader, "admin_dsn_file", _path_under(base))
    sslmode = _value(check, reader, "sslmode", _enum(SslMode, "sslmode"))
    sslrootcert = _value(check, reader, "sslrootcert", _path_under(base))
    scopes: dict[str, ScopePolicy] = {}
    scopes_entry = reader.required("scopes")
    if scopes_entry is not None:
        scopes_path = join(path, "scopes")
        scopes_reader = check.mapping(
            scopes_entry.value, scopes_path, None, line=scopes_entry.key_line
        )
        for scope_name, scope_entry in scopes_reader:
            scope = _read_scope(check, scope_name, scope_entry, join(scopes_path, scope_name))
            if scope is not None:
                scopes[scope_name] = scope
        if not scopes_reader.node.entries and not scopes_reader.broken:
            check.add(scopes_entry.key_line, scopes_path, "a target needs at least one scope")
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
    )


def _read_scope(check: Checker, name: str, entry: Entry, path: str) -> ScopePolicy | None:
    _check_name(check, entry.key_line, path, name, "scope")
    reader = check.mapping(entry.value, path, _SCOPE_KEYS, line=entry.key_line)
    grants = _read_grants(check, reader.required("grants"), join(path, "grants"))
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
    if grants is None or max_ttl is None:
        return None
    return ScopePolicy(
        name=name,
        grants=grants,
        max_ttl=max_ttl,
        default_ttl=default_ttl if default_ttl is not None else min(_DEFAULT_TTL_CAP, max_ttl),
        allow_groups=allow_groups,
        allow_identities=allow_identities,
    )


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
    if not items and (isinstance(entry.value, Seq) or _is_null(entry.value)):
        check.add(entry.value.line, path, "list at least one database role to grant")
    return tuple(roles)


def _is_null(node: Node) -> bool:
    return isinstance(node, Scalar) and node.null


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
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError(f"{text!r} is too short: a TTL must be longer than zero")
    return value


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
