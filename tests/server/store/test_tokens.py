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


# (first token: identity, kind, owner), (then: identity, kind, owner), refused?
CLASHES = [
    # A person's (or service's) name made an agent: the agent would use the
    # person's approved grants and reviews, which are bound to a name.
    (("bob", "user", None), ("bob", "agent", "alice"), True),
    (("ci", "service", None), ("ci", "agent", "alice"), True),
    (("bob", "web", None), ("bob", "agent", "alice"), True),
    # An agent's name logging in as a person would decide as one.
    (("helper", "agent", "alice"), ("helper", "user", None), True),
    (("helper", "agent", "alice"), ("helper", "web", None), True),
    (("helper", "agent", "alice"), ("helper", "workload", None), True),
    # An agent acting for an agent: nobody would be accountable.
    (("helper", "agent", "alice"), ("sub", "agent", "helper"), True),
    # What stays allowed: more tokens of the same kind, an agent per owner.
    (("helper", "agent", "alice"), ("helper", "agent", "alice"), False),
    (("helper", "agent", "alice"), ("helper", "agent", "bob"), False),
    (("bob", "user", None), ("bob", "web", None), False),
    (("bob", "user", None), ("bob-bot", "agent", "bob"), False),
]


@pytest.mark.parametrize(("first", "then", "refused"), CLASHES)
def test_agent_names_and_other_names_never_mix(
    store: Store,
    first: tuple[str, str, str | None],
    then: tuple[str, str, str | None],
    refused: bool,
) -> None:
    from server.store.db import IdentityClash

    store.create_token(first[0], (), first[1], timedelta(hours=1), owner=first[2])
    if refused:
        with pytest.raises(IdentityClash):
            store.create_token(then[0], (), then[1], timedelta(hours=1), owner=then[2])
        assert len(store.list_tokens(include_inactive=True)) == 1
    else:
        store.create_token(then[0], (), then[1], timedelta(hours=1), owner=then[2])
