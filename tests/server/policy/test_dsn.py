"""A target's admin DSN: from each kind of source, failing clearly, never showing the password."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from server.demo.provision import DemoTarget
from server.errors import Unavailable
from server.policy import SslMode, TargetPolicy, parse_policy, resolve_admin_dsn

DSN = "postgresql://dbaccess_admin:s3cret@127.0.0.1:5432/demo"


def target(**fields: object) -> TargetPolicy:
    return TargetPolicy(name="demo", database="demo", scopes=MappingProxyType({}), **fields)  # type: ignore[arg-type]


def test_inline() -> None:
    assert resolve_admin_dsn(target(admin_dsn=DSN)) == DSN


def test_environment_variable_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    t = target(admin_dsn_env="DEMO_ADMIN_DSN")
    monkeypatch.setenv("DEMO_ADMIN_DSN", DSN)
    assert resolve_admin_dsn(t) == DSN
    monkeypatch.setenv("DEMO_ADMIN_DSN", "host=127.0.0.1 dbname=demo")
    assert resolve_admin_dsn(t) == "host=127.0.0.1 dbname=demo"


@pytest.mark.parametrize("environ", [{}, {"DEMO_ADMIN_DSN": ""}, {"DEMO_ADMIN_DSN": "  "}])
def test_environment_variable_missing(environ: dict[str, str]) -> None:
    with pytest.raises(Unavailable) as caught:
        resolve_admin_dsn(target(admin_dsn_env="DEMO_ADMIN_DSN"), environ=environ)
    assert caught.value.message == "target 'demo': environment variable DEMO_ADMIN_DSN is not set"
    assert caught.value.hint is not None
    assert "DEMO_ADMIN_DSN" in caught.value.hint


def test_file_read_at_call_time(tmp_path: Path) -> None:
    path = tmp_path / "admin.dsn"
    t = target(admin_dsn_file=path)
    path.write_text(DSN + "\n")
    assert resolve_admin_dsn(t) == DSN
    path.write_text("host=127.0.0.1 dbname=other\n")
    assert resolve_admin_dsn(t) == "host=127.0.0.1 dbname=other"


def test_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "admin.dsn"
    with pytest.raises(Unavailable) as caught:
        resolve_admin_dsn(target(admin_dsn_file=path))
    assert caught.value.message == f"target 'demo': admin DSN file {path} does not exist"


def test_file_empty(tmp_path: Path) -> None:
    path = tmp_path / "admin.dsn"
    path.write_text("\n")
    with pytest.raises(Unavailable, match="is empty"):
        resolve_admin_dsn(target(admin_dsn_file=path))


def test_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot be read"):
        resolve_admin_dsn(target(admin_dsn_file=tmp_path))


@pytest.mark.parametrize(
    "content", ["postgresql://admin:s3cret@[::1", "host=x password=s3cret port"]
)
def test_malformed_dsn_is_not_echoed(tmp_path: Path, content: str) -> None:
    path = tmp_path / "admin.dsn"
    path.write_text(content)
    with pytest.raises(Unavailable) as caught:
        resolve_admin_dsn(target(admin_dsn_file=path))
    error = caught.value
    assert f"admin DSN from file {path} is not a valid connection string" in error.message
    assert "s3cret" not in error.message
    assert "s3cret" not in (error.hint or "")
    assert error.__cause__ is None
    assert error.__suppress_context__


def test_policy_ssl_settings_win_over_the_dsn(tmp_path: Path) -> None:
    t = target(
        admin_dsn=DSN + "?sslmode=disable",
        sslmode=SslMode.VERIFY_FULL,
        sslrootcert=tmp_path / "root.crt",
    )
    params = conninfo_to_dict(resolve_admin_dsn(t))
    assert params["sslmode"] == "verify-full"
    assert params["sslrootcert"] == str(tmp_path / "root.crt")
    assert params["password"] == "s3cret"
    assert params["dbname"] == "demo"


def test_resolved_dsn_from_a_policy_file_connects(tmp_path: Path, demo_target: DemoTarget) -> None:
    (tmp_path / "admin.dsn").write_text(demo_target.admin_dsn)
    text = (
        "version: 1\n"
        "targets:\n"
        "  demo:\n"
        "    database: demo\n"
        "    admin_dsn_file: admin.dsn\n"
        "    sslmode: disable\n"
        "    scopes:\n"
        "      read: {grants: [demo_read], max_ttl: 1h, allow: {groups: [dev]}}\n"
    )
    policy = parse_policy(text, str(tmp_path / "policy.yaml"))
    dsn = resolve_admin_dsn(policy.targets["demo"])
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute("SELECT current_database(), current_setting('ssl')").fetchone()
    assert row is not None
    assert row[0] == demo_target.database
