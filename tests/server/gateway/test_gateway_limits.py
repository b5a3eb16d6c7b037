"""Admission limits with a fake clock: the cancel token buckets and the connection caps."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from server.config import ConfigError, load_config
from server.gateway.limits import CancelLimiter, ConnectionCaps, TokenBucket
from server.gateway.session import GatewayError
from server.sessions.service import TargetCaps


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)
    assert bucket.take(0.5)  # one token after half a second at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_token_bucket_ignores_a_clock_that_goes_back() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


def test_cancels_are_limited_per_address() -> None:
    lim = CancelLimiter(
        0.0, rate_per_address=1, burst_per_address=5, rate_global=100, burst_global=100
    )
    assert sum(lim.allow("10.0.0.1", 0.0) for _ in range(10)) == 5
    assert lim.refused == 5
    # Another sender is not held back by the first one's flood.
    assert sum(lim.allow("10.0.0.2", 0.0) for _ in range(3)) == 3
    assert lim.allow("10.0.0.1", 1.0)
    assert not lim.allow("10.0.0.1", 1.0)


def test_cancels_are_limited_globally() -> None:
    lim = CancelLimiter(
        0.0, rate_per_address=10, burst_per_address=10, rate_global=1, burst_global=8
    )
    allowed = sum(lim.allow(f"10.0.0.{i}", 0.0) for i in range(20))
    assert allowed == 8
    assert not lim.allow("10.0.0.99", 0.5)
    assert lim.allow("10.0.0.99", 1.0)


def test_a_refused_sender_does_not_use_up_the_global_bucket() -> None:
    lim = CancelLimiter(0.0, rate_per_address=1, burst_per_address=2, rate_global=1, burst_global=3)
    assert sum(lim.allow("a", 0.0) for _ in range(50)) == 2
    assert lim.allow("b", 0.0)  # one global token is left for someone else


def test_quiet_addresses_are_forgotten() -> None:
    lim = CancelLimiter(
        0.0, rate_per_address=1, burst_per_address=2, rate_global=1e6, burst_global=1e6
    )
    for i in range(1100):
        lim.allow(f"a{i}", 0.0)
    lim.allow("late", 10.0)
    assert len(lim.buckets) <= 2


def test_connection_caps_total_and_per_identity() -> None:
    caps = ConnectionCaps(total=3, per_identity=2)
    caps.admit("alice")
    caps.admit("alice")
    with pytest.raises(GatewayError) as info:
        caps.admit("alice")
    assert info.value.sqlstate == "53300"
    assert "alice" in info.value.message and info.value.hint
    caps.admit("bob")
    with pytest.raises(GatewayError) as info:
        caps.admit("carol")
    assert info.value.sqlstate == "53300"
    assert "gateway_max_connections" in (info.value.hint or "")
    caps.release("alice")
    caps.admit("carol")
    assert caps.count == 3
    for who in ("alice", "bob", "carol"):
        caps.release(who)
    assert caps.count == 0 and not caps.by_identity


def test_caps_per_target_and_per_identity_on_a_target_name_their_policy_key() -> None:
    caps = ConnectionCaps(total=100, per_identity=100)
    demo = TargetCaps(target="demo", scope="write", per_identity=2, per_target=3)
    auto = TargetCaps(
        target="other",
        scope="read",
        per_identity=1,
        per_target=5,
        identity_auto=True,
        target_auto=True,
        max_connections=100,
    )
    caps.admit("alice", demo)
    caps.admit("alice", demo)
    with pytest.raises(GatewayError) as info:
        caps.admit("alice", demo)  # alice is at her cap on demo ...
    assert info.value.sqlstate == "53300"
    assert "identity 'alice' to target 'demo' (limit 2" in info.value.message
    hint = info.value.hint or ""
    assert "limits.max_connections_per_identity of scope 'write' of target 'demo'" in hint
    caps.admit("alice", auto)  # ... not on another target
    caps.admit("bob", demo)  # and bob still gets in
    with pytest.raises(GatewayError) as info:
        caps.admit("carol", demo)
    assert "too many connections to target 'demo' through the gateway (limit 3)" in (
        info.value.message
    )
    assert "limits.max_connections_per_target" in (info.value.hint or "")
    with pytest.raises(GatewayError) as info:
        caps.admit("alice", auto)
    assert "auto: a share of the target's max_connections (100)" in (info.value.hint or "")
    caps.release("bob", "demo")
    caps.admit("carol", demo)
    for who, target in (("alice", "demo"), ("alice", "demo"), ("alice", "other")):
        caps.release(who, target)
    caps.release("carol", "demo")
    assert caps.count == 0 and not caps.by_identity
    assert not caps.by_target and not caps.by_target_identity


def test_the_limits_are_settings(tmp_path: Path) -> None:
    config_file = tmp_path / "server.yaml"
    config_file.write_text(
        "gateway_max_connections: 50\n"
        "gateway_max_connections_per_identity: 5\n"
        "gateway_startup_timeout: 3s\n"
        "shutdown_grace: 1m\n"
    )
    config = load_config(
        config_file,
        {"gateway_cancel_rate": "0.5"},
        environ={"DBACCESS_SERVER_GATEWAY_MAX_CONNECTIONS": "60"},
    )
    assert config.gateway_max_connections == 60  # the environment wins over the file
    assert config.gateway_max_connections_per_identity == 5
    assert config.gateway_startup_timeout == timedelta(seconds=3)
    assert config.shutdown_grace == timedelta(minutes=1)
    assert config.gateway_cancel_rate == 0.5
    defaults = load_config(None, environ={})
    assert defaults.gateway_max_connections == 1000
    assert defaults.shutdown_grace == timedelta(seconds=10)
    with pytest.raises(ConfigError, match="gateway_cancel_rate"):
        load_config(None, {"gateway_cancel_rate": "-1"}, environ={})
    with pytest.raises(ConfigError, match="gateway_max_connections"):
        load_config(None, {"gateway_max_connections": "0"}, environ={})
