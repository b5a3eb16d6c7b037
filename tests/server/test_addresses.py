"""Loopback names and addresses: which hosts count as this machine's own."""

from __future__ import annotations

import pytest

from server.addresses import is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),  # noqa: S104
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("192.168.1.10", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1", False),
        ("broker.example.com", False),
        ("localhost.example.com", False),
        ("127.0.0.1.nip.io", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
