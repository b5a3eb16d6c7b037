"""Canonical JSON: the one text of an event's data that the store keeps and the digest covers.

The text is ``json.dumps(value, sort_keys=True, separators=(",", ":"),
default=str)`` (:data:`ENCODER`): compact, keys sorted, ASCII.  A dict's
text is therefore ``{`` + its items' ``key:value`` texts in the order of their
keys, joined by ``,`` + ``}``, which is what lets a text be put together from
parts encoded at different times:

* :class:`Template` encodes once what many dicts share -- all their keys, and
  the values of all but a few (its ``slots``) -- and makes each dict with its
  own slot values and its text (:meth:`Template.fill`) from those parts and
  the slot values alone.  The recorder's writer makes the access facts of
  every statement so (``server.audit.access``): those of one statement shape
  differ only in their rows, decision, rule and approval;
* what it makes is an :class:`Encoded` dict: read-only (so that its text
  cannot come to say something else than it), and known to come back from
  JSON as it is (:func:`plain` takes it as it is), so the recorder puts its text in
  place (:func:`stored_form`) rather than encoding it again.  Anything else
  that encodes it -- ``json.dumps``, the store's JSON column -- sees a plain
  dict, and gets the same text.
"""

from __future__ import annotations

import json
from _json import make_encoder
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, Final, NoReturn, cast

ENCODER: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)

# ``JSONEncoder.encode`` makes a new C encoder on every call, which costs more
# than encoding a statement's event: one is made once, with ENCODER's settings.
# It keeps no markers of the containers it is in (ENCODER's check_circular): an
# event's data is a tree, and a cycle still fails, with RecursionError.
_C_ENCODE: Final = make_encoder(
    None, str, encode_basestring_ascii, None, ":", ",", True, False, True
)


def encode(value: Any) -> str:
    """The canonical text of ``value``: ``ENCODER.encode(value)``."""
    return "".join(_C_ENCODE(value, 0))


_LEAVES: Final = frozenset((str, int, bool, type(None)))
_INF: Final = float("inf")


class Encoded(dict[str, Any]):
    """A dict of JSON's own types that carries its canonical text (``text``); made by
    :meth:`Template.fill` only, and read-only."""

    __slots__ = ("text",)
    text: str

    def _read_only(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise TypeError("an encoded dict is read-only: its text says what it holds")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        # A copy (copy, deepcopy, pickle) is a plain dict: it may be changed.
        return dict, (dict(self),)


# The dict's own update, for Template.fill (Encoded's refuses).
_update = dict.update


def plain(value: Any) -> bool:
    """Whether ``value`` comes back from JSON as it is: str keys, lists, finite scalars
    (an :class:`Encoded` is, by construction)."""
    # A loop over a stack, leaves checked in place: this runs for every event, on the writer.
    todo = [value]
    pop, push, leaves = todo.pop, todo.append, _LEAVES
    while todo:
        item = pop()
        kind = type(item)
        if kind is dict:
            for k, v in item.items():
                if type(k) is not str:
                    return False
                if type(v) not in leaves:
                    push(v)
        elif kind is list:
            for v in item:
                if type(v) not in leaves:
                    push(v)
        elif kind is float:
            if item != item or item in (_INF, -_INF):
                return False
        elif kind is not Encoded and kind not in leaves:
            return False
    return True


def scalar(value: str | int | bool | None) -> str:
    """The canonical text of a string, an integer, a boolean or None."""
    # As the encoder writes each, without its way through the encoder.
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(cast("str", value))
    if kind is int:
        return int.__repr__(cast("int", value))
    if kind is bool:
        return "true" if value else "false"
    raise TypeError(f"not a JSON scalar: {kind.__name__}")


class Template:
    """Dicts that all have ``fields``' keys, in its order, and its values but at
    ``slots`` (keys of ``fields``; their values there are placeholders): each
    made with its slot values by :meth:`fill`, its canonical text put together from
    the parts encoded here.  The values must be JSON's own types (:func:`plain`)."""

    __slots__ = ("_fields", "_format", "_order", "_slots")

    def __init__(self, fields: Mapping[str, Any], slots: Sequence[str]) -> None:
        fields = dict(fields)
        missing = [s for s in slots if s not in fields]
        if missing or len(set(slots)) != len(slots):
            raise ValueError(f"slots must be distinct keys of the fields: {list(slots)}")
        if not plain(fields):
            raise ValueError("the fields must be JSON's own types")
        self._fields = fields
        self._slots = tuple(slots)
        order: list[int] = []
        pieces: list[str] = []
        text = "{"
        for i, key in enumerate(sorted(fields)):
            text += ("," if i else "") + encode_basestring_ascii(key) + ":"
            if key in self._slots:
                pieces.append(text)
                order.append(self._slots.index(key))
                text = ""
            else:
                text += encode(fields[key])
        self._order = tuple(order)
        # The text with a %s for each slot's value, in the order of the keys.
        self._format = "%s".join(p.replace("%", "%%") for p in [*pieces, text + "}"])

    def fill(self, *values: str | int | bool | None) -> Encoded:
        """The dict with ``values`` at the slots (in ``slots``' order) and its text."""
        if len(values) != len(self._slots):
            raise TypeError(f"{len(self._slots)} slot values wanted, {len(values)} given")
        made = Encoded(self._fields)
        _update(made, zip(self._slots, values, strict=True))
        made.text = self._format % tuple([scalar(values[i]) for i in self._order])
        return made


def stored_form(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """An event's data as it is kept, and its canonical JSON text, which is both what the
    store holds in ``session_events.data`` and what the digest covers.

    Reading the text back gives data whose canonical text is that text again: the
    data holds only JSON's own types (str keys, lists, finite numbers), or it is made
    to, through a round trip through the encoder.  Most events (a statement's) hold
    only JSON's own types already: checking that is a fifth of the cost of the round
    trip.  A value that carries its text already (a statement's access facts:
    :class:`Encoded`) is not encoded again: its text is put in place, where its
    key sorts before the others (``access`` does, in a statement's data)."""
    if type(data) is not dict or not plain(data):
        data = json.loads(json.dumps(dict(data), default=str))
        return data, encode(data)
    encoded = [key for key, value in data.items() if type(value) is Encoded]
    if not encoded:
        return data, encode(data)
    rest = data.copy()
    for key in encoded:
        del rest[key]
    if rest and max(encoded) >= min(rest):
        return data, encode(data)
    head = ",".join(f"{scalar(key)}:{data[key].text}" for key in sorted(encoded))
    tail = encode(rest)[1:] if rest else "}"
    return data, "{" + head + ("," + tail if rest else tail)
