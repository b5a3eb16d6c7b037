"""Every masking method through the real gateway, with psql and psycopg: ``clear``,
``redact``, ``partial`` (``keep_last`` and ``keep: domain``), ``hash`` with its key
in a ``key_file`` and in a ``key_env`` variable, and ``null``.

A ``hash`` rule used to pass ``policy check`` and then break every login to its
target ("the target database closed the connection during login"): the guard
built the session's rules a second time, without the key.  Here each key source
runs a broker of its own, and a key that goes missing is a clear error naming
the target and where the key was looked for.
"""

from __future__ import annotations

import hmac
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import BIN, Broker, demo_policy, new_broker
from tests.fix_session import held_session

pytestmark = pytest.mark.slow

KEY = b"0123456789abcdef-masking-test-key"
KEY_ENV = "DBACCESS_TEST_MASKING_KEY"
RULES = """\
      rules:
        - column: public.customers.email
          method: partial
          keep: domain
        - column: public.customers.card_number
          method: partial
          keep_last: 4
        - column: public.customers.phone
          method: hash
          length: 12
        - column: public.customers.full_name
          method: redact
        - pattern: "*_at"
          method: "null"
        - column: public.orders.created_at
          method: clear
      exempt: {groups: [dba]}
"""
COLUMNS = "email, card_number, phone, full_name, created_at, city"
SELECT = f"select {COLUMNS} from customers where id = 7"
CLEAR_SQL = SELECT.replace("created_at", "created_at::text")


def _policy(source: str) -> str:
    key = "key_file: masking.key" if source == "key_file" else f"key_env: {KEY_ENV}"
    return demo_policy(target=f"    masking:\n      {key}\n{RULES}")


@pytest.fixture(scope="module", params=["key_file", "key_env"])
def keyed_broker(request: pytest.FixtureRequest, demo_target: DemoTarget) -> Iterator[Broker]:
    source = str(request.param)
    b = new_broker(demo_target)
    b.data_dir.mkdir(parents=True, exist_ok=True)
    if source == "key_file":
        (b.data_dir / "masking.key").write_bytes(KEY + b"\n")
    else:
        b.server_env[KEY_ENV] = KEY.decode()
    try:
        b.start(policy=_policy(source))
        yield b
    finally:
        b.stop()
        b.kill()


@pytest.fixture(scope="module")
def clear_row(demo_target: DemoTarget) -> tuple[str, ...]:
    with psycopg.connect(demo_target.admin_dsn) as conn:
        row = conn.execute(CLEAR_SQL).fetchone()
    assert row is not None
    return tuple(str(v) for v in row)


def _expected(clear: tuple[str, ...]) -> list[str | None]:
    email, card, phone, _name, _created, city = clear
    digest = hmac.digest(KEY, phone.encode(), "sha256").hex()[:12]
    return ["***" + email[email.rfind("@") :], "***" + card[-4:], digest, "***", None, city]


def test_every_method_through_psql(keyed_broker: Broker, clear_row: tuple[str, ...]) -> None:
    with held_session(keyed_broker, "--scope", "read") as s:
        res = s.psql(SELECT)
        assert res.returncode == 0, res.stderr
        got = res.stdout.rstrip("\n").split("|")
    expected = ["" if v is None else v for v in _expected(clear_row)]
    assert got == expected
    for secret in clear_row[:5]:
        assert secret not in res.stdout


@pytest.mark.parametrize("binary", [False, True])
def test_every_method_through_psycopg(
    keyed_broker: Broker, clear_row: tuple[str, ...], binary: bool
) -> None:
    with held_session(keyed_broker, "--scope", "read") as s, psycopg.connect(s.dsn()) as conn:
        # Described before the Bind (prepare=True), so that the gateway can ask
        # for the text of the columns it masks from their text.
        cur = conn.cursor(binary=binary)
        row = cur.execute(SELECT.replace("id = 7", "id = %s"), (7,), prepare=True).fetchone()
    assert row is not None
    assert list(row) == _expected(clear_row)


