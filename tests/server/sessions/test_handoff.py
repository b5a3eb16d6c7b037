"""A session credential sealed with its ticket opens with that ticket only, unaltered."""

from __future__ import annotations

import pytest

from server.sessions.handoff import SealBroken, open_sealed, seal

TICKET = "dbt_" + "a" * 43
PAYLOAD = {"username": "dba_dev_s1", "password": "pw-Secret-1", "lease_id": None, "agent": False}


def test_the_ticket_opens_what_it_sealed() -> None:
    sealed = seal(TICKET, PAYLOAD)
    assert open_sealed(TICKET, sealed) == PAYLOAD


def test_the_sealed_text_shows_neither_the_password_nor_the_role() -> None:
    sealed = seal(TICKET, PAYLOAD)
    assert "pw-Secret-1" not in sealed and "dba_dev_s1" not in sealed
    assert seal(TICKET, PAYLOAD) != sealed, "a nonce of its own each time"


def test_another_ticket_opens_nothing() -> None:
    with pytest.raises(SealBroken, match="does not open with this ticket"):
        open_sealed("dbt_" + "b" * 43, seal(TICKET, PAYLOAD))


@pytest.mark.parametrize("position", [3, 10, 30, -5])
def test_a_changed_character_fails_to_open(position: int) -> None:
    sealed = seal(TICKET, PAYLOAD)
    changed = sealed[position]
    flipped = sealed[:position] + ("A" if changed != "A" else "B") + sealed[position + 1 :]
    with pytest.raises(SealBroken):
        open_sealed(TICKET, flipped)


@pytest.mark.parametrize("text", ["", "v2.abc", "v1.", "v1.!!!", "v1.AAAA"])
def test_what_is_not_a_sealed_credential_fails_to_open(text: str) -> None:
    with pytest.raises(SealBroken):
        open_sealed(TICKET, text)
