"""Secrets the store keeps, sealed with the store key: on SQLite and PostgreSQL,
read back from the raw tables as someone with a copy of the store would."""

from __future__ import annotations

import base64
import os
import stat
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa

from server.credentials.base import Lease
from server.store import tables as t
from server.store.db import Store, StoreLeaseBook, utcnow
from server.store.sealing import StoreKey, StoreKeyError, StoreKeys, create_key_file
from tests.fix_store import found_in_clear, new_keys

LEASE_ID = "database/creds/readonly/3kD9xq2LwP0aZ1cV7mTnR8sY"


def a_lease(lease_id: str = LEASE_ID, user: str = "v-token-readonly-x1") -> Lease:
    return Lease(lease_id, user, "s-1", datetime.now(UTC) + timedelta(hours=1), 16_384)


def reopened(store: Store, keys: StoreKeys | None) -> Store:
    return Store(store.engine, keys)


def test_a_kept_lease_id_is_sealed_and_reads_back(any_store: Store) -> None:
    book = StoreLeaseBook(any_store, "demo")
    book.remember(a_lease())
    assert found_in_clear(any_store, LEASE_ID, LEASE_ID.rsplit("/", 1)[1]) == []
    assert [lease.lease_id for lease in book.outstanding()] == [LEASE_ID]
    found = book.find("v-token-readonly-x1")
    assert found is not None and found.lease_id == LEASE_ID
    book.mark_revoked(LEASE_ID)
    assert book.outstanding() == []


def test_a_copy_of_the_store_without_the_key_gives_nothing(any_store: Store) -> None:
    StoreLeaseBook(any_store, "demo").remember(a_lease())
    with pytest.raises(StoreKeyError, match="no store key"):
        StoreLeaseBook(reopened(any_store, None), "demo").outstanding()
    # Another key file's key: the error names the key the secret needs.
    other = StoreLeaseBook(reopened(any_store, new_keys("k9")), "demo")
    with pytest.raises(StoreKeyError, match="store key 't1', which test keys k9 does not hold"):
        other.outstanding()


def test_a_wrong_key_under_the_same_id_is_refused_naming_it(any_store: Store) -> None:
    any_store.check_keys()
    StoreLeaseBook(any_store, "demo").remember(a_lease())
    impostor = reopened(any_store, new_keys("t1"))
    with pytest.raises(StoreKeyError, match="store key 't1' in test keys t1 is not the key"):
        impostor.check_keys()
    # Even without the start-up check, nothing opens.
    with pytest.raises(StoreKeyError, match="sealed with store key 't1' does not open"):
        StoreLeaseBook(impostor, "demo").outstanding()


def test_tampered_ciphertext_is_refused(any_store: Store) -> None:
    StoreLeaseBook(any_store, "demo").remember(a_lease())
    c = t.credential_leases.c
    with any_store.tx() as conn:
        sealed = conn.execute(sa.select(c.lease_sealed)).scalar_one()
        prefix, body = sealed.rsplit(":", 1)
        raw = bytearray(base64.urlsafe_b64decode(body))
        raw[20] ^= 1
        conn.execute(
            t.credential_leases.update().values(
                lease_sealed=f"{prefix}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
            )
        )
    with pytest.raises(StoreKeyError, match="does not open"):
        StoreLeaseBook(any_store, "demo").outstanding()


def test_a_sealed_text_opens_only_for_what_it_was_sealed_as() -> None:
    keys = new_keys()
    sealed = keys.seal("credential_leases.lease_id", LEASE_ID)
    assert keys.open("credential_leases.lease_id", sealed) == LEASE_ID
    with pytest.raises(StoreKeyError, match="does not open"):
        keys.open("sessions.handoff", sealed)


def test_a_broker_without_a_key_keeps_no_lease(any_store: Store) -> None:
    with pytest.raises(StoreKeyError, match="no store key"):
        StoreLeaseBook(reopened(any_store, None), "demo").remember(a_lease())
    assert any_store.secrets_at_rest() == {}


