"""login, logout and whoami: getting, dropping and showing the broker token for a broker URL.

``login`` picks its way in from its options and the environment, first match wins:

1. ``--token-stdin``: a broker API token made by an administrator (service accounts);
2. ``--oidc-token-env VAR``, or a CI platform's job token found in the environment
   (GitHub Actions, GitLab CI): exchanged at ``/v1/auth/workload``, where the
   policy binds it to a service identity;
3. otherwise a person logs in at the broker's identity provider, in the browser
   (authorization code + PKCE) or, with ``--no-browser``, with a device code; the
   ID token is exchanged at ``/v1/auth/oidc``.

The broker token is kept in the OS keyring (or a 0600 file); the profile
remembers the broker URL.  ``logout`` revokes the token at the broker, then forgets it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from brokercli import render, tokens
from brokercli.client import BrokerClient
from brokercli.commands.common import Output, OutputOpt, ServerOpt
from brokercli.config import (
    DEV_MARK,
    Settings,
    ca_file_override,
    load_profile,
    save_profile,
    settings,
)
from brokercli.errors import CliError
from brokercli.exit_codes import ExitCode

if TYPE_CHECKING:
    import httpx

    from brokercli.oidc import IdToken


def login(
    server: Annotated[
        str | None,
        typer.Option("--server", envvar="DBACCESS_SERVER", help="Broker URL to log in to."),
    ] = None,
    token_stdin: Annotated[
        bool,
        typer.Option(
            "--token-stdin", help="Read a broker API token from stdin (service accounts)."
        ),
    ] = False,
    no_browser: Annotated[
        bool,
        typer.Option(
            "--no-browser",
            help="Log in with a code typed on another device instead of opening a browser.",
        ),
    ] = False,
    oidc_token_env: Annotated[
        str | None,
        typer.Option(
            "--oidc-token-env",
            metavar="VAR",
            help="Log in as a CI job with the JWT in this environment variable.",
        ),
    ] = None,
    audience: Annotated[
        str,
        typer.Option("--audience", help="Audience to ask GitHub Actions' job token for."),
    ] = "dbaccess",
) -> None:
    """Log in to a broker and keep the token in the OS keyring (or a 0600 file).

    People log in at the broker's identity provider (browser, or --no-browser for a
    device code); CI jobs with their platform's job token (found automatically on
    GitHub Actions and GitLab CI, or named with --oidc-token-env); service accounts
    with --token-stdin.

    A CA given with --ca-file (or DBACCESS_CA_FILE) is remembered in the profile
    for this broker.
    """
    if token_stdin and (no_browser or oidc_token_env):
        raise CliError(
            "--token-stdin does not combine with --no-browser or --oidc-token-env",
            code=ExitCode.USAGE,
        )
    if no_browser and oidc_token_env:
        raise CliError(
            "--no-browser is for people, --oidc-token-env for CI jobs: pick one",
            code=ExitCode.USAGE,
        )
    cfg = settings(server)
    if token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise CliError("no token on stdin", code=ExitCode.USAGE)
        client = BrokerClient(cfg, token)
        try:
            me = client.whoami()
        finally:
            client.close()
        where = _remember(cfg, token)
        render.info(f"logged in to {cfg.server} as {me['identity']} (token kept in {where})")
        return

    from brokercli import oidc

    client = BrokerClient(cfg, None)
    try:
        job = None
        if not no_browser:
            job = oidc.workload_token(
                os.environ, token_env=oidc_token_env, audience=audience, http_factory=_idp_http
            )
        if job is not None:
            render.info(f"logging in as a CI job with the token from {job.source}")
            granted = client.exchange_workload(job.token)
        else:
            id_token = _person_login(client, no_browser)
            granted = client.exchange_oidc(id_token.id_token, id_token.nonce)
    finally:
        client.close()
    where = _remember(cfg, str(granted["token"]))
    groups = ", ".join(granted.get("groups") or []) or "none"
    render.info(
        f"logged in to {cfg.server} as {granted['identity']} (groups: {groups}); "
        f"the token expires {_when(granted.get('expires_at'))} and is kept in {where}"
    )


def _remember(cfg: Settings, token: str) -> str:
    profile = load_profile()
    if profile.get("server") != cfg.server:
        # A CA pinned for another broker must not follow the profile to this one.
        profile.pop("ca_file", None)
        profile.pop("ca_fingerprint", None)
    profile["server"] = cfg.server
    ca_file = ca_file_override()
    if ca_file:
        profile["ca_file"] = ca_file
        profile.pop("ca_fingerprint", None)
    # Logged in by hand: no longer the dev broker's to replace.
    profile.pop(DEV_MARK, None)
    save_profile(profile)
    return tokens.save(cfg.server, token)


def _idp_http() -> httpx.Client:
    import httpx

    return httpx.Client(timeout=30.0, headers={"Accept": "application/json"})


def _person_login(client: BrokerClient, no_browser: bool) -> IdToken:
    from brokercli import oidc

    config = client.auth_config().get("oidc")
    if not isinstance(config, dict):
        raise CliError(
            f"the broker at {client.cfg.server} has no identity provider for people",
            code=ExitCode.USAGE,
            hint="log in with a token from an administrator: dbaccess login --token-stdin; "
            "in CI: dbaccess login --oidc-token-env VAR",
        )
    with _idp_http() as http:
        provider = oidc.discover(http, config)
        if no_browser:
            return oidc.device_login(http, provider, render.info)
        return oidc.authorization_code_login(http, provider, render.info)


def _when(iso: Any) -> str:
    if not isinstance(iso, str) or not iso:
        return "never"
    return iso[:16].replace("T", " ") + " UTC"


def logout(
    server: Annotated[
        str | None,
        typer.Option(
            "--server", envvar="DBACCESS_SERVER", help="Broker URL (default: the profile's)."
        ),
    ] = None,
) -> None:
    """Revoke the broker token at the broker and forget it here."""
    cfg = settings(server)
    token = tokens.load(cfg.server)
    if token:
        client = BrokerClient(cfg, token)
        try:
            client.logout()
        except CliError as exc:
            # A token the broker refuses already is as good as revoked; anything else is
            # worth knowing, but the local copy goes either way.
            if exc.code != ExitCode.NOT_AUTHENTICATED:
                render.info(f"warning: the broker did not revoke the token: {exc.message}")
        finally:
            client.close()
    tokens.delete(cfg.server)
    if os.environ.get("DBACCESS_TOKEN"):
        render.info("note: DBACCESS_TOKEN is still set in this environment")
    render.info(f"logged out of {cfg.server}")


def whoami(output: OutputOpt = Output.table, server: ServerOpt = None) -> None:
    """Show who the broker thinks you are: identity, groups, kind and token expiry."""
    client = BrokerClient.from_env(server)
    try:
        me = client.whoami()
    finally:
        client.close()
    if output == Output.json:
        render.as_json(me)
        return
    render.records(
        ["identity", "groups", "kind", "expires", "server"],
        [
            [
                me["identity"],
                me["groups"],
                me["kind"],
                _when(me.get("expires_at")),
                client.cfg.server,
            ]
        ],
        output.value,
    )
