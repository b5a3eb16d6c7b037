"""Session limits as the policy writes them, and as PostgreSQL and people read them.

A ``limits`` section may sit on a target (defaults for all its scopes) and on
a scope (overriding the target's key by key, as ``guardrails`` does); what
neither says comes from the scope's defaults (:func:`~server.policy.model.default_limits`).
:class:`LimitSettings` is such a section as written (None: not said here);
:meth:`LimitSettings.apply` lays it over a :class:`SessionLimits`.

Values in the file: timeouts are durations (``30s``, ``5m``, ``1h30m``; ``off``
or ``0`` turns one off, as 0 does in PostgreSQL), sizes take a unit
(``512kB``, ``64MB``, ``1GB``, ``1TB``; 1024-based, as PostgreSQL counts them;
``off`` for no limit), row and connection counts are whole numbers, and the
per-identity and per-target connection caps also take ``auto`` (a share of the
target's ``max_connections``, see :func:`connection_shares`).

:func:`database_settings` gives the PostgreSQL settings a scope's session role
carries (``ALTER ROLE … SET``, or the gateway's startup parameters), with
values in PostgreSQL's units; a limit that is off is left to the database's
own configuration and is not pinned.  :func:`describe_limits` is what
``policy check`` and ``policy explain`` print.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from common.durations import format_duration, parse_duration
from server.policy.model import SessionLimits

AUTO = "auto"
OFF = "off"

# The PostgreSQL settings that carry limits, in the order they are set and shown.
TIMEOUT_SETTINGS = (
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
)
DATABASE_LIMITS = (*TIMEOUT_SETTINGS, "temp_file_limit")
# temp_file_limit is superuser-settable only (PGC_SUSET): a session role can
# neither SET it nor pass it at login, and only an admin role that is superuser
# or holds SET on the parameter (PostgreSQL 15+) can attach it to a role.
SUPERUSER_SETTINGS = frozenset({"temp_file_limit"})

LIMIT_KEYS = (
    *DATABASE_LIMITS,
    "max_result_rows",
    "max_result_bytes",
    "max_connections_per_session",
    "max_connections_per_identity",
    "max_connections_per_target",
    "advisory_locks",
)

_SIZE = re.compile(r"([0-9]{1,16})\s*(B|kB|KB|MB|GB|TB)")
_SIZE_UNITS = {"B": 1, "kB": 1 << 10, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_MAX_COUNT = 1_000_000_000_000
_MAX_CONNECTIONS = 100_000


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    """A ``limits`` section as written: None means "not said here".

    ``max_connections_per_identity``/``_per_target`` hold :data:`AUTO` where the
    section says ``auto``, so that a scope can ask for the share again over a
    target's number.
    """

    statement_timeout: timedelta | None = None
    lock_timeout: timedelta | None = None
    idle_in_transaction_session_timeout: timedelta | None = None
    idle_session_timeout: timedelta | None = None
    temp_file_limit: int | None = None
    max_result_rows: int | str | None = None
    max_result_bytes: int | str | None = None
    max_connections_per_session: int | None = None
    max_connections_per_identity: int | str | None = None
    max_connections_per_target: int | str | None = None
    advisory_locks: bool | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, key) is None for key in self.__dataclass_fields__)

    def over(self, base: LimitSettings) -> LimitSettings:
        """These settings, with what they leave unsaid taken from ``base``."""
        return LimitSettings(
            **{
                key: getattr(self, key) if getattr(self, key) is not None else getattr(base, key)
                for key in self.__dataclass_fields__
            }
        )

    def apply(self, base: SessionLimits) -> SessionLimits:
        """``base`` with every key said here replaced."""
        changes: dict[str, Any] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if value is None:
                continue
            # ``off`` for a result cap and ``auto`` for a connection cap are None in SessionLimits.
            changes[key] = None if value in (AUTO, OFF) else value
        return replace(base, **changes)


NO_LIMIT_SETTINGS = LimitSettings()


# -- reading values -------------------------------------------------------------


def parse_timeout(text: str) -> timedelta:
    """A duration, or ``off``/``0`` for no timeout."""
    value = text.strip()
    if value.lower() == OFF or value == "0":
        return timedelta(0)
    if value.startswith("-"):
        raise ValueError(f"{text!r} is negative: give a duration such as 30s or 5m, or off")
    parsed = parse_duration(value)
    if parsed.days >= 24:
        # PostgreSQL keeps timeouts in milliseconds in an int: at most about 24.8 days.
        raise ValueError(f"{text!r} is longer than PostgreSQL's longest timeout (24 days)")
    return parsed


def parse_size(text: str) -> int:
    """A size in bytes: ``<number><unit>`` with B, kB, MB, GB or TB (1024-based), or ``0``."""
    value = text.strip()
    if value == "0":
        return 0
    if value.startswith("-"):
        raise ValueError(f"{text!r} is negative: give a size such as 64MB or 1GB, or off")
    match = _SIZE.fullmatch(value)
    if match is None:
        if value.isdigit():
            raise ValueError(f"{text!r} has no unit: write e.g. {value}MB or {value}kB")
        raise ValueError(f"{text!r} is not a size (use e.g. 512kB, 64MB, 1GB, or off)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_temp_file_limit(text: str) -> int:
    """temp_file_limit in bytes; ``off`` is -1 (no limit), as in PostgreSQL."""
    if text.strip().lower() == OFF:
        return -1
    size = parse_size(text)
    if size % 1024:
        raise ValueError(f"{text!r} is not a whole number of kB, which temp_file_limit counts in")
    if size // 1024 > 2**31 - 1:
        raise ValueError(f"{text!r} is more than PostgreSQL's temp_file_limit can hold")
    return size


def parse_result_bytes(text: str) -> int | str:
    if text.strip().lower() == OFF:
        return OFF
    size = parse_size(text)
    if size < 1:
        raise ValueError(f"{text!r} would refuse every result: give a size, or off")
    return size


def parse_result_rows(text: str) -> int | str:
    value = text.strip()
    if value.lower() == OFF:
        return OFF
    return _whole(value, text, 1, _MAX_COUNT, "rows")


def parse_connections(text: str) -> int:
    return _whole(text.strip(), text, 1, _MAX_CONNECTIONS, "connections")


def parse_shared_connections(text: str) -> int | str:
    value = text.strip()
    if value.lower() == AUTO:
        return AUTO
    return _whole(value, text, 1, _MAX_CONNECTIONS, "connections (or auto)")


def _whole(value: str, text: str, low: int, high: int, what: str) -> int:
    if value.startswith("-"):
        raise ValueError(f"{text!r} is negative: give a number of {what}")
    if not value.isdigit() or not low <= int(value) <= high:
        raise ValueError(f"{text!r} is not a whole number of {what} from {low} to {high}")
    return int(value)


# -- PostgreSQL's view ----------------------------------------------------------


def pg_duration(value: timedelta) -> str:
    """A timeout in the largest PostgreSQL unit that keeps it exact (``5min``, ``90s``)."""
    ms = value // timedelta(milliseconds=1)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms" if ms else "0"


def pg_size(value: int) -> str:
    """A temp_file_limit in the largest PostgreSQL unit that keeps it exact (``1GB``)."""
    if value < 0:
        return "-1"
    kb = value // 1024
    for unit, size in (("TB", 1 << 30), ("GB", 1 << 20), ("MB", 1 << 10)):
        if kb and kb % size == 0:
            return f"{kb // size}{unit}"
    return f"{kb}kB"


def database_settings(limits: SessionLimits) -> dict[str, str]:
    """The PostgreSQL settings a session role of these limits carries, in PostgreSQL's units.

    A limit that is off is not in it: the database's own configuration applies.
    """
    out: dict[str, str] = {}
    for key in TIMEOUT_SETTINGS:
        value: timedelta = getattr(limits, key)
        if value > timedelta(0):
            out[key] = pg_duration(value)
    if limits.temp_file_limit >= 0:
        out["temp_file_limit"] = pg_size(limits.temp_file_limit)
    return out


# -- connection shares ------------------------------------------------------------

# Connections the broker keeps for itself on a target (its issuers' admin
# connections, the gateway's catalog reads, the reaper): never handed to sessions.
BROKER_RESERVE = 5


@dataclass(frozen=True)
class ConnectionShares:
    """The per-target and per-identity caps ``auto`` stands for on one target."""

    usable: int
    per_target: int
    per_identity: int


def connection_shares(
    max_connections: int, superuser_reserved: int = 3, reserved: int = 0
) -> ConnectionShares:
    """What ``auto`` means for a target with these settings.

    ``usable`` is what ordinary roles can have (``max_connections`` less the
    slots reserved for superusers and, from PostgreSQL 16, for
    ``pg_use_reserved_connections``) less :data:`BROKER_RESERVE`.  The broker's
    sessions together take at most half of it, so applications keep the other
    half; one identity at most a quarter of that, so at its cap three others
    still fit and nobody takes the last slots.
    """
    usable = max(1, max_connections - superuser_reserved - reserved - BROKER_RESERVE)
    per_target = max(1, usable // 2)
    return ConnectionShares(usable, per_target, max(1, per_target // 4))


# -- people's view ----------------------------------------------------------------


def describe_limits(limits: SessionLimits) -> list[tuple[str, str]]:
    """(key, value as the policy would write it) for every limit, in :data:`LIMIT_KEYS` order."""
    out: list[tuple[str, str]] = []
    for key in TIMEOUT_SETTINGS:
        value: timedelta = getattr(limits, key)
        out.append((key, format_duration(value) if value > timedelta(0) else OFF))
    out.append(("temp_file_limit", _size_text(limits.temp_file_limit)))
    rows = limits.max_result_rows
    out.append(("max_result_rows", OFF if rows is None else str(rows)))
    size = limits.max_result_bytes
    out.append(("max_result_bytes", OFF if size is None else _size_text(size)))
    out.append(("max_connections_per_session", str(limits.max_connections_per_session)))
    for key in ("max_connections_per_identity", "max_connections_per_target"):
        cap = getattr(limits, key)
        out.append((key, AUTO if cap is None else str(cap)))
    out.append(("advisory_locks", "allowed" if limits.advisory_locks else "refused"))
    return out


def _size_text(value: int) -> str:
    if value < 0:
        return OFF
    if value == 0:
        return "0"
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}B"
