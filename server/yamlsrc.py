"""YAML files read with their line numbers, and checked against a schema with errors that say where.

PyYAML's ``safe_load`` forgets where each value came from and silently keeps the
last of two equal keys in a mapping.  Both matter for files people edit by hand:
an error has to point at ``policy.yaml:14``, and a duplicated ``max_ttl`` must not
quietly win.  So this module composes the YAML node graph (which keeps marks) and
turns it into a small tree of :class:`Scalar`, :class:`Seq` and :class:`Map` nodes,
each with its 1-based line, reporting duplicate keys on the way.

Scalars stay text.  The schema decides what a value means (a duration, a port, a
role name), which sidesteps YAML 1.1's guesses: ``no`` as a group name is not
``False`` and ``10:30`` is not the integer 630.  A plain ``~``/``null``/empty value
is marked as null so that an empty ``groups:`` reads as "none" and an empty
``database:`` as missing.

:class:`Checker` collects :class:`Problem` records while a loader walks the tree,
so one run reports every mistake; the loader raises a :class:`SourceError`
subclass carrying all of them.  Each problem formats as
``<file>:<line>: <key.path>: <message>``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import yaml

from server.errors import InvalidInput

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One mistake in a source: where it is and what is wrong."""

    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SourceError(InvalidInput):
    """A file (or environment, or command line) the broker could not accept.

    The message lists every problem, one per line, first problem first.
    """

    def __init__(self, problems: Sequence[Problem], *, hint: str | None = None) -> None:
        if not problems:
            raise ValueError("a SourceError needs at least one problem")
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems), hint=hint)


@dataclass(frozen=True)
class Scalar:
    text: str
    line: int
    null: bool = False


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]
    line: int


@dataclass(frozen=True)
class Entry:
    key_line: int
    value: Node


@dataclass(frozen=True)
class Map:
    entries: Mapping[str, Entry]
    line: int


Node = Scalar | Seq | Map


def describe(node: Node) -> str:
    """How a node looks to a person, for "expected a list, got ..." messages."""
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    return "nothing" if node.null else f"{node.text!r}"


