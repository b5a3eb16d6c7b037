"""Broker tokens: DBACCESS_TOKEN, else a 0600 file, else the OS keyring.

The keyring entry is keyed by broker URL, and for a named profile by the URL and
the profile's name (two identities on one broker, as in the dev mode, keep one
token each).  Where no keyring backend exists (CI
runners, containers, servers without a desktop session) the token goes to
``tokens.json`` in the config directory, readable by the owner only.  The
keyring module is imported lazily: it is slow to import and most commands that
print help never need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from brokercli.config import DEFAULT_PROFILE, config_dir, profile_name

SERVICE = "dbaccess"
log = logging.getLogger(__name__)


def file_path() -> Path:
    """The 0600 file that holds tokens where no keyring exists."""
    return config_dir() / "tokens.json"


def _read_file() -> dict[str, str]:
    try:
        data = json.loads(file_path().read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_file(data: dict[str, str]) -> None:
    path = file_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    path.with_suffix(".tmp").replace(path)


def _keyring_usable() -> bool:
    if os.environ.get("DBACCESS_NO_KEYRING"):
        return False
    try:
        import keyring
        from keyring.backends import fail

        return not isinstance(keyring.get_keyring(), fail.Keyring)
    except Exception:
        return False


def _key(server: str, profile: str | None) -> str:
    """Where a token is kept: the broker URL, and the profile's name unless it is the default."""
    name = profile or profile_name()
    return server if name == DEFAULT_PROFILE else f"{server} profile={name}"


def load(server: str, profile: str | None = None) -> str | None:
    env = os.environ.get("DBACCESS_TOKEN")
    if env:
        return env.strip()
    server = _key(server, profile)
    # The file first: it only holds a token when no keyring took it, and reading
    # it spares the slow keyring backend discovery on every command.
    from_file = _read_file().get(server)
    if from_file:
        return from_file
    if _keyring_usable():
        import keyring

        try:
            value = keyring.get_password(SERVICE, server)
        except Exception:
            value = None
        if value:
            return str(value)
    return None


def save(server: str, token: str, profile: str | None = None) -> str:
    """Store the token; returns where it went ("keyring" or the file path)."""
    server = _key(server, profile)
    if _keyring_usable():
        import keyring

        try:
            keyring.set_password(SERVICE, server, token)
            _forget_in_file(server)  # an older file entry would shadow the keyring
            return "keyring"
        except Exception:  # a locked or broken keyring: fall back to the file
            log.debug("keyring refused the token; using the file", exc_info=True)
    data = _read_file()
    data[server] = token
    _write_file(data)
    return str(file_path())


def delete(server: str, profile: str | None = None) -> None:
    server = _key(server, profile)
    if _keyring_usable():
        import keyring

        with contextlib.suppress(Exception):  # nothing stored there is fine
            keyring.delete_password(SERVICE, server)
    _forget_in_file(server)


def _forget_in_file(server: str) -> None:
    data = _read_file()
    if data.pop(server, None) is not None:
        _write_file(data)
