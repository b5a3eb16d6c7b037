"""Canonical JSON put together from parts: always the text the encoder gives."""

from __future__ import annotations

import copy
import json

import pytest

from server.audit.canonical import ENCODER, Template, encode, plain, scalar, stored_form

FIELDS = {
    "target": "démo \u2028 %s %% {}",
    "identity": 'al"ice\\',
    "rows": None,
    "on_behalf_of": None,
    "relations": [{"schema": "public", "table": "t", "columns": ["a", "b"], "masked": []}],
    "approval": None,
    "decision": None,
    "n": 1.5,
    "": "empty key",
}
SLOTS = ("rows", "decision", "approval")


@pytest.mark.parametrize(
    "values",
    [
        (1, "allowed", None),
        (None, "blocked", "r-1"),
        (0, "", "é\n\"'%s"),
        (2**70, "x", "\U0001f600"),
        (True, "y", False),
    ],
)
def test_a_filled_template_s_text_is_the_encoder_s(values: tuple[object, ...]) -> None:
    made = Template(FIELDS, SLOTS).fill(*values)  # type: ignore[arg-type]
    plain_dict = dict(made)
    assert plain_dict == {**FIELDS, **dict(zip(SLOTS, values, strict=True))}
    assert list(plain_dict) == list(FIELDS)  # the fields' order, slots in place
    assert (
        made.text
        == ENCODER.encode(plain_dict)
        == json.dumps(plain_dict, sort_keys=True, separators=(",", ":"))
    )


class _Odd:
    def __str__(self) -> str:
        return "odd"


@pytest.mark.parametrize(
    "value",
    [
        'a\u00e9"\\\n\U0001f600',
        1.5,
        float("nan"),
        float("-inf"),
        2**70,
        None,
        [True, False, [], {}],
        {"b": [1, {"z": None, "a": True}], "a": 2**70, "": 0.1},
        {2: "x", 1: "y"},
        {"k": _Odd(), "t": (1, 2)},
    ],
)
def test_encode_is_the_encoder_s_text(value: object) -> None:
    # Encoded by one C encoder made once: the same text as ENCODER's, which makes
    # a new one each time (floats, keys that are not strings, ``default=str``).
    assert encode(value) == ENCODER.encode(value)


def test_encode_refuses_a_cycle() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(RecursionError):
        encode(cyclic)


def test_each_fill_is_its_own() -> None:
    template = Template(FIELDS, SLOTS)
    one, two = template.fill(1, "allowed", None), template.fill(2, "blocked", "r-2")
    assert (one["rows"], one["decision"], one["approval"]) == (1, "allowed", None)
    assert (two["rows"], two["decision"], two["approval"]) == (2, "blocked", "r-2")
    assert one.text != two.text and json.loads(one.text) == one


def test_slot_values_are_json_scalars_only() -> None:
    template = Template(FIELDS, SLOTS)
    with pytest.raises(TypeError):
        template.fill(1.5, "allowed", None)
    with pytest.raises(TypeError):
        template.fill(1, ["allowed"], None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        template.fill(1, "allowed")
    assert [scalar(v) for v in (None, True, False, 0, -3, "a\u00e9")] == [
        "null",
        "true",
        "false",
        "0",
        "-3",
        '"a\\u00e9"',
    ]


def test_fields_must_be_json_s_own_types() -> None:
    with pytest.raises(ValueError, match="own types"):
        Template({"a": (1, 2), "rows": None}, ("rows",))
    with pytest.raises(ValueError, match="own types"):
        Template({"a": float("nan"), "rows": None}, ("rows",))
    with pytest.raises(ValueError, match="slots"):
        Template({"a": 1}, ("rows",))


def test_an_encoded_dict_is_read_only_and_its_copies_are_plain() -> None:
    made = Template(FIELDS, SLOTS).fill(1, "allowed", None)
    for change in (
        lambda: made.__setitem__("rows", 2),
        lambda: made.__delitem__("rows"),
        lambda: made.update(rows=2),
        lambda: made.pop("rows"),
        lambda: made.setdefault("x", 1),
        made.clear,
        made.popitem,
    ):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert made["rows"] == 1
    for other in (copy.copy(made), copy.deepcopy(made)):
        assert type(other) is dict and other == made
        other["rows"] = 5
    assert plain(made) and plain({"x": [made]})


@pytest.mark.parametrize(
    "data",
    [
        # The encoded value sorts first (a statement's access facts): put in place.
        {"text": "select 1", "rows": 1, "zz": [1.5, None]},
        # Alone.
        {},
        # A key sorting before it: encoded as a whole, the same text.
        {"aaa": 1, "text": "x"},
        # Inside another value: encoded as a whole too.
        {"nested": "inside"},
    ],
)
def test_stored_form_puts_an_encoded_value_s_text_in_place(data: dict[str, object]) -> None:
    facts = Template(FIELDS, SLOTS).fill(3, "allowed", "r-1")
    with_facts = {**data, "access": facts}
    if "nested" in data:
        with_facts = {"nested": {"access": facts}, "text": "t"}
    kept, text = stored_form(with_facts)
    assert kept is with_facts
    assert text == ENCODER.encode(json.loads(json.dumps(with_facts)))
    assert stored_form(json.loads(text))[1] == text
