"""Logging in end to end: the real CLI, a real dev broker and a real OIDC provider on loopback.

The broker (tests/fix_broker.py) is started with ``--oidc-issuer`` pointing at the
provider of tests/fix_oidc.py and a policy whose ``workload_identities`` trust
that provider and a second one used for key rotation.  Every token here is
minted and verified for real (RS256/ES256 signatures, JWKS over HTTP).
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import BIN, Broker, new_broker
from tests.fix_oidc import CLIENT_ID, GITHUB_REQUEST_TOKEN, OidcProvider

pytestmark = pytest.mark.slow

# Set empty so that a CI platform running these tests is not detected by the CLI.
NO_CI = {"ACTIONS_ID_TOKEN_REQUEST_URL": "", "DBACCESS_ID_TOKEN": "", "CI_JOB_JWT_V2": ""}
MAIN_JOB = {
    "sub": "repo:org/app:environment:production",
    "repository": "org/app",
    "ref": "refs/heads/main",
    "environment": "production",
    "job_workflow_ref": "org/app/.github/workflows/migrate.yml@refs/heads/main",
}


@pytest.fixture(scope="module")
def rot_provider() -> Iterator[OidcProvider]:
    provider = OidcProvider().start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def idp_broker(
    demo_target: DemoTarget, oidc_provider: OidcProvider, rot_provider: OidcProvider
) -> Iterator[Broker]:
    b = new_broker(demo_target)
    b.data_dir.mkdir(parents=True)
    (b.data_dir / "policy.yaml").write_text(
        textwrap.dedent(
            f"""\
            version: 1
            targets:
              demo:
                database: {demo_target.database}
                admin_dsn_file: admin.dsn
                scopes:
                  read:
                    grants: [demo_read]
                    max_ttl: 1h
                    allow: {{groups: [dev, ci]}}
            workload_identities:
              - name: ci-migrations
                issuer: {oidc_provider.issuer}
                audience: dbaccess
                claims:
                  repository: org/app
                  ref: refs/heads/main
                  environment: "prod*"
                  job_workflow_ref: "org/app/.github/workflows/*@refs/heads/main"
                groups: [ci]
              - name: rotating-job
                issuer: {rot_provider.issuer}
                audience: dbaccess
                claims: {{repository: org/rot}}
                groups: [ci]
              - name: triage-agent
                issuer: {oidc_provider.issuer}
                audience: dbaccess
                claims: {{repository: org/agents}}
                groups: [ci]
                agent_for: alice
            """
        )
    )
    b.start("--oidc-issuer", oidc_provider.issuer, "--oidc-client-id", CLIENT_ID)
    try:
        yield b
    finally:
        b.stop()


def cli(b: Broker, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return b.cli(*args, env={**NO_CI, **env})


def whoami(b: Broker, **env: str) -> dict[str, Any]:
    res = cli(b, "whoami", "--output", "json", **env)
    assert res.returncode == 0, res.stderr
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def kept_token(b: Broker) -> str:
    stored = json.loads((b.config_dir / "tokens.json").read_text())
    return str(stored[b.api_url])


def api(b: Broker) -> httpx.Client:
    ca = ssl.create_default_context(cafile=str(b.data_dir / "tls" / "ca.crt"))
    return httpx.Client(base_url=b.api_url, verify=ca, timeout=30)


def server_cli(b: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dbaccess-server"), *args, "--data-dir", str(b.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=b.env(),
        check=False,
    )


def admin_token(b: Broker) -> str:
    res = server_cli(b, "token", "create", "--identity", "auditor-1", "--groups", "admin")
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


# --------------------------------------------------------------------------- people


def test_device_flow_login_then_whoami(idp_broker: Broker, oidc_provider: OidcProvider) -> None:
    proc = subprocess.Popen(
        [str(BIN / "dbaccess"), "login", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=idp_broker.env(**NO_CI),
    )
    assert proc.stderr is not None
    shown = ""
    while (match := re.search(r"enter the code (\S+)", shown)) is None:
        line = proc.stderr.readline()
        assert line, f"the CLI ended without showing a code: {shown}"
        shown += line
    assert f"open {oidc_provider.issuer}/device" in shown
    oidc_provider.approve_device(
        match.group(1), {"sub": "u-bob", "email": "bob@example.com", "groups": ["dev", "dba"]}
    )
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, shown + err
    assert "logged in" in err and "as bob@example.com (groups: dba, dev)" in err

    me = whoami(idp_broker)
    assert (me["identity"], me["groups"], me["kind"]) == ("bob@example.com", ["dba", "dev"], "user")
    lifetime = time.mktime(time.strptime(me["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(
        time.gmtime()
    )
    assert 8 * 3600 - 120 < lifetime <= 8 * 3600  # the configured default TTL
    table = cli(idp_broker, "whoami")
    assert table.returncode == 0
    assert "bob@example.com" in table.stdout and "user" in table.stdout


def test_device_flow_denied_at_the_provider(
    idp_broker: Broker, oidc_provider: OidcProvider
) -> None:
    proc = subprocess.Popen(
        [str(BIN / "dbaccess"), "login", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=idp_broker.env(**NO_CI),
    )
    assert proc.stderr is not None
    shown = ""
    while (match := re.search(r"enter the code (\S+)", shown)) is None:
        line = proc.stderr.readline()
        assert line, shown
        shown += line
    oidc_provider.deny_device(match.group(1))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 4
    assert "the login was denied at the identity provider" in err


def test_browser_login_with_pkce(
    idp_broker: Broker, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    # The "browser" fetches the authorization URL and follows the redirect back
    # to the CLI's loopback listener, as a browser whose user is logged in would.
    browser = tmp_path / "browser"
    browser.write_text(
        f"#!{sys.executable}\n"
        "import sys, urllib.request\n"
        "urllib.request.urlopen(sys.argv[1], timeout=30).read()\n"
    )
    browser.chmod(0o755)
    oidc_provider.user = {"sub": "u-carol", "email": "carol@example.com", "groups": ["dev"]}
    try:
        res = cli(idp_broker, "login", BROWSER=str(browser))
    finally:
        oidc_provider.user = {"sub": "u-alice", "email": "alice@example.com", "groups": ["dev"]}
    assert res.returncode == 0, res.stderr
    assert "code_challenge_method=S256" in res.stderr  # the URL shown in case no browser opens
    me = whoami(idp_broker)
    assert (me["identity"], me["groups"], me["kind"]) == ("carol@example.com", ["dev"], "user")

    # The broker token works for real work: a session on the demo target.
    out = cli(idp_broker, "exec", "demo", "-c", "select 'ok' as answer", "--output", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["rows"] == [{"answer": "ok"}]


def test_bad_id_tokens_are_refused_with_clear_messages(
    idp_broker: Broker, oidc_provider: OidcProvider
) -> None:
    from tests.fix_oidc import SigningKey

    now = int(time.time())
    p = oidc_provider
    stranger = SigningKey.new("RS256")
    cases: list[tuple[str, str | None, str]] = [
        (p.mint(p.claims(iat=now - 900, exp=now - 600)), None, "it expired at"),
        (p.mint(p.claims(aud="someone-else")), None, "for audience 'someone-else', not for"),
        (p.mint(p.claims(iss="https://evil.example.com")), None, "issued by 'https://evil"),
        (p.mint(alg="none"), None, "it is not signed (alg 'none')"),
        (p.mint(alg="HS256"), None, "HS256 is a shared-secret algorithm"),
        (p.mint(key=stranger, kid=p.key.kid), None, "its signature does not verify"),
        (p.mint(key=stranger), None, f"key {stranger.kid!r} for RS256 is not among"),
        (p.mint(p.claims(nonce="from-the-idp")), "sent-by-cli", "nonce does not match"),
        (p.mint(p.claims(email_verified=False)), None, "has not verified its e-mail"),
    ]
    with api(idp_broker) as http:
        for token, nonce, expected in cases:
            resp = http.post("/v1/auth/oidc", json={"id_token": token, "nonce": nonce})
            assert resp.status_code == 401, (expected, resp.text)
            body = resp.json()
            assert body["error"] == "not_authenticated"
            assert body["message"].startswith("ID token rejected: ")
            assert expected in body["message"], (expected, body["message"])
        good = p.mint(p.claims(nonce="n-1"))
        first = http.post("/v1/auth/oidc", json={"id_token": good, "nonce": "n-1"})
        assert first.status_code == 200, first.text
        assert first.json()["identity"] == "alice@example.com"
        again = http.post("/v1/auth/oidc", json={"id_token": good, "nonce": "n-1"})
        assert again.status_code == 401
        assert "already (a replay)" in again.json()["message"]

        audit = http.get(
            "/v1/audit", headers={"Authorization": f"Bearer {admin_token(idp_broker)}"}
        )
        assert audit.status_code == 200
    events = audit.json()
    kinds = [e["kind"] for e in events]
    assert kinds.count("login.rejected") >= len(cases) + 1
    assert "login" in kinds and "token.issued" in kinds
    dump = json.dumps(events)
    for token, _nonce, _expected in cases:
        assert token not in dump
    assert good not in dump and first.json()["token"] not in dump


def test_auth_config_tells_the_cli_about_the_provider(
    idp_broker: Broker, oidc_provider: OidcProvider
) -> None:
    with api(idp_broker) as http:
        config = http.get("/v1/auth/config").json()
    assert config == {
        "oidc": {
            "issuer": oidc_provider.issuer,
            "client_id": CLIENT_ID,
            "scopes": ["openid", "email", "profile"],
        },
        "workload": True,
    }


# --------------------------------------------------------------------------- CI jobs


def test_workload_token_from_env_logs_in_once(
    idp_broker: Broker, oidc_provider: OidcProvider
) -> None:
    p = oidc_provider
    token = p.mint(p.claims(aud="dbaccess", email=None, groups=None, **MAIN_JOB))
    res = cli(idp_broker, "login", "--oidc-token-env", "CI_TOKEN", CI_TOKEN=token)
    assert res.returncode == 0, res.stderr
    assert "as ci-migrations (groups: ci)" in res.stderr
    me = whoami(idp_broker)
    assert (me["identity"], me["groups"], me["kind"]) == ("ci-migrations", ["ci"], "workload")
    out = cli(idp_broker, "exec", "demo", "-c", "select 1 as one", "--output", "json")
    assert out.returncode == 0, out.stderr

    replay = cli(idp_broker, "login", "--oidc-token-env", "CI_TOKEN", CI_TOKEN=token)
    assert replay.returncode == 4
    assert "workload token rejected: it was exchanged for a broker token already" in replay.stderr
    assert token not in replay.stderr


def test_a_job_the_policy_maps_to_an_agent_logs_in_as_one(
    idp_broker: Broker, oidc_provider: OidcProvider
) -> None:
    p = oidc_provider
    token = p.mint(p.claims(aud="dbaccess", email=None, groups=None, repository="org/agents"))
    res = cli(idp_broker, "login", "--oidc-token-env", "CI_TOKEN", CI_TOKEN=token)
    assert res.returncode == 0, res.stderr
    me = whoami(idp_broker)
    assert (me["identity"], me["kind"], me["owner"]) == ("triage-agent", "agent", "alice")


def test_workload_token_bound_to_nothing_is_forbidden(
    idp_broker: Broker, oidc_provider: OidcProvider
) -> None:
    p = oidc_provider
    token = p.mint(p.claims(aud="dbaccess", **{**MAIN_JOB, "ref": "refs/heads/dev"}))
    res = cli(idp_broker, "login", "--oidc-token-env", "CI_TOKEN", CI_TOKEN=token)
    assert res.returncode == 5, res.stderr
    assert "no workload identity matches this token" in res.stderr
    assert "ci-migrations: claim 'ref' does not match 'refs/heads/main'" in res.stderr
    assert token not in res.stderr


def test_workload_token_of_an_untrusted_issuer(idp_broker: Broker) -> None:
    stranger = OidcProvider().start()
    try:
        token = stranger.mint(stranger.claims(aud="dbaccess", **MAIN_JOB))
    finally:
        stranger.stop()
    res = cli(idp_broker, "login", "--oidc-token-env", "CI_TOKEN", CI_TOKEN=token)
    assert res.returncode == 4
    assert "is not one the policy's workload_identities trust" in res.stderr


def test_github_actions_token_is_found_automatically(
    idp_broker: Broker, oidc_provider: OidcProvider
) -> None:
    oidc_provider.github_claims = dict(MAIN_JOB)
    res = cli(
        idp_broker,
        "login",
        ACTIONS_ID_TOKEN_REQUEST_URL=f"{oidc_provider.issuer}/github/token?api-version=2.0",
        ACTIONS_ID_TOKEN_REQUEST_TOKEN=GITHUB_REQUEST_TOKEN,
    )
    assert res.returncode == 0, res.stderr
    assert "with the token from GitHub Actions" in res.stderr
    assert whoami(idp_broker)["identity"] == "ci-migrations"


def test_rotated_key_is_picked_up_and_the_retired_one_refused(
    idp_broker: Broker, rot_provider: OidcProvider
) -> None:
    p = rot_provider

    def login(token: str) -> subprocess.CompletedProcess[str]:
        return cli(idp_broker, "login", "--oidc-token-env", "CI_TOKEN", CI_TOKEN=token)

    claims = {"aud": "dbaccess", "repository": "org/rot"}
    old = p.key
    assert login(p.mint(p.claims(**claims))).returncode == 0
    p.rotate("ES256")  # the old key is no longer published
    res = login(p.mint(p.claims(**claims)))
    assert res.returncode == 0, res.stderr
    assert whoami(idp_broker)["identity"] == "rotating-job"
    retired = login(p.mint(p.claims(**claims), key=old))
    assert retired.returncode == 4
    assert f"key '{old.kid}' for RS256 is not among the issuer's published keys" in retired.stderr


# --------------------------------------------------------------------------- tokens


def test_token_revoke_makes_the_api_answer_401(idp_broker: Broker) -> None:
    made = server_cli(idp_broker, "token", "create", "--identity", "svc-report", "--groups", "dev")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    token_id = re.search(r"token (t-\w+)", made.stderr).group(1)  # type: ignore[union-attr]
    assert whoami(idp_broker, DBACCESS_TOKEN=token)["identity"] == "svc-report"

    listed = server_cli(idp_broker, "token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["id"] == token_id)
    assert (row["identity"], row["kind"], row["revoked_at"]) == ("svc-report", "service", None)
    assert token not in listed.stdout

    revoked = server_cli(idp_broker, "token", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    res = cli(idp_broker, "whoami", DBACCESS_TOKEN=token)
    assert res.returncode == 4
    assert "this broker token was revoked" in res.stderr
    table = server_cli(idp_broker, "token", "list", "--all")
    assert re.search(rf"{token_id}\s+svc-report\s+service\s+dev\s.*revoked", table.stdout)
    assert token_id not in server_cli(idp_broker, "token", "list").stdout
    unknown = server_cli(idp_broker, "token", "revoke", "t-nope")
    assert unknown.returncode == 1 and "no token with id 't-nope'" in unknown.stderr


def test_logout_revokes_the_token_at_the_broker(
    idp_broker: Broker, oidc_provider: OidcProvider
) -> None:
    p = oidc_provider
    token = p.mint(p.claims(aud="dbaccess", **MAIN_JOB))
    assert cli(idp_broker, "login", "--oidc-token-env", "T", T=token).returncode == 0
    broker_token = kept_token(idp_broker)
    assert whoami(idp_broker, DBACCESS_TOKEN=broker_token)["identity"] == "ci-migrations"
    res = cli(idp_broker, "logout")
    assert res.returncode == 0, res.stderr
    assert idp_broker.api_url not in json.loads((idp_broker.config_dir / "tokens.json").read_text())
    after = cli(idp_broker, "whoami", DBACCESS_TOKEN=broker_token)
    assert after.returncode == 4
    assert "revoked" in after.stderr


def test_login_needs_a_provider_for_people(broker: Broker) -> None:
    res = cli(broker, "login", "--no-browser")
    assert res.returncode == 2
    assert "has no identity provider for people" in res.stderr
    assert "--token-stdin" in res.stderr
