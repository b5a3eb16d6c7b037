"""A target's admin connection string, fetched when it is needed, not when the policy loads.

A policy names where the DSN lives (inline, an environment variable, or a file
next to the policy).  Reading the variable or file at call time lets operators
rotate the admin password without reloading the policy, and keeps the secret out
of the long-lived :class:`~server.policy.model.Policy` object.

Nothing raised here quotes the DSN: libpq's own parse errors echo the string,
which may hold a password, so they are replaced by messages naming only where
the DSN came from.  ``sslmode``/``sslrootcert`` from the policy are merged into
the returned DSN and win over the same settings inside it, because the policy is
where the operator states the transport requirement for the target.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from server.errors import Unavailable
from server.policy.model import TargetPolicy


def resolve_admin_dsn(target: TargetPolicy, *, environ: Mapping[str, str] | None = None) -> str:
    """Return the admin DSN of ``target`` (from ``environ``, default ``os.environ``, or its file).

    Raises :class:`~server.errors.Unavailable` if the variable is unset, the file is
    missing or unreadable, or what they hold is not a connection string.
    """
    env = os.environ if environ is None else environ
    where: str
    if target.admin_dsn is not None:
        dsn, where = target.admin_dsn, "admin_dsn"
    elif target.admin_dsn_env is not None:
        where = f"environment variable {target.admin_dsn_env}"
        dsn = env.get(target.admin_dsn_env, "").strip()
        if not dsn:
            raise Unavailable(
                f"target {target.name!r}: {where} is not set",
                hint=f"set {target.admin_dsn_env} to the target's admin connection string "
                "in the broker's environment",
            )
    elif target.admin_dsn_file is not None:
        where = f"file {target.admin_dsn_file}"
        dsn = _read_dsn_file(target)
    else:
        raise Unavailable(f"target {target.name!r}: the policy gives no admin DSN")
    try:
        conninfo_to_dict(dsn)
        extra = {
            key: str(value)
            for key, value in (("sslmode", target.sslmode), ("sslrootcert", target.sslrootcert))
            if value is not None
        }
        return make_conninfo(dsn, **extra) if extra else dsn
    except psycopg.Error:
        raise Unavailable(
            f"target {target.name!r}: the admin DSN from {where} is not a valid connection string",
            hint="the value is not shown because it may hold a password",
        ) from None


def _read_dsn_file(target: TargetPolicy) -> str:
    path = target.admin_dsn_file
    assert path is not None
    try:
        dsn = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise Unavailable(
            f"target {target.name!r}: admin DSN file {path} does not exist",
            hint="write the target's admin connection string into it, readable only by the broker",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            reason = "not UTF-8 text"
        else:
            reason = exc.strerror or type(exc).__name__
        raise Unavailable(
            f"target {target.name!r}: admin DSN file {path} cannot be read ({reason})"
        ) from None
    if not dsn:
        raise Unavailable(f"target {target.name!r}: admin DSN file {path} is empty")
    return dsn