def test_leases_kept_in_clear_are_sealed_in_place_once_a_key_is_given(any_store: Store) -> None:
    # As a broker from before sealing left them.
    now = utcnow()
    with any_store.tx() as conn:
        conn.execute(
            t.credential_leases.insert().values(
                lease_id=LEASE_ID,
                target="demo",
                session_id="s-1",
                db_user="v-old",
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
    assert any_store.secrets_at_rest() == {"": 1}
    assert any_store.seal_at_rest() == 1
    assert found_in_clear(any_store, LEASE_ID) == []
    assert any_store.secrets_at_rest() == {"t1": 1}
    assert [lease.lease_id for lease in StoreLeaseBook(any_store, "demo").outstanding()] == [
        LEASE_ID
    ]
    assert any_store.seal_at_rest() == 0


def test_rekey_moves_every_secret_to_the_newest_key(any_store: Store) -> None:
    assert any_store.keys is not None
    old = any_store.keys.newest
    StoreLeaseBook(any_store, "demo").remember(a_lease())
    new = StoreKey("t2", os.urandom(32))
    rotated = reopened(any_store, StoreKeys([new, old], "rotated"))
    rotated.check_keys()
    # The newest seals; the old one still opens what it sealed.
    StoreLeaseBook(rotated, "demo").remember(a_lease("database/creds/readonly/second", "v-2"))
    assert rotated.secrets_at_rest() == {"t1": 1, "t2": 1}
    assert rotated.seal_at_rest(rekey=True) == 1
    assert rotated.secrets_at_rest() == {"t2": 2}
    only_new = StoreLeaseBook(reopened(any_store, StoreKeys([new], "new only")), "demo")
    assert sorted(lease.lease_id for lease in only_new.outstanding()) == sorted(
        [LEASE_ID, "database/creds/readonly/second"]
    )


def test_key_files_are_made_private_and_read_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    create_key_file(path, "a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_key_file(path, "b")
    older = path.read_text()
    path.write_text(f"b {base64.urlsafe_b64encode(os.urandom(32)).decode()}\n{older}")
    assert StoreKeys.load(path).ids == ("b", "a")
    path.write_text("a c2hvcnQ=\n")
    with pytest.raises(StoreKeyError, match="line 1: key 'a' is not 32 bytes"):
        StoreKeys.load(path)


def test_an_upgraded_store_has_its_clear_leases_sealed_when_a_broker_starts_with_a_key(
    any_store: Store, tmp_path: Path
) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("server.store") / "migrations"))
    with any_store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0012")
        # What a broker from before sealing kept.
        conn.execute(
            sa.text(
                "INSERT INTO credential_leases (lease_id, target, session_id, db_user, "
                "created_at, expires_at) VALUES (:id, 'demo', 's-1', 'v-old', :now, :until)"
            ),
            {"id": LEASE_ID, "now": utcnow(), "until": utcnow() + timedelta(hours=1)},
        )
    url = any_store.engine.url.render_as_string(hide_password=False)
    key_file = tmp_path / "store.key"
    create_key_file(key_file, "k1")
    started = runtime_store(url, key_file)
    try:
        assert started.at_head()
        assert found_in_clear(started, LEASE_ID) == []
        assert started.secrets_at_rest() == {"k1": 1}
        (lease,) = StoreLeaseBook(started, "demo").outstanding()
        assert lease.lease_id == LEASE_ID
    finally:
        started.close()
    # The same id with another key: the broker does not start, and says which key.
    key_file.unlink()
    create_key_file(key_file, "k1")
    with pytest.raises(StoreKeyError, match=f"store key 'k1' in {key_file} is not the key"):
        runtime_store(url, key_file)


def test_a_broker_without_a_key_does_not_start_on_a_store_with_leases(any_store: Store) -> None:
    from server.policy import parse_policy
    from server.runtime import _refuse_unkeyed

    policy = parse_policy(
        "version: 1\ntargets:\n  demo:\n    database: app\n    admin_dsn_env: X\n"
        "    scopes:\n      read:\n        max_ttl: 1h\n        grants: [r]\n"
        "        allow:\n          groups: [dev]\n",
        "policy.yaml",
    )
    unkeyed = reopened(any_store, None)
    _refuse_unkeyed(unkeyed, policy)  # nothing to seal: it starts
    StoreLeaseBook(any_store, "demo").remember(a_lease())
    with pytest.raises(StoreKeyError, match="the store keeps Vault leases"):
        _refuse_unkeyed(reopened(any_store, None), policy)


def runtime_store(url: str, key_file: Path) -> Store:
    from server.runtime import _open_store

    return _open_store(url, key_file)
