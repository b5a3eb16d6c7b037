"""Option values taken as they are (brokercli.coercion): what typer itself would give, and
typer's own converter, checks and messages for every other value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer._click.core import Command, Context
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param
from typer.core import TyperGroup as Group

from brokercli.app import app, main
from brokercli.coercion import PlainValues
from brokercli.exit_codes import ExitCode


def _commands(command: Command, ctx: Context | None = None) -> Iterator[tuple[Command, Context]]:
    here = Context(command, parent=ctx, info_name=command.name)
    yield command, here
    if isinstance(command, Group):
        for sub in command.commands.values():
            yield from _commands(sub, here)


def _params() -> list[tuple[str, Any, Context]]:
    found = []
    for command, ctx in _commands(typer.main.get_command(app)):
        help_option = command.get_help_option(ctx)
        for param in [*command.params, *([help_option] if help_option else [])]:
            found.append((f"{ctx.command_path} {param.name}", param, ctx))
    return found


PARAMS = _params()


def test_every_parameter_of_every_command_has_the_plain_converter() -> None:
    assert len(PARAMS) > 100
    missing = [
        name for name, param, _ in PARAMS if not isinstance(param._runtime_param, PlainValues)
    ]
    assert missing == []


def _candidates(param: Any) -> list[Any]:
    annotation = param.type_descriptor.annotation
    values: list[Any] = [None, param.default, "text", "", "-", "0", "CSV", 7, True]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        values += [*annotation, *(str(m.value) for m in annotation)]
    return values


@pytest.mark.parametrize(("name", "param", "ctx"), PARAMS, ids=[p[0] for p in PARAMS])
def test_a_value_taken_as_it_is_is_what_typer_gives(name: str, param: Any, ctx: Context) -> None:
    plain = PlainValues(param)
    typers = build_runtime_param(param.type_descriptor)
    for value in _candidates(param):
        taken, converted = plain._plain(value, ctx)
        if not taken:
            continue
        expected = typers.coerce(value, param=param, ctx=ctx)
        assert (converted, type(converted)) == (expected, type(expected)), (name, value)


def test_other_values_go_to_typers_converter_with_its_checks_and_messages() -> None:
    command = typer.main.get_command(app)
    assert isinstance(command, Group)
    exec_ = command.commands["exec"]
    ctx = Context(exec_, info_name="exec")
    output: Any = next(p for p in exec_.params if p.name == "output")
    with pytest.raises(BadParameter) as plain_error:
        output.process_value(ctx, "CSV")  # case matters: typer's own converter says no
    with pytest.raises(BadParameter) as typers_error:
        build_runtime_param(output.type_descriptor).coerce("CSV", param=output, ctx=ctx)
    assert str(plain_error.value) == str(typers_error.value)
    assert "'CSV' is not one of" in str(plain_error.value)
    file = next(p for p in exec_.params if p.name == "file")
    assert file.process_value(ctx, "q.sql") == Path("q.sql")


def test_an_exec_parses_its_options_without_pydantic(tmp_path: Path) -> None:
    """Typer converts option values with pydantic; values that need no converting skip it
    (60-100 ms of every dbaccess exec).  The probe stops at the broker, after parsing."""
    probe = (
        "import json, sys\n"
        "from brokercli.app import main\n"
        "rc = main(sys.argv[1:])\n"
        "print(json.dumps({'rc': rc, 'loaded': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBACCESS_")}
    env.update(
        DBACCESS_CONFIG_DIR=str(tmp_path),
        DBACCESS_NO_KEYRING="1",
        DBACCESS_SERVER="http://127.0.0.1:9",
    )
    argv = ["exec", "demo", "-c", "select 1", "-o", "csv", "--scope", "read", "--reason", "x"]
    proc = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["rc"] == ExitCode.NOT_AUTHENTICATED, proc.stderr  # got past parsing
    assert sorted({"pydantic", "pydantic_core", "annotated_types"} & set(result["loaded"])) == []


def test_a_wrong_value_is_still_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("DBACCESS_TOKEN", "dba_x")
    monkeypatch.setenv("DBACCESS_SERVER", "http://127.0.0.1:9")
    assert main(["exec", "demo", "-c", "select 1", "-o", "Csv"]) == ExitCode.USAGE
    assert "'Csv' is not one of 'table', 'json', 'csv'" in capsys.readouterr().err
