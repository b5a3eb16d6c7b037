"""Content detectors: what each one recognises, what it must leave alone, and what the set does."""

from __future__ import annotations

import pytest

from server.gateway.detectors import (
    DETECTOR_NAMES,
    NO_DETECTORS,
    NOTHING_FOUND,
    DetectorSet,
    _literals,
    entropy,
    luhn_ok,
)
from server.gateway.pgwire import DataRow, ProtocolViolation
from server.policy.model import DetectorAction, DetectorKind

ALL = DetectorSet.of({kind: DetectorAction.MASK for kind in DetectorKind})

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF\n"
    "-----END RSA PRIVATE KEY-----"
)

# (text, detector name, the part found)
TRUE_POSITIVES = [
    ("contact ada.lovelace1@example.com today", "email", "ada.lovelace1@example.com"),
    ("<first.last+tag@sub.example.co.uk>", "email", "first.last+tag@sub.example.co.uk"),
    ("call +1-555-037-7919", "e164", "+1-555-037-7919"),
    ("tel:+442079460958", "e164", "+442079460958"),
    ("+33 6 12 34 56 78 (mobile)", "e164", "+33 6 12 34 56 78"),
    ("(415) 555-2671", "nanp", "(415) 555-2671"),
    ("office 415.555.2671", "nanp", "415.555.2671"),
    ("06 12 34 56 78", "fr", "06 12 34 56 78"),
    ("London 020 7946 0958", "uk", "020 7946 0958"),
    ("mobile 07700 900123", "uk", "07700 900123"),
    ("visa 4111111111111111", "card", "4111111111111111"),
    ("4111 1111 1111 1111", "card", "4111 1111 1111 1111"),
    ("mc 5500-0000-0000-0004 exp", "card", "5500-0000-0000-0004"),
    ("amex 378282246310005", "card", "378282246310005"),
    ("2-series 2223003122003222", "card", "2223003122003222"),
    ("4111 1111 1111 1111 123 (cvv)", "card", "4111 1111 1111 1111"),
    ("card4000056655665556", "card", "4000056655665556"),
    ("ssn 078-05-1120", "us_ssn", "078-05-1120"),
    ("NI AB 12 34 56 C", "uk_nino", "AB 12 34 56 C"),
    ("nino:JG103759A", "uk_nino", "JG103759A"),
    ("DNI 12345678Z", "es_dni", "12345678Z"),
    ("dni 00000000-T", "es_dni", "00000000-T"),
    ("AKIAIOSFODNN7EXAMPLE", "aws_access_key", "AKIAIOSFODNN7EXAMPLE"),
    ("key=ASIAY34FZKBOKMUTVV7A;", "aws_access_key", "ASIAY34FZKBOKMUTVV7A"),
    (f"pem {PEM} end", "private_key", PEM),
    ("-----BEGIN PRIVATE KEY-----\nMIIE", "private_key", "-----BEGIN PRIVATE KEY-----"),
    (f"Authorization: Bearer {JWT}", "jwt", JWT),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "api_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    (
        "token ghp_16C7e42F292c6912E7710c838347Ae178B4a!",
        "api_key",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    ),
    (
        "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy",
        "api_key",
        "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy",
    ),
    ("glpat-Xq8vT2LmR9wZ4kHs7NdF", "api_key", "glpat-Xq8vT2LmR9wZ4kHs7NdF"),
]


@pytest.mark.parametrize(("text", "name", "part"), TRUE_POSITIVES)
def test_true_positives(text: str, name: str, part: str) -> None:
    found = [(f.name, text[f.start : f.end]) for f in ALL.scan(text)]
    assert (name, part) in found
    assert part not in ALL.mask(text)


