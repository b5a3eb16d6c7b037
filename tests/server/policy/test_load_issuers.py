"""Policy for the vault and rds-iam issuers: typed settings, and an error for each mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from server.policy import Issuer, PolicyError, SslMode, parse_policy
from server.policy.model import VaultAuthMethod
from server.sessions.service import upstream_for

# Line numbers matter: the error tables below refer to them.
VAULT = textwrap.dedent(
    """\
    version: 1
    targets:
      app:
        database: app
        issuer: vault
        host: db.internal
        port: 6432
        vault:
          address: https://vault.internal:8200
          role: app-{scope}
          auth:
            method: approle
            role_id: 0e5c-role
            secret_id_file: secrets/secret-id
          ca_cert: ca/vault.pem
          namespace: team-a
        scopes:
          read:
            max_ttl: 1h
            allow:
              groups: [dev]
    """
)

RDS = textwrap.dedent(
    """\
    version: 1
    targets:
      app:
        database: app
        issuer: rds-iam
        host: app.abc.eu-central-1.rds.amazonaws.com
        rds_iam:
          region: eu-central-1
          db_user_template: iam_{scope}
          ca_bundle: certs/global-bundle.pem
        scopes:
          read:
            max_ttl: 1h
            allow:
              groups: [dev]
    """
)


def edit(base: str, old: str, new: str) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml", base_dir=Path("/etc/dbaccess"))
    return [str(p) for p in caught.value.problems]


def test_vault_target_reads_into_typed_settings() -> None:
    target = parse_policy(VAULT, "policy.yaml", base_dir=Path("/etc/dbaccess")).targets["app"]
    assert target.issuer is Issuer.VAULT and not target.has_admin_dsn
    assert (target.host, target.port) == ("db.internal", 6432)
    vault = target.vault
    assert vault is not None
    assert (vault.address, vault.mount, vault.role) == (
        "https://vault.internal:8200",
        "database",
        "app-{scope}",
    )
    assert (vault.ca_cert, vault.namespace) == (Path("/etc/dbaccess/ca/vault.pem"), "team-a")
    assert vault.auth.method is VaultAuthMethod.APPROLE
    assert vault.auth.role_id == "0e5c-role"
    assert vault.auth.secret_id_file == Path("/etc/dbaccess/secrets/secret-id")
    assert vault.auth.approle_mount == "approle"
    assert target.scopes["read"].grants == ()
    up = upstream_for(target)
    assert (up.host, up.port, up.database, up.sslmode) == ("db.internal", 6432, "app", None)


def test_vault_target_with_an_admin_dsn_takes_host_and_port_from_it() -> None:
    text = edit(
        VAULT, "    host: db.internal\n    port: 6432\n", "    admin_dsn: host=10.0.0.5 port=5433\n"
    )
    target = parse_policy(text, "policy.yaml").targets["app"]
    assert target.has_admin_dsn
    up = upstream_for(target)
    assert (up.host, up.port) == ("10.0.0.5", 5433)


def test_rds_iam_target_reads_into_typed_settings_and_verifies_the_server() -> None:
    target = parse_policy(RDS, "policy.yaml", base_dir=Path("/etc/dbaccess")).targets["app"]
    assert target.issuer is Issuer.RDS_IAM
    rds = target.rds_iam
    assert rds is not None
    assert (rds.region, rds.db_user, rds.db_user_template, rds.endpoint_url) == (
        "eu-central-1",
        None,
        "iam_{scope}",
        None,
    )
    up = upstream_for(target)
    assert (up.port, up.sslmode, up.sslrootcert) == (
        5432,
        "verify-full",
        "/etc/dbaccess/certs/global-bundle.pem",
    )


def test_rds_iam_with_an_admin_dsn_keeps_grants() -> None:
    text = edit(RDS, "      db_user_template: iam_{scope}\n", "")
    text = edit(
        text,
        "    host: app",
        "    admin_dsn_env: APP_ADMIN_DSN\n    sslmode: verify-ca\n    host: app",
    )
    text = edit(text, "        max_ttl: 1h\n", "        grants: [app_read]\n        max_ttl: 1h\n")
    target = parse_policy(text, "policy.yaml").targets["app"]
    assert target.scopes["read"].grants == ("app_read",)
    assert target.sslmode is SslMode.VERIFY_CA


APPROLE = (
    "        method: approle\n"
    "        role_id: 0e5c-role\n"
    "        secret_id_file: secrets/secret-id\n"
)
RDS_BLOCK = (
    "    rds_iam:\n      region: eu-central-1\n      db_user_template: iam_{scope}\n"
    "      ca_bundle: certs/global-bundle.pem\n"
)
NO_GRANTS = (
    "the Vault role decides what a vault session may do, so scopes list no grants "
    "(write vault.role as 'name-{scope}' for a Vault role per scope)"
)

VAULT_ERRORS = [
    pytest.param(
        edit(VAULT, "    host: db.internal\n    port: 6432\n", ""),
        [
            "policy.yaml:3: targets.app.host: a vault target without an admin DSN needs "
            "the host (and port) the gateway connects to"
        ],
        id="no-host-no-dsn",
    ),
    pytest.param(
        edit(
            VAULT,
            "    port: 6432\n",
            "    port: 6432\n    admin_dsn_env: A\n    admin_dsn_file: b\n",
        ),
        [
            "policy.yaml:3: targets.app: give at most one of admin_dsn, admin_dsn_env, "
            "admin_dsn_file (found admin_dsn_env and admin_dsn_file)"
        ],
        id="two-dsns",
    ),
    pytest.param(
        edit(VAULT, "port: 6432", "port: 70000"),
        ["policy.yaml:7: targets.app.port: '70000' is not a port number (1 to 65535)"],
        id="bad-port",
    ),
    pytest.param(
        edit(VAULT, "      role: app-{scope}\n", ""),
        ["policy.yaml:8: targets.app.vault.role: required key is missing"],
        id="no-role",
    ),
    pytest.param(
        edit(VAULT, "address: https://vault.internal:8200", "address: vault.internal:8200"),
        ["policy.yaml:9: targets.app.vault.address: 'vault.internal:8200' is not an http(s) URL"],
        id="address-not-a-url",
    ),
    pytest.param(
        edit(VAULT, "address: https://vault.internal:8200", "address: https://u:pw@vault:8200"),
        [
            "policy.yaml:9: targets.app.vault.address: the URL holds a user or password: "
            "keep secrets out of the policy"
        ],
        id="address-with-password",
    ),
    pytest.param(
        edit(VAULT, "role: app-{scope}", "role: app/{team}"),
        [
            "policy.yaml:10: targets.app.vault.role: 'app/{team}' is not a Vault role name "
            "(letters, digits, '_', '-', '.'; {scope} stands for the scope's name)"
        ],
        id="bad-role",
    ),
    pytest.param(
        edit(VAULT, "secret_id_file: secrets/secret-id", "secret_id: abc"),
        [
            "policy.yaml:14: targets.app.vault.auth.secret_id: secrets are not written into "
            "the policy: use secret_id_file or secret_id_env",
            "policy.yaml:11: targets.app.vault.auth: give exactly one of secret_id_file, "
            "secret_id_env",
        ],
        id="inline-secret-id",
    ),
    pytest.param(
        edit(VAULT, APPROLE, "        method: token\n        token: s.abcdef\n"),
        [
            "policy.yaml:13: targets.app.vault.auth.token: secrets are not written into the "
            "policy: use token_file or token_env",
            "policy.yaml:11: targets.app.vault.auth: give exactly one of token_file, token_env",
        ],
        id="inline-token",
    ),
    pytest.param(
        edit(
            VAULT,
            "        role_id: 0e5c-role\n",
            "        role_id: 0e5c-role\n        token_env: T\n",
        ),
        [
            "policy.yaml:14: targets.app.vault.auth.token_env: "
            "token_env is for method token, not approle"
        ],
        id="key-of-another-method",
    ),
    pytest.param(
        edit(VAULT, "method: approle", "method: kerberos"),
        [
            "policy.yaml:12: targets.app.vault.auth.method: 'kerberos' is not a known auth "
            "method (one of: token, approle, jwt)"
        ],
        id="unknown-method",
    ),
    pytest.param(
        edit(VAULT, APPROLE, "        method: jwt\n        jwt_file: /var/run/secrets/token\n"),
        ["policy.yaml:11: targets.app.vault.auth.jwt_role: required key is missing"],
        id="jwt-without-role",
    ),
    pytest.param(
        edit(VAULT, "        max_ttl: 1h\n", "        grants: [app_read]\n        max_ttl: 1h\n"),
        [f"policy.yaml:19: targets.app.scopes.read.grants: {NO_GRANTS}"],
        id="grants-on-vault",
    ),
    pytest.param(
        edit(VAULT, "    vault:\n", "    rds_iam: {}\n    vault:\n"),
        ["policy.yaml:8: targets.app.rds_iam: only for targets with issuer: rds-iam"],
        id="rds-block-on-vault",
    ),
    pytest.param(
        edit(VAULT, "    issuer: vault", "    issuer: postgres\n    admin_dsn_env: X"),
        [
            "policy.yaml:9: targets.app.vault: only for targets with issuer: vault",
            "policy.yaml:19: targets.app.scopes.read.grants: required key is missing",
        ],
        id="vault-block-on-postgres",
    ),
]

RDS_ERRORS = [
    pytest.param(
        edit(RDS, "region: eu-central-1", "region: Frankfurt"),
        [
            "policy.yaml:8: targets.app.rds_iam.region: "
            "'Frankfurt' is not an AWS region (like eu-central-1)"
        ],
        id="bad-region",
    ),
    pytest.param(
        edit(RDS, "      ca_bundle: certs/global-bundle.pem\n", ""),
        ["policy.yaml:7: targets.app.rds_iam.ca_bundle: required key is missing"],
        id="no-ca-bundle",
    ),
    pytest.param(
        edit(RDS, "      db_user_template: iam_{scope}\n", ""),
        [
            "policy.yaml:7: targets.app.rds_iam: without an admin DSN give exactly one of "
            "db_user, db_user_template"
        ],
        id="no-user",
    ),
    pytest.param(
        edit(RDS, "db_user_template: iam_{scope}", "db_user_template: iam_{team}"),
        [
            "policy.yaml:9: targets.app.rds_iam.db_user_template: 'iam_{team}': only {scope} "
            "may be filled into a user name template"
        ],
        id="template-field",
    ),
    pytest.param(
        edit(RDS, "    host: app", "    admin_dsn_env: A\n    host: app"),
        [
            "policy.yaml:10: targets.app.rds_iam.db_user_template: with an admin DSN every "
            "session gets a role of its own in rds_iam; remove db_user_template",
            "policy.yaml:13: targets.app.scopes.read.grants: required key is missing",
        ],
        id="user-with-dsn",
    ),
    pytest.param(
        edit(RDS, "    host: app", "    sslmode: require\n    host: app"),
        [
            "policy.yaml:6: targets.app.sslmode: an rds-iam target needs verify-full or "
            "verify-ca: the IAM token is sent as a password, and only to a server whose "
            "certificate was checked"
        ],
        id="sslmode-require",
    ),
    pytest.param(
        edit(RDS, "    host: app", "    sslrootcert: ca.pem\n    host: app"),
        [
            "policy.yaml:6: targets.app.sslrootcert: "
            "an rds-iam target names its CA in rds_iam.ca_bundle"
        ],
        id="sslrootcert",
    ),
    pytest.param(
        edit(RDS, "    issuer: rds-iam\n", "    issuer: rds-iam\n    vault: {}\n"),
        ["policy.yaml:6: targets.app.vault: only for targets with issuer: vault"],
        id="vault-block-on-rds",
    ),
    pytest.param(
        edit(RDS, RDS_BLOCK, ""),
        ["policy.yaml:3: targets.app.rds_iam: required key is missing (issuer: rds-iam)"],
        id="no-rds-block",
    ),
]


@pytest.mark.parametrize(("text", "expected"), VAULT_ERRORS + RDS_ERRORS)
def test_errors_name_file_line_and_key(text: str, expected: list[str]) -> None:
    assert problems_of(text) == expected
