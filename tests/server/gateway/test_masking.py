"""Masking decisions: which rule masks a column, how values are shown, and the per-column plan."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from server.errors import Unavailable
from server.gateway.masking import (
    NO_MASKING,
    Action,
    ColumnRef,
    MaskingRules,
    hash_value,
    mask_value,
    masking_key_problems,
    plan_for_columns,
    plan_for_row_description,
    session_rules,
)
from server.gateway.masking import load_key as load_masking_key
from server.gateway.pgwire import BINARY, TEXT, Field
from server.policy.model import (
    DetectorAction,
    DetectorKind,
    MaskingPolicy,
    MaskMethod,
    MaskRule,
    ScopePolicy,
    TargetPolicy,
)

KEY = b"k" * 32
INT4, INT8, TEXT_T, VARCHAR, NUMERIC, JSON_T = 23, 20, 25, 1043, 1700, 114


def customers(column: str, type_oid: int = TEXT_T) -> ColumnRef:
    return ColumnRef("public", "customers", column, type_oid)


def orders(column: str, type_oid: int = TEXT_T) -> ColumnRef:
    return ColumnRef("public", "orders", column, type_oid)


def view(name: str, column: str, sources: Iterable[ColumnRef], type_oid: int = TEXT_T) -> ColumnRef:
    return ColumnRef("public", name, column, type_oid, "v", frozenset(sources))


EMAIL_DOMAIN = MaskRule(pattern="*email*", method=MaskMethod.PARTIAL, keep_domain=True)
CARD_LAST4 = MaskRule(pattern="card_*", method=MaskMethod.PARTIAL, keep_last=4)
PHONE_HASH = MaskRule(column="public.customers.phone", method=MaskMethod.HASH, hash_length=12)
ID_HASH = MaskRule(column="public.orders.customer_id", method=MaskMethod.HASH)
SECRET_NULL = MaskRule(pattern="*secret*", method=MaskMethod.NULL)
OPT_IN_CLEAR = MaskRule(column="public.orders.email_opt_in", method=MaskMethod.CLEAR)
AMOUNT_REDACT = MaskRule(column="public.orders.amount", method=MaskMethod.REDACT)
V_ID_CLEAR = MaskRule(column="public.v_contacts.id", method=MaskMethod.CLEAR)

RULES = MaskingRules(
    (
        PHONE_HASH,
        EMAIL_DOMAIN,
        CARD_LAST4,
        ID_HASH,
        SECRET_NULL,
        OPT_IN_CLEAR,
        AMOUNT_REDACT,
        V_ID_CLEAR,
    ),
    KEY,
)

CUSTOMER_COLUMNS = [
    customers(c) for c in ("id", "full_name", "email", "phone", "card_number", "city")
]
V_CONTACTS = frozenset(customers(c) for c in ("id", "full_name", "email"))
V_CITIES = frozenset(customers(c) for c in ("id", "city"))


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        pytest.param(customers("email"), EMAIL_DOMAIN, id="glob"),
        pytest.param(customers("Work_EMAIL"), EMAIL_DOMAIN, id="glob-ignores-case"),
        pytest.param(ColumnRef("sales", "leads", "email_address"), EMAIL_DOMAIN, id="any-table"),
        pytest.param(customers("card_number"), CARD_LAST4, id="prefix-glob"),
        pytest.param(customers("discard_number"), None, id="prefix-glob-anchored"),
        pytest.param(customers("phone"), PHONE_HASH, id="exact"),
        pytest.param(orders("phone"), None, id="exact-is-exact"),
        pytest.param(ColumnRef("other", "customers", "phone"), None, id="exact-schema-matters"),
        pytest.param(orders("email_opt_in"), None, id="clear-beats-glob"),
        pytest.param(orders("api_secret"), SECRET_NULL, id="null-glob"),
        pytest.param(customers("city"), None, id="unmatched"),
    ],
)
def test_which_rule_masks_a_column(column: ColumnRef, expected: MaskRule | None) -> None:
    assert RULES.rule_for(column) == expected


def test_exact_rule_wins_over_an_earlier_glob() -> None:
    rules = MaskingRules(
        (
            MaskRule(pattern="*phone*", method=MaskMethod.REDACT),
            MaskRule(column="public.customers.phone", method=MaskMethod.NULL),
        )
    )
    rule = rules.rule_for(customers("phone"))
    assert rule is not None and rule.method is MaskMethod.NULL


def test_first_matching_glob_wins() -> None:
    rules = MaskingRules(
        (
            MaskRule(pattern="*_number", method=MaskMethod.NULL),
            MaskRule(pattern="card_*", method=MaskMethod.REDACT),
        )
    )
    rule = rules.rule_for(customers("card_number"))
    assert rule is not None and rule.method is MaskMethod.NULL


POLICY = MaskingPolicy(
    rules=(
        EMAIL_DOMAIN,
        MaskRule(pattern="card_*", method=MaskMethod.REDACT, scopes=frozenset({"read"})),
    ),
    exempt_groups=frozenset({"dba"}),
    exempt_scopes=frozenset({"admin"}),
)


@pytest.mark.parametrize(
    ("scope", "groups", "masked"),
    [
        pytest.param("read", ["dev"], {"email", "card_number"}, id="all-rules"),
        pytest.param("write", ["dev"], {"email"}, id="scoped-rule-left-out"),
        pytest.param("read", ["dev", "dba"], set(), id="exempt-group"),
        pytest.param("admin", ["dev"], set(), id="exempt-scope"),
    ],
)
def test_rules_for_a_session(scope: str, groups: list[str], masked: set[str]) -> None:
    rules = MaskingRules.for_session(POLICY, scope, groups)
    found = {c.column for c in CUSTOMER_COLUMNS if rules.rule_for(c) is not None}
    assert found == masked
    assert rules.active is bool(masked)


@pytest.mark.parametrize(
    ("scope", "groups", "exemption", "masked"),
    [
        pytest.param("read", ["dev"], None, set(), id="not-exempt"),
        pytest.param("read", ["dev", "dba"], "group dba", {"email", "card_number"}, id="group"),
        pytest.param("admin", ["dev"], "scope admin", {"email"}, id="scope"),
    ],
)
def test_what_an_exempt_session_is_exempt_from(
    scope: str, groups: list[str], exemption: str | None, masked: set[str]
) -> None:
    """For its access facts: the rules its scope would mask with, and why it is clear."""
    found = MaskingRules.exempted_from(POLICY, scope, groups)
    if exemption is None:
        assert found is None
        return
    assert found is not None
    rules, why = found
    assert why == exemption
    assert {c.column for c in CUSTOMER_COLUMNS if rules.rule_for(c) is not None} == masked


def test_no_policy_means_no_masking() -> None:
    assert MaskingRules.for_session(None, "read", ["dev"]) is NO_MASKING
    assert not NO_MASKING.active


def test_detectors_come_with_the_rules_and_not_for_exempt_sessions() -> None:
    policy = MaskingPolicy(
        detectors={DetectorKind.CARD: DetectorAction.BLOCK}, exempt_groups=frozenset({"dba"})
    )
    found = MaskingRules.for_session(policy, "read", ["dev"]).detector_set.scan(
        "4111 1111 1111 1111"
    )
    assert [f.name for f in found] == ["card"]
    assert not MaskingRules.for_session(policy, "read", ["dba"]).detector_set.enabled


def test_hash_rules_cannot_exist_without_a_key() -> None:
    with pytest.raises(ValueError, match="key"):
        MaskingRules((PHONE_HASH,))


def test_the_key_stays_out_of_repr() -> None:
    assert repr(KEY) not in repr(RULES)
    assert "kkkk" not in repr(RULES)


# --------------------------------------------------------------------------- keys


def test_key_from_the_environment_and_from_a_file(tmp_path: Path) -> None:
    assert load_masking_key(MaskingPolicy(key_env="K"), "demo", environ={"K": " " + "x" * 20}) == (
        b"x" * 20
    )
    path = tmp_path / "masking.key"
    path.write_bytes(b"y" * 32 + b"\n")
    assert load_masking_key(MaskingPolicy(key_file=path), "demo") == b"y" * 32
    assert load_masking_key(MaskingPolicy(), "demo") == b""


@pytest.mark.parametrize(
    ("policy", "environ", "message"),
    [
        (MaskingPolicy(key_env="K"), {}, "is missing"),
        (MaskingPolicy(key_env="K"), {"K": "short"}, "shorter than 16 bytes"),
        (MaskingPolicy(key_file=Path("/nonexistent/key")), {}, "cannot be read"),
    ],
)
def test_unusable_keys_are_refused_without_showing_them(
    policy: MaskingPolicy, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(Unavailable, match=message) as caught:
        load_masking_key(policy, "demo", environ=environ)
    assert "short'" not in caught.value.message


HASHED_IN_READ = MaskingPolicy(
    rules=(
        MaskRule(
            column="public.customers.phone", method=MaskMethod.HASH, scopes=frozenset({"read"})
        ),
        EMAIL_DOMAIN,
    ),
    key_env="K",
    exempt_groups=frozenset({"dba"}),
)


def _target(masking: MaskingPolicy | None) -> TargetPolicy:
    scopes = {
        name: ScopePolicy(
            name=name,
            grants=(),
            max_ttl=timedelta(hours=1),
            default_ttl=timedelta(hours=1),
            allow_groups=frozenset({"dev"}),
            allow_identities=frozenset(),
        )
        for name in ("read", "write")
    }
    return TargetPolicy(name="demo", database="demo", scopes=scopes, masking=masking)


@pytest.mark.parametrize(
    ("scope", "groups", "environ", "key"),
    [
        pytest.param("read", ["dev"], {"K": "x" * 20}, b"x" * 20, id="hash-in-force-with-key"),
        pytest.param("write", ["dev"], {}, b"", id="no-hash-in-scope-no-key-needed"),
        pytest.param("read", ["dba"], {}, None, id="exempt-no-key-needed"),
    ],
)
def test_session_rules_read_the_key_only_when_a_hash_rule_is_in_force(
    scope: str, groups: list[str], environ: dict[str, str], key: bytes | None
) -> None:
    rules = session_rules(_target(HASHED_IN_READ), scope, groups, environ=environ)
    if key is None:
        assert rules is NO_MASKING
        return
    assert rules.key == key
    assert rules.rule_for(customers("email")) is EMAIL_DOMAIN
    assert rules == MaskingRules.for_session(HASHED_IN_READ, scope, groups, key)


def test_session_rules_without_the_key_name_the_target_and_the_source() -> None:
    with pytest.raises(Unavailable, match="target 'demo': masking key from environment variable K"):
        session_rules(_target(HASHED_IN_READ), "read", ["dev"], environ={})
    assert session_rules(_target(None), "read", ["dev"]) is NO_MASKING


def test_key_problems_for_policy_check(tmp_path: Path) -> None:
    targets = [_target(HASHED_IN_READ)]
    assert masking_key_problems(targets, environment=False, environ={}) == []
    (problem,) = masking_key_problems(targets, environment=True, environ={})
    assert "environment variable K is missing" in problem
    assert masking_key_problems(targets, environment=True, environ={"K": "y" * 16}) == []
    in_file = replace(HASHED_IN_READ, key_env=None, key_file=tmp_path / "missing.key")
    (problem,) = masking_key_problems([_target(in_file)], environment=False)
    assert "cannot be read" in problem


# --------------------------------------------------------------------------- values


def rule(method: MaskMethod, **kw: object) -> MaskRule:
    return MaskRule(pattern="x", method=method, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mask", "value", "expected"),
    [
        pytest.param(rule(MaskMethod.REDACT), "ada@example.com", "***", id="redact"),
        pytest.param(rule(MaskMethod.REDACT), "", "***", id="redact-empty"),
        pytest.param(rule(MaskMethod.NULL), "anything", None, id="null"),
        pytest.param(
            rule(MaskMethod.PARTIAL, keep_domain=True),
            "ada@example.com",
            "***@example.com",
            id="domain",
        ),
        pytest.param(
            rule(MaskMethod.PARTIAL, keep_domain=True), "a@b@c.org", "***@c.org", id="last-at"
        ),
        pytest.param(
            rule(MaskMethod.PARTIAL, keep_domain=True), "no at sign", "***", id="no-domain"
        ),
        pytest.param(
            rule(MaskMethod.PARTIAL, keep_domain=True), "@example.com", "***", id="no-local-part"
        ),
        pytest.param(
            rule(MaskMethod.PARTIAL, keep_last=4), "4111111111111111", "***1111", id="last-4"
        ),
        pytest.param(rule(MaskMethod.PARTIAL, keep_last=4), "12345", "***2345", id="one-more"),
        pytest.param(rule(MaskMethod.PARTIAL, keep_last=4), "1234", "***", id="too-short"),
        pytest.param(rule(MaskMethod.PARTIAL, keep_last=4), "", "***", id="empty"),
        pytest.param(
            rule(MaskMethod.PARTIAL, keep_last=2), "日本語テキスト", "***スト", id="characters"
        ),
        pytest.param(rule(MaskMethod.PARTIAL, keep_last=3), "ñandú", "***ndú", id="accents"),
        pytest.param(rule(MaskMethod.CLEAR), "as is", "as is", id="clear"),
    ],
)
def test_how_values_are_shown(mask: MaskRule, value: str, expected: str | None) -> None:
    assert mask_value(mask, KEY, value) == expected


def test_hash_is_deterministic_keyed_and_cut_to_length() -> None:
    r12 = rule(MaskMethod.HASH, hash_length=12)
    first = mask_value(r12, KEY, "+1-555-037-7919")
    assert first == mask_value(r12, KEY, "+1-555-037-7919")
    assert first is not None and len(first) == 12 and int(first, 16) >= 0
    assert first != mask_value(r12, b"other key 0123456789", "+1-555-037-7919")
    assert first != mask_value(r12, KEY, "+1-555-037-7918")
    assert first == hash_value(KEY, b"+1-555-037-7919", 12)
    assert len(hash_value(KEY, b"x", 64)) == 64


# --------------------------------------------------------------------------- plans


def fields_of(*specs: tuple[str, int, int, int]) -> list[Field]:
    return [
        Field(name, oid, attnum, type_oid, -1, -1, TEXT) for name, oid, attnum, type_oid in specs
    ]


NO_LINEAGE: Mapping[int, Collection[ColumnRef]] | None = None


def unused_lineage() -> Mapping[int, Collection[ColumnRef]] | None:
    raise AssertionError("lineage must not be needed here")


def single(
    ref: ColumnRef | None,
    *,
    type_oid: int = TEXT_T,
    lineage: Mapping[int, Collection[ColumnRef]] | None = NO_LINEAGE,
    touched: list[ColumnRef] | None = None,
    rules: MaskingRules = RULES,
) -> tuple[Action, MaskMethod | None, bool]:
    plan = plan_for_columns(
        [("col", type_oid)],
        [ref],
        rules,
        lambda: lineage,
        touched=(lambda: touched) if touched is not None else None,
    )
    (only,) = plan.fields
    return only.action, only.method, only.retype


CLEAR = (Action.CLEAR, None, False)
BLOCK = (Action.BLOCK, None, False)


def masked(method: MaskMethod, retype: bool = False) -> tuple[Action, MaskMethod, bool]:
    return (Action.MASK, method, retype)


PLAN_CASES = [
    # plain columns, origin known
    pytest.param(dict(ref=customers("city")), CLEAR, id="plain-clear"),
    pytest.param(dict(ref=customers("email")), masked(MaskMethod.PARTIAL), id="plain-masked"),
    pytest.param(
        dict(ref=customers("email"), type_oid=VARCHAR),
        masked(MaskMethod.PARTIAL),
        id="varchar-stays-varchar",
    ),
    pytest.param(
        dict(ref=orders("customer_id", INT4), type_oid=INT4),
        masked(MaskMethod.HASH, retype=True),
        id="int-hashed-becomes-text",
    ),
    pytest.param(
        dict(ref=orders("amount", NUMERIC), type_oid=NUMERIC),
        masked(MaskMethod.REDACT, retype=True),
        id="numeric-redacted-becomes-text",
    ),
    pytest.param(
        dict(ref=orders("api_secret", JSON_T), type_oid=JSON_T),
        masked(MaskMethod.NULL),
        id="null-keeps-its-type",
    ),
    pytest.param(dict(ref=orders("email_opt_in")), CLEAR, id="vouched"),
    # computed columns: lineage decides, and derived values are never hashed or partial
    pytest.param(
        dict(ref=None, lineage={0: {customers("email")}}),
        masked(MaskMethod.REDACT),
        id="lower(email)",
    ),
    pytest.param(
        dict(ref=None, lineage={0: {customers("phone")}}),
        masked(MaskMethod.REDACT),
        id="derived-from-hashed-is-redacted",
    ),
    pytest.param(
        dict(ref=None, lineage={0: {customers("card_number")}}, type_oid=INT8),
        masked(MaskMethod.REDACT, retype=True),
        id="length(card_number)",
    ),
    pytest.param(
        dict(ref=None, lineage={0: {customers("email"), orders("api_secret")}}),
        masked(MaskMethod.NULL),
        id="derived-from-nulled-is-null",
    ),
    pytest.param(
        dict(ref=None, lineage={0: {customers("city"), customers("id")}}), CLEAR, id="clear-inputs"
    ),
    pytest.param(dict(ref=None, lineage={0: set()}), CLEAR, id="constant"),
    pytest.param(dict(ref=None, lineage=None), BLOCK, id="no-lineage-unknown-tables"),
    pytest.param(dict(ref=None, lineage={1: set()}), BLOCK, id="position-missing"),
    pytest.param(
        dict(ref=None, lineage=None, touched=[orders("status"), orders("id")]),
        CLEAR,
        id="no-lineage-but-nothing-masked-read",
    ),
    pytest.param(
        dict(ref=None, lineage=None, touched=CUSTOMER_COLUMNS),
        BLOCK,
        id="no-lineage-and-masked-table-read",
    ),
    pytest.param(
        dict(ref=None, lineage=None, touched=[view("v_contacts", "full_name", V_CONTACTS)]),
        BLOCK,
        id="no-lineage-and-view-of-masked-read",
    ),
    # view columns
    pytest.param(
        dict(ref=view("v_contacts", "email", V_CONTACTS)),
        masked(MaskMethod.PARTIAL),
        id="view-column-matched-by-name",
    ),
    pytest.param(
        dict(ref=view("v_contacts", "full_name", V_CONTACTS)), BLOCK, id="view-column-unknown"
    ),
    pytest.param(dict(ref=view("v_contacts", "id", V_CONTACTS)), CLEAR, id="view-column-vouched"),
    pytest.param(dict(ref=view("v_cities", "city", V_CITIES)), CLEAR, id="view-of-clear-columns"),
    pytest.param(
        dict(
            ref=view("v_contacts", "full_name", V_CONTACTS), lineage={0: {customers("full_name")}}
        ),
        CLEAR,
        id="view-column-with-lineage",
    ),
    pytest.param(
        dict(ref=view("v_contacts", "contact", V_CONTACTS), lineage={0: {customers("email")}}),
        masked(MaskMethod.REDACT),
        id="view-column-derived-by-lineage",
    ),
    # no rules at all
    pytest.param(dict(ref=None, lineage=None, rules=NO_MASKING), CLEAR, id="no-rules"),
]


@pytest.mark.parametrize(("case", "expected"), PLAN_CASES)
def test_plan_decides_each_column(
    case: dict[str, object], expected: tuple[Action, MaskMethod | None, bool]
) -> None:
    assert single(**case) == expected  # type: ignore[arg-type]


CATALOG = {
    (16384, 1): customers("id", INT4),
    (16384, 2): customers("full_name"),
    (16384, 3): customers("email"),
    (16384, 5): customers("card_number"),
    (16390, 3): orders("amount", NUMERIC),
}


def origins(table_oid: int, attnum: int) -> ColumnRef | None:
    return CATALOG.get((table_oid, attnum))


def test_row_description_uses_origins_and_asks_lineage_once() -> None:
    calls: list[int] = []

    def lineage() -> Mapping[int, Collection[ColumnRef]] | None:
        calls.append(1)
        return {3: {customers("email")}, 4: set()}

    fields = fields_of(
        ("id", 16384, 1, INT4),
        ("email", 16384, 3, TEXT_T),
        ("amount", 16390, 3, NUMERIC),
        ("lower", 0, 0, TEXT_T),
        ("now", 0, 0, 1184),
        ("ctid", 16384, -1, 27),
    )
    plan = plan_for_row_description(
        fields, origins, RULES, lineage, touched=lambda: CUSTOMER_COLUMNS
    )
    assert [f.action for f in plan.fields] == [
        Action.CLEAR,
        Action.MASK,
        Action.MASK,
        Action.MASK,
        Action.CLEAR,
        Action.BLOCK,  # a system column has no catalog entry and no lineage here
    ]
    assert calls == [1]
    assert plan.masked == (1, 2, 3)
    assert plan.blocked is plan.fields[5]
    message = plan.block_message()
    assert message is not None and "'ctid'" in message
    assert plan.summary()[0] == {
        "field": "email",
        "action": "mask",
        "method": "partial",
        "source": "public.customers.email",
    }


def test_plain_queries_never_pay_for_lineage() -> None:
    fields = fields_of(("id", 16384, 1, INT4), ("email", 16384, 3, TEXT_T))
    plan = plan_for_row_description(fields, origins, RULES, unused_lineage)
    assert [f.action for f in plan.fields] == [Action.CLEAR, Action.MASK]
    assert not plan.clear


def test_unmasked_sessions_skip_the_catalog_too() -> None:
    def no_catalog(_oid: int, _attnum: int) -> ColumnRef | None:
        raise AssertionError("no lookups without rules")

    plan = plan_for_row_description(
        fields_of(("email", 16384, 3, TEXT_T)), no_catalog, NO_MASKING, unused_lineage
    )
    assert plan.clear and plan.blocked is None and plan.masked == ()


def test_an_origin_the_catalog_does_not_know_is_treated_as_unknown() -> None:
    plan = plan_for_row_description(
        fields_of(("email", 99999, 3, TEXT_T)), origins, RULES, lambda: None
    )
    assert plan.fields[0].action is Action.BLOCK


def test_masked_non_text_columns_are_announced_as_text() -> None:
    fields = fields_of(
        ("id", 16384, 1, INT4), ("amount", 16390, 3, NUMERIC), ("email", 16384, 3, VARCHAR)
    )
    fields[1] = Field("amount", 16390, 3, NUMERIC, -1, 655366, BINARY)
    plan = plan_for_row_description(fields, origins, RULES, unused_lineage)
    sent = plan.row_description(fields)
    assert sent[0] == fields[0]
    assert sent[1] == Field("amount", 16390, 3, TEXT_T, -1, -1, BINARY)
    assert sent[2] == fields[2]


@pytest.mark.parametrize(
    ("requested", "upstream"),
    [
        ([], [TEXT, TEXT, TEXT]),
        ([BINARY], [BINARY, TEXT, BINARY]),
        ([BINARY, BINARY, TEXT], [BINARY, TEXT, TEXT]),
        ([TEXT, BINARY, BINARY], [TEXT, TEXT, BINARY]),
    ],
)
def test_columns_masked_from_their_text_are_asked_for_as_text(
    requested: list[int], upstream: list[int]
) -> None:
    refs = [customers("id", INT4), orders("customer_id", INT4), orders("amount", NUMERIC)]
    plan = plan_for_columns([("a", INT4), ("b", INT4), ("c", NUMERIC)], refs, RULES, unused_lineage)
    # customer_id is hashed (needs text); amount is redacted (needs nothing).
    assert plan.upstream_formats(requested) == upstream


@pytest.mark.parametrize("value", ["secret", "s", "", "4000009824516531"])
def test_partial_without_anything_to_keep_shows_nothing_of_the_value(value: str) -> None:
    # value[-0:] is the whole string: a partial rule keeping nothing must not leak it.
    rule = MaskRule(column="public.t.c", method=MaskMethod.PARTIAL)
    shown = mask_value(rule, b"k" * 16, value)
    assert shown == "***"
