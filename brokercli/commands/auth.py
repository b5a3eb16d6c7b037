"""login and logout: keep a broker token for a broker URL."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from brokercli import render, tokens
from brokercli.client import BrokerClient
from brokercli.config import load_profile, save_profile, settings
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode


def login(
    server: Annotated[str | None, typer.Option("--server", help="Broker URL to log in to.")] = None,
    token_stdin: Annotated[
        bool,
        typer.Option(
            "--token-stdin", help="Read a broker API token from stdin (service accounts)."
        ),
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", help="CA certificate that signs the broker's TLS certificate."),
    ] = None,
) -> None:
    """Log in to a broker and keep the token in the OS keyring (or a 0600 file)."""
    if not token_stdin:
        raise CliError(
            "interactive login needs an identity provider configured on the broker",
            code=ExitCode.USAGE,
            hint="for now, pipe an API token: dbaccess login --server URL --token-stdin < token",
        )
    token = sys.stdin.readline().strip()
    if not token:
        raise CliError("no token on stdin", code=ExitCode.USAGE)
    cfg = settings(server)
    profile = load_profile()
    profile["server"] = cfg.server
    if ca_file:
        profile["ca_file"] = str(ca_file.resolve())
    save_profile(profile)
    client = BrokerClient(settings(cfg.server), token)
    me = client.whoami()
    where = tokens.save(cfg.server, token)
    render.info(f"logged in to {cfg.server} as {me['identity']} (token kept in {where})")


def logout(
    server: Annotated[str | None, typer.Option("--server", help="Broker URL.")] = None,
) -> None:
    """Forget the token for the broker."""
    cfg = settings(server)
    tokens.delete(cfg.server)
    render.info(f"logged out of {cfg.server}")