FALSE_POSITIVES = [
    pytest.param("order 4111111111111112", id="16-digit-order-number-failing-luhn"),
    pytest.param("invoice 1234567812345678", id="luhn-fails"),
    pytest.param("ref 7992739871300000", id="passes-luhn-but-no-card-prefix"),
    pytest.param("0000000000000000", id="zeros"),
    pytest.param("4444444444444444", id="one-digit-repeated"),
    pytest.param("41111111111111111111111", id="inside-a-longer-run"),
    pytest.param("2024-01-01 07:13:00+00", id="timestamp"),
    pytest.param("192.168.100.200", id="ip-address"),
    pytest.param("version 1.2.3-beta", id="version"),
    pytest.param("+12", id="short-international"),
    pytest.param("123-456-7890", id="nanp-area-code-cannot-start-with-1"),
    pytest.param("000-12-3456", id="ssn-area-000"),
    pytest.param("666-12-3456", id="ssn-area-666"),
    pytest.param("900-12-3456", id="ssn-area-9xx"),
    pytest.param("123-00-4567", id="ssn-group-00"),
    pytest.param("123-45-0000", id="ssn-serial-0000"),
    pytest.param("123456789", id="ssn-without-dashes"),
    pytest.param("QQ123456C", id="nino-q-not-allocated"),
    pytest.param("GB123456A", id="nino-gb-prefix"),
    pytest.param("12345678A", id="dni-wrong-letter"),
    pytest.param("AKIAIOSFODNN7EXAMPL", id="aws-too-short"),
    pytest.param("AKIAIOSFODNN7EXAMPLE1", id="aws-too-long"),
    pytest.param("-----BEGIN PUBLIC KEY-----", id="public-key"),
    pytest.param("-----BEGIN CERTIFICATE-----", id="certificate"),
    pytest.param("eyJub3QiOiJhIGp3dCJ9.eyJ4IjoxfQ.abc", id="jwt-without-alg"),
    pytest.param("eyJhbGciOi.eyJzdWIiOiIxMjM0", id="jwt-two-segments"),
    pytest.param("sk_live_xxxxxxxxxxxxxxxxxxxx", id="placeholder-key"),
    pytest.param("sk_live_short", id="short-key"),
    pytest.param("user@localhost", id="email-without-tld"),
    pytest.param("@handle and foo@", id="not-an-email"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_false_positives(text: str) -> None:
    assert ALL.scan(text) == []
    assert ALL.mask(text) == text


def test_every_detector_has_a_true_positive() -> None:
    assert {name for _, name, _ in TRUE_POSITIVES} == set(DETECTOR_NAMES)


@pytest.mark.parametrize(
    ("digits", "ok"),
    [("79927398713", True), ("79927398710", False), ("4111111111111111", True), ("0", True)],
)
def test_luhn(digits: str, ok: bool) -> None:
    assert luhn_ok(digits) is ok


def test_entropy() -> None:
    assert entropy("") == 0.0
    assert entropy("aaaa") == 0.0
    assert entropy("abcd") == 2.0


# --------------------------------------------------------------------------- sets


def test_only_enabled_detectors_run() -> None:
    cards = DetectorSet.of({DetectorKind.CARD: DetectorAction.MASK})
    text = "ada@example.com paid with 4111 1111 1111 1111"
    assert [f.name for f in cards.scan(text)] == ["card"]
    assert cards.mask(text) == "ada@example.com paid with ***"
    assert NO_DETECTORS.scan(text) == [] and not NO_DETECTORS.enabled


def test_actions() -> None:
    mixed = DetectorSet.of(
        {DetectorKind.EMAIL: DetectorAction.MASK, DetectorKind.SECRET: DetectorAction.BLOCK}
    )
    assert mixed.action(mixed.scan("a@example.com")) is DetectorAction.MASK
    found = mixed.scan("a@example.com AKIAIOSFODNN7EXAMPLE")
    assert mixed.action(found) is DetectorAction.BLOCK
    assert mixed.blocking(found) is not None
    assert mixed.action([]) is None


def test_findings_are_ordered_and_overlaps_merge_when_masking() -> None:
    text = "x 4111 1111 1111 1111 y ada@example.com"
    found = ALL.scan(text)
    assert [f.name for f in found] == ["card", "email"]
    assert ALL.mask(text) == "x *** y ***"


def test_scanning_bytes_gives_byte_offsets() -> None:
    data = "naïve café ada@example.com".encode()
    (finding,) = ALL.scan_bytes(data)
    assert data[finding.start : finding.end] == b"ada@example.com"
    pem = f"é {PEM}".encode()
    found = ALL.scan_bytes(pem)
    assert any(pem[f.start : f.end] == PEM.encode() for f in found)


# --------------------------------------------------------------------------- rows


def test_scan_row_names_columns_and_masks_only_what_was_found() -> None:
    body = DataRow(
        [b"1", b"Ada", b"mail me: ada@example.com", None, b"4111111111111111", b"Lisbon"]
    ).encode()[5:]
    scan = ALL.scan_row(body)
    assert scan.columns == {2, 4}
    assert scan.blocked is None
    masked = ALL.mask_row(body, scan)
    assert masked == DataRow([b"1", b"Ada", b"mail me: ***", None, b"***", b"Lisbon"]).encode()[5:]


def test_scan_row_skips_columns_that_are_not_text() -> None:
    # A binary int8 whose bytes happen to spell digits must not be read as text.
    body = DataRow([b"4111111111111111", b"4111111111111111"]).encode()[5:]
    assert ALL.scan_row(body, [False, True]).columns == {1}


def test_scan_row_block_action() -> None:
    blocking = DetectorSet.of({DetectorKind.SECRET: DetectorAction.BLOCK})
    body = DataRow([b"note", b"aws AKIAIOSFODNN7EXAMPLE"]).encode()[5:]
    scan = blocking.scan_row(body)
    assert scan.blocked is not None and scan.blocked.name == "aws_access_key"


def test_scan_row_costs_one_search_when_nothing_is_there() -> None:
    body = DataRow([b"1", b"Lisbon", b"2024-01-01"]).encode()[5:]
    scan = ALL.scan_row(body)
    assert scan.findings == () and ALL.mask_row(body, scan) == body


def test_a_match_across_two_values_is_not_a_finding_in_either() -> None:
    # "ada@exa" + length word + "mple.com": only whole values are scanned after the prefilter.
    body = DataRow([b"ada@exa", b"mple.com"]).encode()[5:]
    assert ALL.scan_row(body).findings == ()


# Length words whose last byte is a character a shape's look-behind refuses
# ("0", "9", "A", "Z", "a", "z", "-", ".", "+", "%", "_"): the value must be
# found all the same, as if it were scanned alone.
_LENGTH_BYTES = b"09AZaz-.+%_"


@pytest.mark.parametrize(("text", "name", "part"), TRUE_POSITIVES)
def test_scan_row_finds_a_value_whatever_its_length_word_spells(
    text: str, name: str, part: str
) -> None:
    value = part.encode()
    for length in _LENGTH_BYTES:
        if length < len(value):
            continue
        padded = value + b" " * (length - len(value))
        rows: list[list[bytes | None]] = [[padded], [b"x", padded], [None, padded, b"1"]]
        for row in rows:
            body = DataRow(row).encode()[5:]
            scan = ALL.scan_row(body)
            assert any(f.name == name for _, f in scan.findings), (name, chr(length), row)
            assert value not in ALL.mask_row(body, scan)


@pytest.mark.parametrize(
    ("literals", "text", "found"),
    [
        ([b"000-00-0000", b"00000000Z", b"00000000-Z"], b"x 000-00-0000 y", True),
        ([b"000-00-0000", b"00000000Z", b"00000000-Z"], b"00000000-Z", True),
        ([b"000-00-0000", b"00000000Z"], b"0000-00-00 00:00:00.000000", False),
        ([b"ab", b"abc", b"b.d"], b"xxb.dxx", True),
        ([b"ab", b"abc"], b"a b c", False),
        ([b"a+b", b"(c)"], b"x(c)", True),  # escaped, not an expression
        ([b"a+b"], b"aab", False),
    ],
)
def test_literals_as_a_trie(literals: list[bytes], text: bytes, found: bool) -> None:
    assert (_literals(literals).search(text) is not None) is found


def test_a_masked_address_wakes_nothing_but_a_real_one_does() -> None:
    emails = DetectorSet.of({DetectorKind.EMAIL: DetectorAction.MASK})
    masked = DataRow([b"***@example.com", b"***@example.org"]).encode()[5:]
    assert emails.scan_row(masked) == NOTHING_FOUND
    mixed = DataRow([b"***@example.com", b"cc ada@example.org"]).encode()[5:]
    assert emails.scan_row(mixed).columns == {1}


def test_malformed_rows() -> None:
    with pytest.raises(ProtocolViolation):
        ALL.scan_row(b"\x00\x01\x00\x00\x00\x40ada@example.com")
