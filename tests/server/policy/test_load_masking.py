"""The ``masking`` and ``recording_failure`` keys of a target: typed values and pointed errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from server.policy import PolicyError, parse_policy
from server.policy.model import (
    DetectorAction,
    DetectorKind,
    MaskMethod,
    MaskRule,
    RecordingFailure,
)

# Line numbers matter: the error table below refers to them.
BASE = textwrap.dedent(
    """\
    version: 1
    targets:
      demo:
        database: demo
        admin_dsn_env: DEMO_ADMIN_DSN
        scopes:
          read:
            grants: [demo_read]
            max_ttl: 8h
            allow: {groups: [dev]}
          admin:
            grants: [demo_write]
            max_ttl: 1h
            allow: {groups: [dba]}
        masking:
          key_env: DEMO_MASKING_KEY
          rules:
            - column: public.customers.email
              method: partial
              keep: domain
            - pattern: "card_*"
              method: partial
              keep_last: 4
            - pattern: "*phone*"
              method: hash
              length: 12
            - column: public.orders.email_opt_in
              method: clear
            - pattern: ssn
              method: redact
              scopes: [read]
            - pattern: "*secret*"
              method: "null"
          exempt: {groups: [dba], scopes: [admin]}
          detectors: {email: mask, card: block, secret: block}
          database_grants: true
        recording_failure: continue
    """
)


def edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml", base_dir=Path("/etc/dbaccess"))
    return [str(p) for p in caught.value.problems]


def test_masking_section_reads_into_typed_values() -> None:
    target = parse_policy(BASE, "policy.yaml").targets["demo"]
    masking = target.masking
    assert masking is not None
    assert masking.key_env == "DEMO_MASKING_KEY"
    assert masking.key_file is None
    assert masking.rules == (
        MaskRule(column="public.customers.email", method=MaskMethod.PARTIAL, keep_domain=True),
        MaskRule(pattern="card_*", method=MaskMethod.PARTIAL, keep_last=4),
        MaskRule(pattern="*phone*", method=MaskMethod.HASH, hash_length=12),
        MaskRule(column="public.orders.email_opt_in", method=MaskMethod.CLEAR),
        MaskRule(pattern="ssn", method=MaskMethod.REDACT, scopes=frozenset({"read"})),
        MaskRule(pattern="*secret*", method=MaskMethod.NULL),
    )
    assert masking.exempt_groups == frozenset({"dba"})
    assert masking.exempt_scopes == frozenset({"admin"})
    assert dict(masking.detectors) == {
        DetectorKind.EMAIL: DetectorAction.MASK,
        DetectorKind.CARD: DetectorAction.BLOCK,
        DetectorKind.SECRET: DetectorAction.BLOCK,
    }
    assert masking.database_grants is True
    assert target.recording_failure is RecordingFailure.CONTINUE


def test_defaults_without_the_sections() -> None:
    text = BASE.split("    masking:\n")[0]
    target = parse_policy(text, "policy.yaml").targets["demo"]
    assert target.masking is None
    assert target.recording_failure is RecordingFailure.CLOSE


def test_key_file_is_relative_to_the_policy_file() -> None:
    text = edited("key_env: DEMO_MASKING_KEY", "key_file: keys/masking.key")
    masking = parse_policy(text, "/srv/policy.yaml").targets["demo"].masking
    assert masking is not None
    assert masking.key_file == Path("/srv/keys/masking.key")


def test_an_empty_masking_section_masks_nothing() -> None:
    text = BASE.split("    masking:\n")[0] + "    masking: {}\n"
    masking = parse_policy(text, "policy.yaml").targets["demo"].masking
    assert masking is not None
    assert masking.rules == ()
    assert dict(masking.detectors) == {}


ERROR_CASES = [
    pytest.param(
        edited("keep: domain", "kep: domain"),
        [
            "policy.yaml:20: targets.demo.masking.rules[0].kep: unknown key (did you mean 'keep'?)",
            "policy.yaml:18: targets.demo.masking.rules[0]: "
            "partial needs exactly one of keep: domain or keep_last: N",
        ],
        id="misspelt-rule-key",
    ),
    pytest.param(
        edited("method: redact", "method: scramble"),
        [
            "policy.yaml:30: targets.demo.masking.rules[4].method: 'scramble' is not a known "
            "method (one of: clear, redact, partial, hash, null)"
        ],
        id="unknown-method",
    ),
    pytest.param(
        edited("- column: public.customers.email", "- column: customers.email"),
        [
            "policy.yaml:18: targets.demo.masking.rules[0].column: "
            "'customers.email' is not schema.table.column"
        ],
        id="column-not-three-parts",
    ),
    pytest.param(
        edited("- column: public.customers.email", "- column: public.customers.*mail"),
        [
            "policy.yaml:18: targets.demo.masking.rules[0].column: 'public.customers.*mail' "
            "is a pattern: write it as pattern: (a column-name glob)"
        ],
        id="glob-in-column",
    ),
    pytest.param(
        edited('- pattern: "card_*"', '- pattern: "public.card_*"'),
        [
            "policy.yaml:21: targets.demo.masking.rules[1].pattern: 'public.card_*': a pattern "
            "matches column names only; use column: for schema.table.column"
        ],
        id="dotted-pattern",
    ),
    pytest.param(
        edited('- pattern: "card_*"', '- pattern: "card_*"\n          column: public.c.card'),
        [
            "policy.yaml:21: targets.demo.masking.rules[1]: "
            "give exactly one of column, pattern (found column and pattern)"
        ],
        id="column-and-pattern",
    ),
    pytest.param(
        edited("keep_last: 4", "keep_last: 40"),
        [
            "policy.yaml:23: targets.demo.masking.rules[1].keep_last: "
            "'40' is not a number of characters from 1 to 32"
        ],
        id="keep-last-too-long",
    ),
    pytest.param(
        edited("method: hash", "method: redact"),
        [
            "policy.yaml:26: targets.demo.masking.rules[2].length: "
            "only hash has a length, not redact"
        ],
        id="length-without-hash",
    ),
    pytest.param(
        edited("scopes: [read]", "keep_last: 2"),
        [
            "policy.yaml:31: targets.demo.masking.rules[4].keep_last: "
            "only partial keeps characters, not redact"
        ],
        id="keep-without-partial",
    ),
    pytest.param(
        edited("scopes: [read]", "scopes: [raed]"),
        [
            "policy.yaml:31: targets.demo.masking.rules[4].scopes[0]: "
            "unknown scope 'raed' (scopes: admin, read)"
        ],
        id="unknown-rule-scope",
    ),
    pytest.param(
        edited("scopes: [admin]}", "scopes: [root]}"),
        [
            "policy.yaml:34: targets.demo.masking.exempt.scopes[0]: "
            "unknown scope 'root' (scopes: admin, read)"
        ],
        id="unknown-exempt-scope",
    ),
    pytest.param(
        edited('method: "null"', 'method: "null"\n        - pattern: x\n          method: clear'),
        [
            "policy.yaml:34: targets.demo.masking.rules[6].method: "
            "clear vouches for one column: use it with column, not pattern"
        ],
        id="clear-with-pattern",
    ),
    pytest.param(
        edited("- column: public.orders.email_opt_in", "- column: public.customers.email"),
        [
            "policy.yaml:27: targets.demo.masking.rules[3].column: "
            "public.customers.email already has a rule (rules[0])"
        ],
        id="duplicate-column-rule",
    ),
    pytest.param(
        edited("      key_env: DEMO_MASKING_KEY\n", ""),
        [
            "policy.yaml:15: targets.demo.masking: a hash rule needs a key: give key_file or "
            "key_env (at least 16 random bytes)"
        ],
        id="hash-without-key",
    ),
    pytest.param(
        edited("key_env: DEMO_MASKING_KEY", "key_env: DEMO_MASKING_KEY\n      key_file: k.key"),
        ["policy.yaml:15: targets.demo.masking: give key_file or key_env, not both"],
        id="two-keys",
    ),
    pytest.param(
        edited("key_env: DEMO_MASKING_KEY", "key_env: 1BAD"),
        [
            "policy.yaml:16: targets.demo.masking.key_env: "
            "'1BAD' is not an environment variable name"
        ],
        id="bad-key-env",
    ),
    pytest.param(
        edited("card: block", "cards: block"),
        [
            "policy.yaml:35: targets.demo.masking.detectors.cards: "
            "unknown key (did you mean 'card'?)"
        ],
        id="unknown-detector",
    ),
    pytest.param(
        edited("card: block", "card: drop"),
        [
            "policy.yaml:35: targets.demo.masking.detectors.card: "
            "'drop' is not a known detector action (one of: mask, block)"
        ],
        id="unknown-detector-action",
    ),
    pytest.param(
        edited("database_grants: true", "database_grants: yes"),
        ["policy.yaml:36: targets.demo.masking.database_grants: 'yes' is not true or false"],
        id="grants-not-bool",
    ),
    pytest.param(
        edited("recording_failure: continue", "recording_failure: ignore"),
        [
            "policy.yaml:37: targets.demo.recording_failure: "
            "'ignore' is not a known recording_failure (one of: close, continue)"
        ],
        id="unknown-recording-failure",
    ),
    pytest.param(
        edited("database_grants: true", "database_grants: true\n      trusted_functions: [Fn(]"),
        [
            "policy.yaml:37: targets.demo.masking.trusted_functions[0]: 'Fn(' is not a function "
            "name: write [schema.]name in lower case, optionally ending in * for a prefix"
        ],
        id="trusted-function-not-a-name",
    ),
    pytest.param(
        edited("database_grants: true", "database_grants: true\n      inference: warn"),
        [
            "policy.yaml:37: targets.demo.masking.inference: unknown inference 'warn': "
            "use one of block, review, allow"
        ],
        id="unknown-inference",
    ),
    pytest.param(
        edited("database_grants: true", "database_grants: true\n      trusted_function: [f]"),
        [
            "policy.yaml:37: targets.demo.masking.trusted_function: unknown key "
            "(did you mean 'trusted_functions'?)"
        ],
        id="misspelt-trusted-functions",
    ),
    pytest.param(
        edited("    masking:\n", "    maskng:\n"),
        ["policy.yaml:15: targets.demo.maskng: unknown key (did you mean 'masking'?)"],
        id="misspelt-section",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_mistakes_are_reported_with_file_line_and_key(text: str, expected: list[str]) -> None:
    assert problems_of(text) == expected


def test_trusted_functions_are_read_as_written() -> None:
    text = edited(
        "database_grants: true",
        "database_grants: true\n      trusted_functions: [app.full_name, util.*, fmt_*]",
    )
    masking = parse_policy(text, "policy.yaml").targets["demo"].masking
    assert masking is not None
    assert masking.trusted_functions == {"app.full_name", "util.*", "fmt_*"}
    # None by default: only pg_catalog and information_schema.
    default = parse_policy(BASE, "policy.yaml").targets["demo"].masking
    assert default is not None and default.trusted_functions == frozenset()


def test_inference_is_blocked_unless_allowed() -> None:
    default = parse_policy(BASE, "policy.yaml").targets["demo"].masking
    assert default is not None and default.inference == "block"
    text = edited("database_grants: true", "database_grants: true\n      inference: allow")
    allowed = parse_policy(text, "policy.yaml").targets["demo"].masking
    assert allowed is not None and allowed.inference == "allow"
    text = edited("database_grants: true", "database_grants: true\n      inference: review")
    reviewed = parse_policy(text, "policy.yaml").targets["demo"].masking
    assert reviewed is not None and reviewed.inference == "review"
