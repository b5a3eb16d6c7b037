"""Broker tokens and exchanged-token memory in a real store, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.store.db import Store, utcnow


@pytest.fixture
def store(any_store: Store) -> Store:
    """Each test runs on SQLite and on PostgreSQL (tests/fix_store.py)."""
    return any_store


def test_list_and_revoke_tokens(store: Store) -> None:
    _, svc = store.create_token("svc", ("ci",), "service", timedelta(days=1))
    _, user = store.create_token("alice@example.com", ("dev",), "user", timedelta(hours=8))
    _, old = store.create_token("gone", (), "service", timedelta(seconds=-1))
    assert [r.id for r in store.list_tokens()] == [user.id, svc.id]
    assert [r.id for r in store.list_tokens(kind="service")] == [svc.id]
    assert {r.id for r in store.list_tokens(include_inactive=True)} == {svc.id, user.id, old.id}

    assert store.revoke_token(svc.id) is True
    assert store.revoke_token(svc.id) is False  # once
    assert store.revoke_token("t-unknown") is False
    revoked = store.get_token(svc.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert not revoked.active(utcnow())
    assert [r.id for r in store.list_tokens()] == [user.id]
    assert revoked.to_json()["revoked_at"] is not None


def test_a_token_is_used_once_until_it_expires(store: Store) -> None:
    later = utcnow() + timedelta(minutes=5)
    assert store.use_once("k1", kind="workload", issuer="https://i", expires_at=later)
    assert not store.use_once("k1", kind="workload", issuer="https://i", expires_at=later)
    assert store.use_once("k2", kind="oidc", issuer="https://i", expires_at=later)


def test_expired_entries_are_pruned(store: Store) -> None:
    import sqlalchemy as sa

    from server.store import tables as t

    past = utcnow() - timedelta(seconds=1)
    assert store.use_once("old", kind="workload", issuer="https://i", expires_at=past)
    assert store.use_once("new", kind="workload", issuer="https://i", expires_at=utcnow())
    with store.tx() as conn:
        keys = set(conn.execute(sa.select(t.used_tokens.c.token_key)).scalars())
    assert keys == {"new"}