def parse_yaml(text: str, source: str) -> tuple[Node | None, list[Problem]]:
    """Compose ``text`` into a located tree.

    Returns ``(None, problems)`` for an empty document or a syntax error, and
    otherwise the tree with any duplicate-key or unsupported-feature problems.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            detail = f"{exc.problem} ({exc.context})"
        return None, [Problem(source, line, "", f"YAML syntax error: {detail}")]
    except yaml.YAMLError as exc:
        return None, [Problem(source, None, "", f"YAML syntax error: {exc}")]
    finally:
        loader.dispose()
    if root is None:
        return None, []
    problems: list[Problem] = []
    return _convert(root, source, problems, "", set()), problems


def _convert(
    node: yaml.Node, source: str, problems: list[Problem], path: str, open_nodes: set[int]
) -> Node:
    line = node.start_mark.line + 1
    if id(node) in open_nodes:
        # An alias to one of its own ancestors (``&a [*a]``) would never end.
        problems.append(Problem(source, line, path, "an alias refers to a value that contains it"))
        return Scalar("", line, null=True)
    open_nodes.add(id(node))
    try:
        return _convert_node(node, source, problems, path, open_nodes)
    finally:
        open_nodes.discard(id(node))


def _convert_node(
    node: yaml.Node, source: str, problems: list[Problem], path: str, open_nodes: set[int]
) -> Node:
    line = node.start_mark.line + 1
    if node.tag.startswith("!"):
        problems.append(
            Problem(source, line, path, f"YAML tags such as {node.tag} are not supported")
        )
    if isinstance(node, yaml.MappingNode):
        entries: dict[str, Entry] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(source, key_line, path, "a key must be a plain name"))
                continue
            key = str(key_node.value)
            key_path = join(path, key)
            if key_node.tag == _MERGE_TAG:
                problems.append(
                    Problem(source, key_line, path, "merge keys (<<) are not supported")
                )
                continue
            if key in entries:
                first = entries[key].key_line
                problems.append(
                    Problem(
                        source, key_line, key_path, f"duplicate key (first given at line {first})"
                    )
                )
                continue
            entries[key] = Entry(
                key_line, _convert(value_node, source, problems, key_path, open_nodes)
            )
        return Map(entries, line)
    if isinstance(node, yaml.SequenceNode):
        items = tuple(
            _convert(item, source, problems, f"{path}[{index}]", open_nodes)
            for index, item in enumerate(node.value)
        )
        return Seq(items, line)
    assert isinstance(node, yaml.ScalarNode)
    return Scalar(str(node.value), line, null=node.tag == _NULL_TAG and node.style is None)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Checker:
    """Collects problems found in one source while a loader walks its tree."""

    def __init__(self, source: str, problems: Sequence[Problem] = ()) -> None:
        self.source = source
        self.problems: list[Problem] = list(problems)

    def add(self, line: int | None, path: str, message: str) -> None:
        self.problems.append(Problem(self.source, line, path, message))

    def mapping(
        self, node: Node, path: str, known: Collection[str] | None, *, line: int
    ) -> MapReader:
        """Read ``node`` as a mapping with keys ``known`` (None: any key); a null reads as empty.

        ``line`` is where the mapping is introduced (its key's line), used for
        "missing key" problems because an empty or absent mapping has no line of its own.
        """
        if isinstance(node, Map):
            return MapReader(self, node, path, known, line)
        if not (isinstance(node, Scalar) and node.null):
            self.add(node.line, path, f"expected a mapping, got {describe(node)}")
        return MapReader(self, Map({}, line), path, known, line, broken=not is_null(node))

    def items(self, node: Node, path: str) -> tuple[Node, ...]:
        """Read ``node`` as a list; a null reads as an empty list."""
        if isinstance(node, Seq):
            return node.items
        if not (isinstance(node, Scalar) and node.null):
            self.add(node.line, path, f"expected a list, got {describe(node)}")
        return ()

    def text(self, node: Node, path: str) -> str | None:
        """A non-empty string, or None after noting why not."""
        if not isinstance(node, Scalar):
            self.add(node.line, path, f"expected a single value, got {describe(node)}")
            return None
        if node.null or not node.text.strip():
            self.add(node.line, path, "a value is required here")
            return None
        return node.text

    def convert(self, node: Node, path: str, parse: Callable[[str], T]) -> T | None:
        """Run ``parse`` on the node's text; a ValueError becomes a problem with its message."""
        raw = self.text(node, path)
        if raw is None:
            return None
        try:
            return parse(raw)
        except ValueError as exc:
            self.add(node.line, path, str(exc))
            return None


def is_null(node: Node) -> bool:
    """True for a plain `~`, `null` or empty value."""
    return isinstance(node, Scalar) and node.null


class MapReader:
    """One mapping checked against its known keys; unknown keys are noted with a suggestion."""

    def __init__(
        self,
        checker: Checker,
        node: Map,
        path: str,
        known: Collection[str] | None,
        line: int,
        *,
        broken: bool = False,
    ) -> None:
        self.checker = checker
        self.node = node
        self.path = path
        self.line = line
        # A value of the wrong type already has its problem; "missing key" on top would be noise.
        self.broken = broken
        for key, entry in node.entries.items():
            if known is not None and key not in known:
                checker.add(entry.key_line, join(path, key), _unknown_key(key, known))

    def __contains__(self, key: str) -> bool:
        return key in self.node.entries

    def __iter__(self) -> Iterator[tuple[str, Entry]]:
        return iter(self.node.entries.items())

    def optional(self, key: str) -> Entry | None:
        return self.node.entries.get(key)

    def required(self, key: str) -> Entry | None:
        entry = self.node.entries.get(key)
        if entry is None and not self.broken:
            self.checker.add(self.line, join(self.path, key), "required key is missing")
        return entry


def _unknown_key(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(sorted(known))})"
