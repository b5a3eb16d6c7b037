"""Where the CLI finds its broker, merged in one place: defaults < profile file < env < flags.

A profile is a small JSON file in the config directory (``$DBACCESS_CONFIG_DIR``,
else ``$XDG_CONFIG_HOME/dbaccess``, else ``~/.config/dbaccess``).  It holds the broker
URL and, for a broker with a private CA, the CA certificate path and fingerprint
— never a token (tokens live in the keyring, see ``tokens.py``, one per broker
and profile).

The default profile is ``profile.json``; named ones (``--profile NAME`` or
``DBACCESS_PROFILE``, e.g. the ``dev`` and ``reviewer`` identities of the dev
broker) are ``profiles/NAME.json``.  A profile written by ``dbaccess-server dev``
carries :data:`DEV_MARK`: the dev broker replaces only such profiles, never one a
``dbaccess login`` wrote.

The global options (``--ca-file``, ``--profile``, accepted by every command, see
``commands/common.py``) land in ``FLAGS`` while the command line is parsed;
``settings`` reads them, then their environment variables, then the profile.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

DEFAULT_SERVER = "http://127.0.0.1:8700"
CA_FILE_ENV = "DBACCESS_CA_FILE"
DEFAULT_PROFILE = "default"
PROFILE_ENV = "DBACCESS_PROFILE"
# The key a profile written by the dev broker carries (its value: the identity).
DEV_MARK = "dev_identity"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class GlobalFlags:
    """Values of the global options given on this command line (None: not given)."""

    ca_file: str | None = None
    profile: str | None = None


FLAGS = GlobalFlags()


def reset_flags() -> None:
    for name, value in vars(GlobalFlags()).items():
        setattr(FLAGS, name, value)


def ca_file_override() -> str | None:
    """The CA named on this command line or by DBACCESS_CA_FILE, as an absolute path."""
    given = FLAGS.ca_file or os.environ.get(CA_FILE_ENV)
    return str(Path(given).expanduser().resolve()) if given else None


def config_dir() -> Path:
    explicit = os.environ.get("DBACCESS_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dbaccess"


def check_profile_name(name: str) -> str:
    if not _PROFILE_NAME.match(name):
        raise CliError(
            f"{name!r} is not a profile name",
            code=ExitCode.USAGE,
            hint="use letters, digits, '.', '_' and '-' (at most 64)",
        )
    return name


def use_profile(name: str | None) -> None:
    """Make ``name`` the profile of this process, as ``--profile`` does (None: not given)."""
    FLAGS.profile = check_profile_name(name) if name else None


def profile_name() -> str:
    """The active profile: ``--profile``, else ``DBACCESS_PROFILE``, else the default."""
    return check_profile_name(FLAGS.profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE)


def profile_path(name: str | None = None) -> Path:
    name = check_profile_name(name) if name else profile_name()
    if name == DEFAULT_PROFILE:
        return config_dir() / "profile.json"
    return config_dir() / "profiles" / f"{name}.json"


def profile_names() -> list[str]:
    """The profiles that exist in the config directory, the default first."""
    names = [DEFAULT_PROFILE] if profile_path(DEFAULT_PROFILE).exists() else []
    folder = config_dir() / "profiles"
    if folder.is_dir():
        names += sorted(
            p.stem for p in folder.glob("*.json") if _PROFILE_NAME.match(p.stem) and p.is_file()
        )
    return names


@dataclass(frozen=True)
class Settings:
    server: str
    ca_file: str | None
    ca_fingerprint: str | None
    source: str  # where `server` came from, for error messages


def load_profile(name: str | None = None) -> dict[str, Any]:
    path = profile_path(name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(
            f"cannot read the profile {path}: {exc}",
            code=ExitCode.USAGE,
            hint="fix or delete the file, then run dbaccess login",
        ) from None
    if not isinstance(data, dict):
        raise CliError(f"the profile {path} is not a JSON object", code=ExitCode.USAGE)
    return data


def save_profile(data: dict[str, Any], name: str | None = None) -> Path:
    path = profile_path(name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def settings(server_flag: str | None = None) -> Settings:
    name = profile_name()
    profile = load_profile(name)
    if (
        not profile
        and name != DEFAULT_PROFILE
        and not (server_flag or os.environ.get("DBACCESS_SERVER"))
    ):
        known = ", ".join(profile_names()) or "none"
        raise CliError(
            f"there is no profile {name!r} in {config_dir()} (profiles: {known})",
            code=ExitCode.USAGE,
            hint=f"create it with: dbaccess --profile {name} login --server URL",
        )
    server, source = DEFAULT_SERVER, "default"
    if profile.get("server"):
        server, source = str(profile["server"]), str(profile_path())
    if os.environ.get("DBACCESS_SERVER"):
        server, source = os.environ["DBACCESS_SERVER"], "DBACCESS_SERVER"
    # The --server options also read DBACCESS_SERVER (so --help lists it); a value
    # that came from there is named after the variable, not the flag.
    if server_flag and server_flag != os.environ.get("DBACCESS_SERVER"):
        server, source = server_flag, "--server"
    ca_file = ca_fingerprint = None
    if server == profile.get("server"):
        ca_file, ca_fingerprint = profile.get("ca_file"), profile.get("ca_fingerprint")
    override = ca_file_override()
    if override is not None:
        # A CA given for this run replaces the profile's (and its pinned fingerprint).
        ca_file, ca_fingerprint = override, None
    return Settings(
        server=server.rstrip("/"),
        ca_file=ca_file,
        ca_fingerprint=ca_fingerprint,
        source=source,
    )
