"""Option values that need no converting are taken as they are, without pydantic.

Typer converts every parameter's value (the default too) with a pydantic
TypeAdapter it builds on first use; importing pydantic and building one adapter
per option costs a command such as ``dbaccess exec`` 60-100 ms, more than its
work on the network.  Most values need nothing: an option not given (None), a
string for a ``str`` option, the exact name of an enum member.  ``Command`` and
``Group``, the classes every dbaccess command and group is built with, give each
parameter (and its ``--help`` option) a converter (``PlainValues``) that returns
such values as typer would and hands every other one (a path, a number, a list,
a value that may be wrong) to typer's own converter, built then, so that typer's
checks and messages stay the only ones.

The converter is put where typer keeps the one it builds lazily
(``_runtime_param``, which ``get_runtime_param`` fills when it is None); a typer
without that slot is left alone, and converts every value itself.  The CLI's
tests check that ``dbaccess exec`` imports no pydantic.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from typer.core import TyperCommand, TyperGroup


class PlainValues:
    """A parameter's converter: the values that need no converting, else typer's."""

    def __init__(self, param: Any) -> None:
        self.param = param

    def coerce(self, value: Any, *, param: Any, ctx: Any) -> Any:
        done, plain = self._plain(value, ctx)
        if done:
            return plain
        # Typer's own converter from now on: it builds it when the slot is empty.
        param._runtime_param = None
        return param.get_runtime_param().coerce(value, param=param, ctx=ctx)

    def _plain(self, value: Any, ctx: Any) -> tuple[bool, Any]:
        param = self.param
        if param.multiple or param.nargs != 1:
            return False, None
        if value is None:
            return True, None
        descriptor = param.type_descriptor
        info = descriptor.parameter_info
        if descriptor.file_annotation is not None or getattr(info, "parser", None) is not None:
            return False, None
        annotation = descriptor.annotation
        if annotation is str and type(value) is str:
            return True, value
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            if isinstance(value, annotation):
                return True, value
            normalize = getattr(ctx, "token_normalize_func", None)
            if type(value) is str and info.case_sensitive and normalize is None:
                for member in annotation:
                    if str(member.value) == value:
                        return True, member
        return False, None


def take_plain_values(params: list[Any]) -> None:
    """Give each of ``params`` that typer converts lazily the ``PlainValues`` converter."""
    for param in params:
        if (
            getattr(param, "_runtime_param", False) is None
            and hasattr(param, "get_runtime_param")
            and hasattr(param, "type_descriptor")
        ):
            param._runtime_param = PlainValues(param)


class _PlainValuesMixin:
    """Gives the command's parameters, and its help option once made, ``PlainValues``."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        take_plain_values(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            take_plain_values([option])
        return option


class Command(_PlainValuesMixin, TyperCommand):
    """A dbaccess command: typer's, with ``PlainValues`` converters."""


class Group(_PlainValuesMixin, TyperGroup):
    """A dbaccess command group: typer's, with ``PlainValues`` converters."""
