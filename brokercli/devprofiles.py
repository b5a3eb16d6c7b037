"""The profiles the dev broker (``dbaccess-server dev``) gives the CLI, one per dev identity.

Where and how the CLI keeps its profiles and tokens is the CLI's business
(``config.py``, ``tokens.py``), and the broker does not import the CLI: the dev
broker mints an API token for each of its identities and runs this module in a
process of its own (``python -m brokercli.devprofiles``), the request as JSON on
stdin (tokens never on a command line), the answer as JSON on stdout.

Request: ``{"server": URL, "ca_file": PATH, "ca_fingerprint": HEX, "profiles":
[{"name": ..., "identity": ..., "token": ...}, ...]}``.  Answer: ``{"written":
[[name, identity], ...], "replaced": [[name, path, old server], ...], "kept":
[[name, path], ...], "where": where the last token went}``.

Only profiles the dev mode wrote (:data:`~brokercli.config.DEV_MARK`) are
replaced; a profile from ``dbaccess login`` (or one that cannot be read) is kept
and reported, and the broker revokes the token it had minted for it.  Before
profiles were marked, the dev mode wrote unmarked ones; one that trusts the dev
broker's CA is its own too.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from brokercli import tokens
from brokercli.config import DEV_MARK, load_profile, profile_path, save_profile
from brokercli.errors import CliError


def write(request: dict[str, Any]) -> dict[str, Any]:
    """Write the profiles and tokens of ``request``; what was written, replaced and kept."""
    server, ca = str(request["server"]), str(request["ca_file"])
    answer: dict[str, Any] = {"written": [], "replaced": [], "kept": [], "where": ""}
    for entry in request["profiles"]:
        name, identity = str(entry["name"]), str(entry["identity"])
        path = profile_path(name)
        try:
            old = load_profile(name)
        except CliError:
            old = {"unreadable": True}
        if old and DEV_MARK not in old and old.get("ca_file") != ca:
            answer["kept"].append([name, str(path)])
            continue
        if old:
            answer["replaced"].append([name, str(path), str(old.get("server", "nothing"))])
        profile = {
            "server": server,
            "ca_file": ca,
            "ca_fingerprint": str(request["ca_fingerprint"]),
            DEV_MARK: identity,
        }
        save_profile(profile, name)
        answer["where"] = tokens.save(server, str(entry["token"]), name)
        answer["written"].append([name, identity])
    return answer


def main() -> None:
    json.dump(write(json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()
