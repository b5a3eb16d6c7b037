"""Reading policy files: the typed result, the defaults, and an error for each kind of mistake."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from server.errors import InvalidInput
from server.policy import (
    Issuer,
    PolicyError,
    SslMode,
    load_policy,
    parse_policy,
)

# Line numbers matter: the error table below refers to them.
BASE = textwrap.dedent(
    """\
    version: 1
    groups:
      dba: [alice]
    targets:
      demo:
        description: Demo database
        database: demo
        admin_dsn_env: DEMO_ADMIN_DSN
        scopes:
          read:
            grants: [demo_read]
            max_ttl: 8h
            default_ttl: 1h
            allow:
              groups: [dev, dba]
              identities: [carol]
    """
)

ALLOW_BLOCK = "allow:\n          groups: [dev, dba]\n          identities: [carol]\n"


def edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml", base_dir=Path("/etc/dbaccess"))
    return [str(p) for p in caught.value.problems]


def test_base_document_reads_into_typed_values() -> None:
    policy = parse_policy(BASE, "policy.yaml", base_dir=Path("/etc/dbaccess"))
    assert policy.source == "policy.yaml"
    assert dict(policy.groups) == {"dba": frozenset({"alice"})}
    target = policy.targets["demo"]
    assert (target.name, target.database, target.description) == ("demo", "demo", "Demo database")
    assert target.issuer is Issuer.POSTGRES
    assert (target.admin_dsn, target.admin_dsn_env, target.admin_dsn_file) == (
        None,
        "DEMO_ADMIN_DSN",
        None,
    )
    assert (target.sslmode, target.sslrootcert) == (None, None)
    scope = target.scopes["read"]
    assert scope.name == "read"
    assert scope.grants == ("demo_read",)
    assert (scope.max_ttl, scope.default_ttl) == (timedelta(hours=8), timedelta(hours=1))
    assert scope.allow_groups == frozenset({"dev", "dba"})
    assert scope.allow_identities == frozenset({"carol"})


def test_everything_optional_and_paths_relative_to_the_policy_file(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        version: 1
        targets:
          prod-db:
            database: app
            issuer: postgres
            admin_dsn_file: secrets/prod.dsn
            sslmode: verify-full
            sslrootcert: ../ca/root.crt
            scopes:
              write:
                grants: [app_write, app_read]
                max_ttl: 30m
                allow: {identities: [bob]}
              nobody:
                grants: [app_read]
                max_ttl: 1d
                allow: {groups: [], identities: []}
        """
    )
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "policy.yaml"
    path.write_text(text)
    policy = load_policy(path)
    target = policy.targets["prod-db"]
    assert target.description is None
    assert target.admin_dsn_file == tmp_path / "conf" / "secrets" / "prod.dsn"
    assert target.sslrootcert == tmp_path / "ca" / "root.crt"
    assert target.sslmode is SslMode.VERIFY_FULL
    assert dict(policy.groups) == {}
    write = target.scopes["write"]
    assert write.grants == ("app_write", "app_read")
    # default_ttl is min(1h, max_ttl) when not given
    assert write.default_ttl == timedelta(minutes=30)
    assert target.scopes["nobody"].default_ttl == timedelta(hours=1)
    assert target.scopes["nobody"].allow_groups == frozenset()
    assert target.scopes["nobody"].allow_identities == frozenset()
    assert list(target.scopes) == ["write", "nobody"]


def test_base_dir_defaults_to_the_directory_of_the_source() -> None:
    text = edited("admin_dsn_env: DEMO_ADMIN_DSN", "admin_dsn_file: demo.dsn")
    policy = parse_policy(text, "/srv/policies/policy.yaml")
    assert policy.targets["demo"].admin_dsn_file == Path("/srv/policies/demo.dsn")


def test_scalars_stay_text_whatever_yaml_1_1_thinks() -> None:
    text = edited("identities: [carol]", "identities: [no, on, 'yes', 10:30, null_user]")
    scope = parse_policy(text, "policy.yaml").targets["demo"].scopes["read"]
    assert scope.allow_identities == frozenset({"no", "on", "yes", "10:30", "null_user"})


def test_anchors_and_aliases_can_share_lists() -> None:
    text = edited("groups: [dev, dba]", "groups: &readers [dev, dba]") + (
        "      read-too:\n"
        "        grants: [demo_read]\n"
        "        max_ttl: 1h\n"
        "        allow:\n"
        "          groups: *readers\n"
    )
    scopes = parse_policy(text, "policy.yaml").targets["demo"].scopes
    assert scopes["read-too"].allow_groups == scopes["read"].allow_groups


