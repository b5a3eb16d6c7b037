"""The demo policy shipped with the dev mode loads, and says what the dev mode relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from server.gateway.masking import ColumnRef, MaskingRules
from server.policy import Identity, evaluate, load_policy, visible_targets
from server.policy.model import MaskMethod

TEMPLATE = Path(str(resources.files("server") / "demo" / "policy.yaml"))


def test_demo_policy_loads_with_its_scopes() -> None:
    policy = load_policy(TEMPLATE)
    demo = policy.targets["demo"]
    assert demo.database == "demo"
    assert demo.admin_dsn_file == TEMPLATE.parent / "admin.dsn"
    assert (demo.admin_dsn, demo.admin_dsn_env) == (None, None)
    read, write = demo.scopes["read"], demo.scopes["write"]
    assert (read.grants, read.default_ttl, read.max_ttl) == (
        ("demo_read",),
        timedelta(minutes=30),
        timedelta(hours=8),
    )
    assert (write.grants, write.default_ttl, write.max_ttl) == (
        ("demo_write",),
        timedelta(minutes=15),
        timedelta(hours=1),
    )
    assert read.allow_groups == write.allow_groups == frozenset({"dev"})


def test_demo_policy_copied_elsewhere_points_at_the_admin_dsn_next_to_it(tmp_path: Path) -> None:
    copy = tmp_path / "policy.yaml"
    copy.write_text(TEMPLATE.read_text())
    assert load_policy(copy).targets["demo"].admin_dsn_file == tmp_path / "admin.dsn"


def test_a_dev_identity_gets_read_by_default() -> None:
    policy = load_policy(TEMPLATE)
    dev = Identity("dev", frozenset({"dev"}), kind="dev")
    decision = evaluate(policy, dev, "demo", None, None, datetime.now(UTC))
    assert (decision.allowed, decision.scope, decision.ttl) == (True, "read", timedelta(minutes=30))
    visible = visible_targets(policy, dev)
    assert [(t.name, [s.name for s in scopes]) for t, scopes in visible] == [
        ("demo", ["read", "write"])
    ]


@pytest.mark.parametrize("scope", ["read", "write"])
@pytest.mark.parametrize(
    ("column", "method"),
    [
        ("full_name", MaskMethod.REDACT),
        ("email", MaskMethod.PARTIAL),
        ("phone", MaskMethod.PARTIAL),
        ("card_number", MaskMethod.PARTIAL),
        ("city", None),
        ("created_at", None),
    ],
)
def test_the_demo_masks_the_people_data_in_every_scope(
    scope: str, column: str, method: MaskMethod | None
) -> None:
    rules = MaskingRules.for_scope(load_policy(TEMPLATE).targets["demo"].masking, scope)
    rule = rules.rule_for(ColumnRef("public", "customers", column))
    assert (rule.method if rule else None) == method
