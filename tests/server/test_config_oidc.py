"""The ``oidc`` settings: file, environment and flags, defaults, and errors saying where."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from server.config import ConfigError, OidcConfig, load_config

FILE = textwrap.dedent(
    """\
    oidc:
      issuer: https://login.example.com/realms/dev/
      client_id: dbaccess-cli
      client_secret: not-really-secret
      scopes: [openid, email, groups]
      identity_claims: preferred_username email sub
      groups_claim: roles
      audience: dbaccess
      token_ttl: 4h
    workload_token_ttl: 20m
    """
)


def write(directory: Path, text: str) -> Path:
    path = directory / "server.yaml"
    path.write_text(text)
    return path


def problems_of(
    path: Path | None,
    overrides: dict[str, object] | None = None,
    environ: dict[str, str] | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides, environ=environ or {})
    return [str(p) for p in caught.value.problems]


def test_full_oidc_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FILE), environ={})
    assert config.oidc == OidcConfig(
        issuer="https://login.example.com/realms/dev/",
        client_id="dbaccess-cli",
        client_secret="not-really-secret",
        scopes=("openid", "email", "groups"),
        identity_claims=("preferred_username", "email", "sub"),
        groups_claim="roles",
        audience="dbaccess",
        token_ttl=timedelta(hours=4),
    )
    assert config.oidc is not None and config.oidc.allowed_audience == "dbaccess"
    assert config.workload_token_ttl == timedelta(minutes=20)
    assert "not-really-secret" not in repr(config)


def test_defaults(tmp_path: Path) -> None:
    assert load_config(None, environ={}).oidc is None
    text = "oidc:\n  issuer: https://login.example.com\n  client_id: cli\n"
    config = load_config(write(tmp_path, text), environ={})
    assert config.oidc == OidcConfig(issuer="https://login.example.com", client_id="cli")
    assert config.oidc.scopes == ("openid", "email", "profile")
    assert config.oidc.identity_claims == ("email", "sub")
    assert config.oidc.groups_claim == "groups"
    assert config.oidc.allowed_audience == "cli"
    assert config.oidc.token_ttl == timedelta(hours=8)
    assert config.workload_token_ttl == timedelta(hours=1)


def test_environment_and_flags(tmp_path: Path) -> None:
    environ = {
        "DBACCESS_SERVER_OIDC_ISSUER": "https://env.example.com",
        "DBACCESS_SERVER_OIDC_CLIENT_ID": "from-env",
        "DBACCESS_SERVER_OIDC_SCOPES": "openid email",
    }
    overrides: dict[str, object] = {"oidc_client_id": "from-flag", "oidc_token_ttl": "1h"}
    config = load_config(write(tmp_path, FILE), overrides, environ=environ)
    assert config.oidc is not None
    assert config.oidc.issuer == "https://env.example.com"
    assert config.oidc.client_id == "from-flag"
    assert config.oidc.scopes == ("openid", "email")
    assert config.oidc.token_ttl == timedelta(hours=1)
    assert config.oidc.groups_claim == "roles"  # from the file


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "oidc:\n  issuer: http://login.example.com\n  client_id: cli\n",
            [
                "server.yaml:2: oidc.issuer: 'http://login.example.com': "
                "an issuer must use https (http only on loopback)"
            ],
            id="plain-http",
        ),
        pytest.param(
            "oidc:\n  issuer: https://login.example.com\n",
            ["server.yaml:2: oidc.issuer: oidc needs client_id as well"],
            id="no-client-id",
        ),
        pytest.param(
            "oidc:\n  client_id: cli\n  token_ttl: 8h\n",
            ["server.yaml:2: oidc.client_id: oidc needs issuer as well"],
            id="no-issuer",
        ),
        pytest.param(
            "oidc:\n  issuer: https://a.example\n  client_id: cli\n  scopes: [email]\n",
            [
                "server.yaml:4: oidc.scopes: 'email' lacks 'openid', "
                "without which there is no ID token"
            ],
            id="scopes-without-openid",
        ),
        pytest.param(
            "oidc:\n  issuer: https://a.example\n  client_id: my cli\n",
            ["server.yaml:3: oidc.client_id: 'my cli' must be one word without spaces"],
            id="client-id-with-space",
        ),
        pytest.param(
            "oidc:\n  issuer: https://a.example\n  client_id: cli\n  client_secret: ''\n",
            ["server.yaml:4: oidc.client_secret: a value is required here"],
            id="empty-secret",
        ),
        pytest.param(
            "oidc:\n  issuer: https://a.example\n  client_id: cli\n  token_tll: 8h\n",
            ["server.yaml:4: oidc.token_tll: unknown key (did you mean 'token_ttl'?)"],
            id="typo",
        ),
        pytest.param(
            "oidc:\n  issuer: https://a.example\n  client_id: cli\n  token_ttl: 0s\n",
            ["server.yaml:4: oidc.token_ttl: '0s' is too short: it must be longer than zero"],
            id="zero-ttl",
        ),
        pytest.param(
            "oidc: https://a.example\n",
            ["server.yaml:1: oidc: expected a mapping, got 'https://a.example'"],
            id="not-a-mapping",
        ),
        pytest.param(
            "workload_token_ttl: soon\n",
            ["server.yaml:1: workload_token_ttl: 'soon' is not a duration (use e.g. 30m, 8h, 1d)"],
            id="workload-ttl",
        ),
    ],
)
def test_errors_name_line_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, text)
    assert problems_of(Path("server.yaml")) == expected


def test_a_bad_client_secret_is_never_echoed() -> None:
    environ = {
        "DBACCESS_SERVER_OIDC_ISSUER": "https://a.example",
        "DBACCESS_SERVER_OIDC_CLIENT_ID": "cli",
        "DBACCESS_SERVER_OIDC_CLIENT_SECRET": "s3cret\x07",
    }
    (problem,) = problems_of(None, environ=environ)
    assert problem.startswith("environment: DBACCESS_SERVER_OIDC_CLIENT_SECRET:")
    assert "s3cret" not in problem


def test_dev_flags_use_the_same_checks() -> None:
    flags: dict[str, object] = {"oidc_issuer": "ftp://x", "oidc_client_id": "cli"}
    assert problems_of(None, flags) == [
        "command line: oidc_issuer: 'ftp://x' is not an issuer URL such as "
        "https://login.example.com"
    ]