def test_policy_is_immutable() -> None:
    policy = parse_policy(BASE, "policy.yaml")
    with pytest.raises(TypeError):
        policy.targets["x"] = policy.targets["demo"]  # type: ignore[index]


def test_inline_admin_dsn_is_not_in_repr() -> None:
    text = edited(
        "admin_dsn_env: DEMO_ADMIN_DSN",
        "admin_dsn: postgresql://admin:s3cret@127.0.0.1:5432/demo",
    )
    target = parse_policy(text, "policy.yaml").targets["demo"]
    assert target.admin_dsn == "postgresql://admin:s3cret@127.0.0.1:5432/demo"
    assert "s3cret" not in repr(target)


ERROR_CASES = [
    pytest.param(
        edited("max_ttl: 8h", "max_tll: 8h"),
        [
            "policy.yaml:12: targets.demo.scopes.read.max_tll: "
            "unknown key (did you mean 'max_ttl'?)",
            "policy.yaml:10: targets.demo.scopes.read.max_ttl: required key is missing",
        ],
        id="misspelt-key",
    ),
    pytest.param(
        edited("max_ttl: 8h", "max_ttl: 8 hours"),
        [
            "policy.yaml:12: targets.demo.scopes.read.max_ttl: "
            "'8 hours' is not a duration (use e.g. 30m, 8h, 1d)"
        ],
        id="bad-duration",
    ),
    pytest.param(
        edited("max_ttl: 8h", "max_ttl: 8"),
        [
            "policy.yaml:12: targets.demo.scopes.read.max_ttl: "
            "'8' is not a duration: add a unit, e.g. 8m or 8s"
        ],
        id="bare-number-duration",
    ),
    pytest.param(
        edited("max_ttl: 8h", "max_ttl: 0s"),
        [
            "policy.yaml:12: targets.demo.scopes.read.max_ttl: "
            "'0s' is too short: a TTL must be longer than zero"
        ],
        id="zero-ttl",
    ),
    pytest.param(
        edited("default_ttl: 1h", "default_ttl: 9h"),
        ["policy.yaml:13: targets.demo.scopes.read.default_ttl: 9h is longer than max_ttl (8h)"],
        id="default-above-max",
    ),
    pytest.param(
        edited("    database: demo\n", ""),
        ["policy.yaml:5: targets.demo.database: required key is missing"],
        id="missing-database",
    ),
    pytest.param(
        edited("    database: demo\n", "    database: demo\n    database: other\n"),
        ["policy.yaml:8: targets.demo.database: duplicate key (first given at line 7)"],
        id="duplicate-key",
    ),
    pytest.param(
        edited("  dba: [alice]\n", "  dba: [alice]\n  dba: [bob]\n"),
        ["policy.yaml:4: groups.dba: duplicate key (first given at line 3)"],
        id="duplicate-group",
    ),
    pytest.param(
        "",
        ["policy.yaml:1: the file is empty (a policy needs 'version' and 'targets')"],
        id="empty-file",
    ),
    pytest.param(
        "# nothing but a comment\n\n",
        ["policy.yaml:1: the file is empty (a policy needs 'version' and 'targets')"],
        id="comments-only",
    ),
    pytest.param(
        edited("grants: [demo_read]", "grants: [demo_read"),
        [
            "policy.yaml:12: YAML syntax error: expected ',' or ']', but got ':' "
            "(while parsing a flow sequence)"
        ],
        id="yaml-syntax",
    ),
    pytest.param(
        edited("    database: demo", "\tdatabase: demo"),
        [
            "policy.yaml:7: YAML syntax error: found character '\\t' that cannot start any "
            "token (while scanning for the next token)"
        ],
        id="tab-indent",
    ),
    pytest.param(
        "- version: 1\n",
        ["policy.yaml:1: expected a mapping, got a list"],
        id="root-is-a-list",
    ),
    pytest.param(
        edited("version: 1", "version: 2"),
        ["policy.yaml:1: version: unsupported policy version '2' (this broker reads version 1)"],
        id="version-2",
    ),
    pytest.param(
        edited("version: 1\n", ""),
        ["policy.yaml:1: version: required key is missing"],
        id="missing-version",
    ),
    pytest.param(
        edited("targets:", "target:"),
        [
            "policy.yaml:4: target: unknown key (did you mean 'targets'?)",
            "policy.yaml:1: targets: required key is missing",
        ],
        id="misspelt-top-key",
    ),
    pytest.param(
        edited("grants: [demo_read]", "grants: demo_read"),
        ["policy.yaml:11: targets.demo.scopes.read.grants: expected a list, got 'demo_read'"],
        id="grants-not-a-list",
    ),
    pytest.param(
        edited("grants: [demo_read]", "grants: []"),
        [
            "policy.yaml:11: targets.demo.scopes.read.grants: "
            "list at least one database role to grant"
        ],
        id="grants-empty",
    ),
    pytest.param(
        edited("grants: [demo_read]", "grants: [demo_read, demo-write]"),
        [
            "policy.yaml:11: targets.demo.scopes.read.grants[1]: 'demo-write' is not a role name "
            "this broker grants (letters, digits, '_' and '$', not starting with a digit)"
        ],
        id="grant-not-an-identifier",
    ),
    pytest.param(
        edited("grants: [demo_read]", "grants: [demo_read, demo_read]"),
        ["policy.yaml:11: targets.demo.scopes.read.grants[1]: role 'demo_read' is listed twice"],
        id="grant-twice",
    ),
    pytest.param(
        edited("    database: demo", "    database: " + "d" * 64),
        [
            f"policy.yaml:7: targets.demo.database: '{'d' * 64}' is longer than "
            "PostgreSQL's 63-byte name limit"
        ],
        id="database-name-too-long",
    ),
    pytest.param(
        edited("    database: demo", "    database:"),
        ["policy.yaml:7: targets.demo.database: a value is required here"],
        id="database-empty",
    ),
    pytest.param(
        edited("    database: demo", "    database: [demo]"),
        ["policy.yaml:7: targets.demo.database: expected a single value, got a list"],
        id="database-a-list",
    ),
    pytest.param(
        edited("    database: demo", "    database: demo\n    issuer: vualt"),
        [
            "policy.yaml:8: targets.demo.issuer: 'vualt' is not a known issuer "
            "(one of: postgres, vault, rds-iam)"
        ],
        id="unknown-issuer",
    ),
    pytest.param(
        edited("    database: demo", "    database: demo\n    sslmode: on"),
        [
            "policy.yaml:8: targets.demo.sslmode: 'on' is not a known sslmode (one of: disable, "
            "allow, prefer, require, verify-ca, verify-full)"
        ],
        id="unknown-sslmode",
    ),
    pytest.param(
        edited("admin_dsn_env: DEMO_ADMIN_DSN", "admin_dsn_env: X\n    admin_dsn_file: x.dsn"),
        [
            "policy.yaml:5: targets.demo: give exactly one of admin_dsn, admin_dsn_env, "
            "admin_dsn_file (found admin_dsn_env and admin_dsn_file)"
        ],
        id="two-dsn-sources",
    ),
    pytest.param(
        edited("    admin_dsn_env: DEMO_ADMIN_DSN\n", ""),
        [
            "policy.yaml:5: targets.demo: give exactly one of admin_dsn, admin_dsn_env, "
            "admin_dsn_file"
        ],
        id="no-dsn-source",
    ),
    pytest.param(
        edited("admin_dsn_env: DEMO_ADMIN_DSN", "admin_dsn_env: DEMO-DSN"),
        [
            "policy.yaml:8: targets.demo.admin_dsn_env: "
            "'DEMO-DSN' is not an environment variable name"
        ],
        id="bad-env-name",
    ),
    pytest.param(
        edited(ALLOW_BLOCK, "allow: {}\n"),
        [
            "policy.yaml:14: targets.demo.scopes.read.allow: "
            "give groups, identities or both (empty lists mean nobody)"
        ],
        id="allow-empty-mapping",
    ),
    pytest.param(
        edited(ALLOW_BLOCK, "allow: [dev]\n"),
        ["policy.yaml:14: targets.demo.scopes.read.allow: expected a mapping, got a list"],
        id="allow-a-list",
    ),
    pytest.param(
        edited("      identities: [carol]\n", "      users: [carol]\n"),
        [
            "policy.yaml:16: targets.demo.scopes.read.allow.users: "
            "unknown key (expected one of: groups, identities)"
        ],
        id="allow-unknown-key",
    ),
    pytest.param(
        edited("identities: [carol]", "identities: [' carol']"),
        [
            "policy.yaml:16: targets.demo.scopes.read.allow.identities[0]: "
            "' carol' has leading/trailing spaces or control characters"
        ],
        id="identity-with-space",
    ),
    pytest.param(
        edited("  dba: [alice]", "  dba: alice"),
        ["policy.yaml:3: groups.dba: expected a list, got 'alice'"],
        id="group-members-not-a-list",
    ),
    pytest.param(
        edited("  demo:\n", "  demo db:\n"),
        [
            "policy.yaml:5: targets.demo db: 'demo db' is not a valid target name "
            "(letters, digits, '-' and '_', starting with a letter or digit, at most 63)"
        ],
        id="bad-target-name",
    ),
    pytest.param(
        edited("      read:\n", "      read.only:\n"),
        [
            "policy.yaml:10: targets.demo.scopes.read.only: 'read.only' is not a valid scope name "
            "(letters, digits, '-' and '_', starting with a letter or digit, at most 63)"
        ],
        id="bad-scope-name",
    ),
    pytest.param(
        "version: 1\ntargets:\n  demo:\n    database: demo\n    admin_dsn_env: X\n    scopes: {}\n",
        ["policy.yaml:6: targets.demo.scopes: a target needs at least one scope"],
        id="no-scopes",
    ),
    pytest.param(
        edited("admin_dsn_env: DEMO_ADMIN_DSN", "admin_dsn_env: !env DEMO_ADMIN_DSN"),
        ["policy.yaml:8: targets.demo.admin_dsn_env: YAML tags such as !env are not supported"],
        id="custom-tag",
    ),
    pytest.param(
        "base: &b {database: demo}\nversion: 1\ntargets:\n  demo:\n    <<: *b\n",
        [
            "policy.yaml:5: targets.demo: merge keys (<<) are not supported",
            "policy.yaml:1: base: unknown key "
            "(expected one of: groups, slack_users, targets, version, workload_identities)",
            "policy.yaml:4: targets.demo.database: required key is missing",
            "policy.yaml:4: targets.demo: give exactly one of admin_dsn, admin_dsn_env, "
            "admin_dsn_file",
            "policy.yaml:4: targets.demo.scopes: required key is missing",
        ],
        id="merge-key",
    ),
    pytest.param(
        "version: 1\ntargets: &t\n  demo: *t\n",
        [
            "policy.yaml:2: targets.demo: an alias refers to a value that contains it",
            "policy.yaml:3: targets.demo.database: required key is missing",
            "policy.yaml:3: targets.demo: give exactly one of admin_dsn, admin_dsn_env, "
            "admin_dsn_file",
            "policy.yaml:3: targets.demo.scopes: required key is missing",
        ],
        id="recursive-alias",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_errors_name_file_line_and_key(text: str, expected: list[str]) -> None:
    assert problems_of(text) == expected


def test_all_problems_are_reported_in_one_go() -> None:
    text = edited("max_ttl: 8h", "max_ttl: forever").replace("version: 1", "version: 3")
    text = text.replace("grants: [demo_read]", "grants: [1role]")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert [(p.line, p.path) for p in error.problems] == [
        (1, "version"),
        (11, "targets.demo.scopes.read.grants[0]"),
        (12, "targets.demo.scopes.read.max_ttl"),
    ]
    assert error.message.splitlines() == [str(p) for p in error.problems]
    assert str(error).startswith("policy.yaml:1: version: ")


def test_bad_inline_dsn_is_reported_without_its_password() -> None:
    text = edited("admin_dsn_env: DEMO_ADMIN_DSN", "admin_dsn: postgresql://u:s3cret@[::1")
    (problem,) = problems_of(text)
    assert problem.startswith("policy.yaml:8: targets.demo.admin_dsn: not a valid connection")
    assert "s3cret" not in problem


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "nope.yaml")
    assert caught.value.message == f"{tmp_path / 'nope.yaml'}: policy file not found"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"version: 1\ndescription: \xff\xfe\n")
    with pytest.raises(PolicyError, match="not UTF-8 text"):
        load_policy(path)


def test_errors_from_a_file_name_that_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(edited("max_ttl: 8h", "max_tll: 8h"))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}:12: targets.demo.scopes.read.max_tll: unknown key")
