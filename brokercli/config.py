"""Where the CLI finds its broker, merged in one place: defaults < profile file < env < flags.

The profile is a small JSON file in the config directory (``$DBACCESS_CONFIG_DIR``,
else ``$XDG_CONFIG_HOME/dbaccess``, else ``~/.config/dbaccess``).  It holds the broker
URL and, for a broker with a private CA, the CA certificate path and fingerprint
— never a token (tokens live in the keyring, see ``tokens.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

DEFAULT_SERVER = "http://127.0.0.1:8700"


def config_dir() -> Path:
    explicit = os.environ.get("DBACCESS_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dbaccess"


def profile_path() -> Path:
    return config_dir() / "profile.json"


@dataclass(frozen=True)
class Settings:
    server: str
    ca_file: str | None
    ca_fingerprint: str | None
    source: str  # where `server` came from, for error messages


def load_profile() -> dict[str, Any]:
    path = profile_path()
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


def save_profile(data: dict[str, Any]) -> Path:
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def settings(server_flag: str | None = None) -> Settings:
    profile = load_profile()
    server, source = DEFAULT_SERVER, "default"
    if profile.get("server"):
        server, source = str(profile["server"]), str(profile_path())
    if os.environ.get("DBACCESS_SERVER"):
        server, source = os.environ["DBACCESS_SERVER"], "DBACCESS_SERVER"
    # The --server options also read DBACCESS_SERVER (so --help lists it); a value
    # that came from there is named after the variable, not the flag.
    if server_flag and server_flag != os.environ.get("DBACCESS_SERVER"):
        server, source = server_flag, "--server"
    return Settings(
        server=server.rstrip("/"),
        ca_file=profile.get("ca_file") if server == profile.get("server") else None,
        ca_fingerprint=profile.get("ca_fingerprint") if server == profile.get("server") else None,
        source=source,
    )
