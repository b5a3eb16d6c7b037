"""The vault issuer against a real OpenBao dev server and the test PostgreSQL cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt as pyjwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.credentials.base import KeepsLeases
from server.credentials.vault import VaultIssuer, VaultLogin
from server.demo.provision import DemoTarget
from server.errors import Conflict, Forbidden, Unavailable
from server.pgcluster import free_port
from server.policy.model import VaultAuth, VaultAuthMethod, VaultSettings
from server.store.db import Store, StoreLeaseBook
from tests.fix_store import new_keys
from tests.fix_vault import VaultDemo

Admin = psycopg.Connection[tuple[object, ...]]


def settings(demo: VaultDemo, *, role: str = "read", **auth: object) -> VaultSettings:
    method = auth.pop("method", VaultAuthMethod.TOKEN)
    if method is VaultAuthMethod.TOKEN and not auth:
        auth = {"token_file": demo.token_file}
    return VaultSettings(
        address=demo.address,
        role=role,
        auth=VaultAuth(method=method, **auth),  # type: ignore[arg-type]
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'store.db'}", new_keys())
    try:
        yield s
    finally:
        s.close()


def make_issuer(
    store: Store, vs: VaultSettings, admin_dsn: str | None = None, login: VaultLogin | None = None
) -> VaultIssuer:
    issuer = VaultIssuer(vs, admin_dsn=admin_dsn, login=login)
    assert isinstance(issuer, KeepsLeases)
    issuer.keep_leases_in(StoreLeaseBook(store, "demo"))
    return issuer


def soon(minutes: int = 30) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def role_exists(conn: Admin, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def login_as(demo: VaultDemo, user: str, password: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=demo.host,
        port=demo.port,
        dbname=demo.database,
        user=user,
        password=password,
        autocommit=True,
        connect_timeout=10,
    )


def test_issue_then_revoke_with_an_admin_dsn(
    vault_demo: VaultDemo, demo_target: DemoTarget, store: Store, admin_conn: Admin
) -> None:
    issuer = make_issuer(store, settings(vault_demo), demo_target.admin_dsn)
    cred = issuer.issue(
        identity="alice", session_id="s-1", grants=(), valid_until=soon(), scope="r"
    )
    assert cred.lease_id and cred.lease_id.startswith("database/creds/read/")
    with login_as(vault_demo, cred.username, cred.password) as conn:
        row = conn.execute("select current_user, count(*) > 0 from customers").fetchone()
        assert row == (cred.username, True)
    (lease,) = StoreLeaseBook(store, "demo").outstanding()
    assert (lease.lease_id, lease.username, lease.session_id) == (
        cred.lease_id,
        cred.username,
        "s-1",
    )
    assert lease.role_oid is not None
    assert [(m.name, m.session_id) for m in issuer.list_managed()] == [(cred.username, "s-1")]
    assert vault_demo.lease_known(cred.lease_id)

    res = issuer.revoke(cred.username)
    assert (res.dropped, res.verified) == (True, True), res.detail
    assert not role_exists(admin_conn, cred.username)
    assert not vault_demo.lease_known(cred.lease_id)
    assert issuer.list_managed() == []
    again = issuer.revoke(cred.username)
    assert again.verified and "no outstanding lease" in again.detail


def test_revoke_cuts_an_open_connection(
    vault_demo: VaultDemo, demo_target: DemoTarget, store: Store, admin_conn: Admin
) -> None:
    issuer = make_issuer(store, settings(vault_demo), demo_target.admin_dsn)
    cred = issuer.issue(identity="bob", session_id="s-2", grants=(), valid_until=soon())
    conn = login_as(vault_demo, cred.username, cred.password)
    failure: list[BaseException] = []

    def long_query() -> None:
        try:
            conn.execute("select pg_sleep(30)")
        except psycopg.Error as exc:
            failure.append(exc)

    worker = threading.Thread(target=long_query)
    worker.start()
    time.sleep(0.3)
    res = issuer.revoke(cred.username)
    worker.join(10)
    assert not worker.is_alive()
    assert failure and isinstance(failure[0], psycopg.OperationalError)
    assert res.terminated_backends >= 1 and res.verified
    assert not role_exists(admin_conn, cred.username)
    conn.close()


def test_without_an_admin_dsn_vault_revokes_and_its_statements_drop_the_role(
    vault_demo: VaultDemo, store: Store, admin_conn: Admin
) -> None:
    issuer = make_issuer(store, settings(vault_demo))
    cred = issuer.issue(identity="carol", session_id="s-3", grants=(), valid_until=soon())
    (lease,) = StoreLeaseBook(store, "demo").outstanding()
    assert lease.role_oid is None
    with login_as(vault_demo, cred.username, cred.password) as conn:
        conn.execute("select 1")
        res = issuer.revoke(cred.username)
        # The role's revocation statements terminate backends; the broker could not.
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    assert res.verified and "no admin DSN" in res.detail
    assert not vault_demo.lease_known(cred.lease_id or "")
    assert not role_exists(admin_conn, cred.username)


def test_a_lease_lookup_vault_refuses_does_not_count_as_verified(
    vault_demo: VaultDemo, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    issuer = make_issuer(store, settings(vault_demo))
    cred = issuer.issue(identity="dave", session_id="s-3b", grants=(), valid_until=soon())
    call = issuer.vault.call

    def no_lookup(fn: object, what: str) -> object:
        if what == "look up a lease":
            raise Forbidden("Vault at test refused to let the broker look up a lease")
        return call(fn, what)  # type: ignore[arg-type]

    monkeypatch.setattr(issuer.vault, "call", no_lookup)
    res = issuer.revoke(cred.username)
    assert not res.verified and "not checked" in res.detail
    assert not vault_demo.lease_known(cred.lease_id or "")


def test_vault_unreachable_is_unavailable_and_nothing_is_recorded(store: Store) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    vs = VaultSettings(
        address=address,
        role="read",
        auth=VaultAuth(method=VaultAuthMethod.TOKEN, token_env="DBACCESS_TEST_VAULT_TOKEN"),
    )
    issuer = make_issuer(
        store, vs, login=VaultLogin(vs, environ={"DBACCESS_TEST_VAULT_TOKEN": "x"})
    )
    with pytest.raises(Unavailable) as caught:
        issuer.issue(identity="dave", session_id="s-4", grants=(), valid_until=soon())
    assert f"Vault at {address} is unreachable (Connection refused)" in caught.value.message
    assert StoreLeaseBook(store, "demo").outstanding() == []


def test_a_token_without_the_policy_is_refused_clearly(vault_demo: VaultDemo, store: Store) -> None:
    weak = vault_demo.write_secret("weak-token", vault_demo.token_with("default"))
    issuer = make_issuer(store, settings(vault_demo, token_file=weak))
    with pytest.raises(Forbidden) as caught:
        issuer.issue(identity="erin", session_id="s-5", grants=(), valid_until=soon())
    assert "read database/creds/read" in caught.value.message
    assert "permission denied" in caught.value.message
    assert StoreLeaseBook(store, "demo").outstanding() == []


def test_a_lease_shorter_than_the_session_is_renewed_to_its_deadline(
    vault_demo: VaultDemo, store: Store
) -> None:
    issuer = make_issuer(store, settings(vault_demo, role="short"))
    cred = issuer.issue(
        identity="frank",
        session_id="s-6",
        grants=(),
        valid_until=soon(minutes=1) + timedelta(seconds=40),
    )
    ttl = vault_demo.server.client().sys.read_lease(cred.lease_id)["data"]["ttl"]
    assert ttl >= 90, "the 1m default was renewed to cover the 100s session"
    issuer.revoke(cred.username)


def test_a_session_longer_than_the_role_allows_is_refused_and_leaves_nothing(
    vault_demo: VaultDemo, store: Store, admin_conn: Admin
) -> None:
    before = vault_demo.server.bao("list", "sys/leases/lookup/database/creds/short").stdout
    issuer = make_issuer(store, settings(vault_demo, role="short"))
    with pytest.raises(Conflict) as caught:
        issuer.issue(identity="gina", session_id="s-7", grants=(), valid_until=soon(minutes=30))
    assert "grants leases of at most" in caught.value.message
    assert StoreLeaseBook(store, "demo").outstanding() == []
    after = vault_demo.server.bao("list", "sys/leases/lookup/database/creds/short").stdout
    assert after == before
    left = admin_conn.execute(
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%-short-%'"
    ).fetchone()
    assert left == (0,)


def test_scope_picks_the_vault_role(vault_demo: VaultDemo, store: Store) -> None:
    issuer = make_issuer(store, settings(vault_demo, role="{scope}"))
    cred = issuer.issue(
        identity="hal", session_id="s-8", grants=(), valid_until=soon(), scope="read"
    )
    assert cred.lease_id and cred.lease_id.startswith("database/creds/read/")
    issuer.revoke(cred.username)


def test_token_is_renewed_when_its_ttl_runs_low(vault_demo: VaultDemo, store: Store) -> None:
    token = vault_demo.token_with("dbaccess-broker", ttl="30s", explicit_max_ttl="10m")
    vs = settings(vault_demo, token_file=vault_demo.write_secret("short-token", token))
    now = [1000.0]
    login = VaultLogin(vs, clock=lambda: now[0])
    issuer = make_issuer(store, vs, login=login)
    first = issuer.issue(identity="ivy", session_id="s-9", grants=(), valid_until=soon())
    lookup = vault_demo.server.client().auth.token.lookup(token)["data"]
    assert not lookup.get("last_renewal_time")
    now[0] += 19  # 11s of 30s left: more than a third, no renewal yet
    issuer.terminate_backends(first.username)
    second = issuer.issue(identity="ivy", session_id="s-10", grants=(), valid_until=soon())
    assert login.renewals == 0
    now[0] += 2  # 9s left: under a third
    issuer.revoke(first.username)
    assert (login.renewals, login.logins) == (1, 1)
    lookup = vault_demo.server.client().auth.token.lookup(token)["data"]
    assert lookup.get("last_renewal_time")
    issuer.revoke(second.username)
    assert StoreLeaseBook(store, "demo").outstanding() == []


def test_approle_login_and_login_again_when_the_token_cannot_be_renewed(
    vault_demo: VaultDemo, store: Store
) -> None:
    root = vault_demo.server.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.auth.approle.create_or_update_approle(
        "dbaccess", token_policies=["dbaccess-broker"], token_ttl="4s", token_max_ttl="4s"
    )
    role_id = root.auth.approle.read_role_id("dbaccess")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("dbaccess")["data"]["secret_id"]
    vs = settings(
        vault_demo,
        method=VaultAuthMethod.APPROLE,
        role_id=role_id,
        secret_id_file=vault_demo.write_secret("secret-id", secret_id),
    )
    login = VaultLogin(vs)
    issuer = make_issuer(store, vs, login=login)
    cred = issuer.issue(identity="jo", session_id="s-11", grants=(), valid_until=soon())
    time.sleep(4.2)  # the AppRole token has expired and cannot be renewed
    res = issuer.revoke(cred.username)
    assert res.verified
    assert login.logins == 2


def test_jwt_login(vault_demo: VaultDemo, store: Store) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    root = vault_demo.server.client()
    if "jwt/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("jwt")
    root.auth.jwt.configure(
        jwt_validation_pubkeys=[public.decode()], bound_issuer="https://ci.test"
    )
    root.auth.jwt.create_role(
        "dbaccess",
        role_type="jwt",
        user_claim="sub",
        bound_audiences=["vault"],
        token_policies=["dbaccess-broker"],
        allowed_redirect_uris=[],
    )
    now = int(time.time())
    token = pyjwt.encode(
        {
            "iss": "https://ci.test",
            "aud": "vault",
            "sub": "system:serviceaccount:db:broker",
            "iat": now,
            "exp": now + 600,
        },
        key,
        algorithm="RS256",
    )
    vs = settings(
        vault_demo,
        method=VaultAuthMethod.JWT,
        jwt_file=vault_demo.write_secret("jwt", token),
        jwt_role="dbaccess",
    )
    issuer = make_issuer(store, vs)
    cred = issuer.issue(identity="kim", session_id="s-12", grants=(), valid_until=soon())
    with login_as(vault_demo, cred.username, cred.password) as conn:
        assert conn.execute("select current_user").fetchone() == (cred.username,)
    assert issuer.revoke(cred.username).verified


def test_reaper_view_of_leases_names_their_sessions(vault_demo: VaultDemo, store: Store) -> None:
    issuer = make_issuer(store, settings(vault_demo))
    cred = issuer.issue(identity="lee", session_id="s-13", grants=(), valid_until=soon())
    # A second issuer over the same store: what a restarted broker sees.
    after_restart = make_issuer(store, settings(vault_demo))
    (managed,) = after_restart.list_managed()
    assert (managed.name, managed.session_id) == (cred.username, "s-13")
    assert after_restart.revoke(managed.name).verified
    assert not vault_demo.lease_known(cred.lease_id or "")