def test_a_clear_rule_vouches_for_a_column_a_glob_masks(keyed_broker: Broker) -> None:
    with held_session(keyed_broker, "--scope", "read") as s:
        res = s.psql("select created_at is not null from orders order by id limit 1")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "t"
        res = s.psql("select created_at from orders order by id limit 1")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip()[:2] == "20", res.stdout


def test_equal_values_hash_alike(keyed_broker: Broker, demo_target: DemoTarget) -> None:
    with psycopg.connect(demo_target.admin_dsn) as conn:
        phone = conn.execute("select phone from customers where id = 3").fetchone()
    assert phone is not None
    with held_session(keyed_broker, "--scope", "read") as s:
        res = s.psql("select phone from customers where id in (3, 3, 4) order by id")
        assert res.returncode == 0, res.stderr
    lines = res.stdout.split()
    assert lines[0] == hmac.digest(KEY, str(phone[0]).encode(), "sha256").hex()[:12]
    assert len(set(lines)) == 2


@pytest.mark.parametrize("keyed_broker", ["key_file"], indirect=True)
def test_a_key_that_goes_missing_is_a_clear_error(keyed_broker: Broker) -> None:
    """The gateway reads the key at each login: without it, psql is told which
    target and which key source, never that the database failed.  (A broker's
    environment cannot change under it: key_env is tested at session start.)"""
    key_file = keyed_broker.data_dir / "masking.key"
    with held_session(keyed_broker, "--scope", "read") as s:
        key_file.rename(key_file.with_suffix(".away"))
        try:
            res = s.psql("select 1")
        finally:
            key_file.with_suffix(".away").rename(key_file)
        assert res.returncode != 0
        assert "target 'demo': masking key file" in res.stderr, res.stderr
        assert "cannot be read" in res.stderr
        assert "closed the connection" not in res.stderr
        # Back again: the same session logs in.
        assert s.psql("select 1").stdout.strip() == "1"


def test_a_session_without_its_key_is_refused_naming_the_key(demo_target: DemoTarget) -> None:
    b = new_broker(demo_target)
    try:
        b.start(policy=_policy("key_env"))  # KEY_ENV is not set for this broker
        # Said when the broker starts, too.
        assert f"masking: target 'demo': masking key from environment variable {KEY_ENV}" in (
            b.log()
        )
        res = b.cli("exec", "demo", "--scope", "read", "-c", "select 1")
        assert res.returncode == 7, res.stderr
        assert f"target 'demo': masking key from environment variable {KEY_ENV} is missing" in (
            res.stderr
        )
        # An exempt session needs no key: nothing is hashed for it.
        dba = b.token("root", "dev", "dba")
        res = b.cli("exec", "demo", "--scope", "read", "-c", "select 1", token=dba)
        assert res.returncode == 0, res.stderr
    finally:
        b.stop()
        b.kill()


def test_policy_check_checks_the_key(pg_tmp_dir: Path) -> None:
    policy = pg_tmp_dir / "policy.yaml"
    policy.write_text(_policy("key_file"))

    def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "dbaccess-server"), "policy", "check", str(policy), *args],
            capture_output=True, text=True, timeout=60, check=False, env=env,
        )  # fmt: skip

    res = check()
    assert res.returncode == 2
    assert "target 'demo': masking key file" in res.stderr and "cannot be read" in res.stderr
    (pg_tmp_dir / "masking.key").write_bytes(b"short\n")
    res = check()
    assert res.returncode == 2
    assert "shorter than 16 bytes" in res.stderr
    (pg_tmp_dir / "masking.key").write_bytes(KEY)
    assert check().returncode == 0
    # key_env: checked where the broker runs (--broker-env) only.
    policy.write_text(_policy("key_env"))
    assert check().returncode == 0
    res = check("--broker-env", env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 2
    assert f"environment variable {KEY_ENV} is missing" in res.stderr
    assert check("--broker-env", env={KEY_ENV: KEY.decode()}).returncode == 0
