"""Man pages and shell completions: fresh, well-formed, complete, and cheap to use.

CI fails here when the CLI changes without ``scripts/gen_docs.py`` being re-run.
The shell checks skip where a shell is not installed; bash is always expected.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
COMPLETIONS = ROOT / "completions"
PROGRAMS = ("dbaccess", "dbaccess-server")
HEAVY = ("psycopg", "httpx", "sqlglot", "boto3", "hvac", "keyring", "sqlalchemy", "fastapi")


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, **kwargs)


def _gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve annotations through sys.modules, so the module must be there.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _apps() -> dict[str, Any]:
    import typer.main

    from brokercli.app import app as cli_app
    from server.cli import app as server_app

    return {
        "dbaccess": typer.main.get_command(cli_app),
        "dbaccess-server": typer.main.get_command(server_app),
    }


def _walk(
    command: Any, path: tuple[str, ...], parent: Any = None
) -> list[tuple[tuple[str, ...], Any, Any]]:
    """(path, command, context) of every visible command, straight from the click tree."""
    ctx = command.context_class(
        command, info_name=path[-1], parent=parent, **dict(command.context_settings)
    )
    found = [(path, command, ctx)]
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found += _walk(sub, (*path, name), ctx)
    return found


def _tree(prog: str) -> list[tuple[tuple[str, ...], Any, Any]]:
    return _walk(_apps()[prog], (prog,))


def _roff(text: str) -> str:
    return text.replace("-", r"\-")


# --------------------------------------------------------------------------- freshness


def test_generated_files_are_up_to_date() -> None:
    proc = _run([sys.executable, "scripts/gen_docs.py", "--check"])
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}"


def test_check_mode_names_stale_and_leftover_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = _gen_docs()
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.setattr(gen, "ROOT", tmp_path)

    assert gen.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "stale: man/dbaccess.1" in out
    assert "stale: completions/dbaccess.bash" in out
    assert "gen_docs.py" in out  # tells how to fix it

    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    capsys.readouterr()

    leftover = tmp_path / "man" / "dbaccess-gone.1"
    leftover.write_text(f'.\\" {gen.GENERATED_MARK}\n')
    (tmp_path / "man" / "hand-written.1").write_text(".TH HAND 1\n")
    assert gen.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "no longer generated: man/dbaccess-gone.1" in out
    assert "hand-written" not in out
    assert gen.main([]) == 0
    assert not leftover.exists()
    assert (tmp_path / "man" / "hand-written.1").exists()


def test_generation_is_deterministic() -> None:
    gen = _gen_docs()
    assert gen.render_all() == gen.render_all()
    for text in gen.render_all().values():
        assert str(ROOT) not in text


# --------------------------------------------------------------------------- man pages


def test_every_command_appears_in_the_main_page() -> None:
    page = (MAN / "dbaccess.1").read_text()
    for path, _cmd, _ctx in _tree("dbaccess")[1:]:
        assert rf"\fB{_roff(' '.join(path))}\fR" in page, path


def test_every_top_level_command_has_a_page_covering_its_subcommands() -> None:
    tree = _tree("dbaccess")
    for path, _cmd, _ctx in tree:
        if len(path) != 2:
            continue
        page = (MAN / f"{'-'.join(path)}.1").read_text()
        for sub_path, _sub, _sub_ctx in tree:
            if sub_path[:2] == path:
                assert _roff(" ".join(sub_path)) in page, sub_path


def test_every_option_is_documented() -> None:
    pages = {prog: "".join(p.read_text() for p in MAN.glob(f"{prog}*.1")) for prog in PROGRAMS}
    for prog in PROGRAMS:
        for path, cmd, ctx in _tree(prog):
            for param in cmd.get_params(ctx):
                for name in [*param.opts, *param.secondary_opts]:
                    if param.param_type_name == "option" and not param.hidden:
                        assert rf"\fB{_roff(name)}\fR" in pages[prog], (path, name)


def test_server_page_covers_all_its_commands() -> None:
    page = (MAN / "dbaccess-server.1").read_text()
    for path, _cmd, _ctx in _tree("dbaccess-server")[1:]:
        assert f'.SS "{_roff(" ".join(path))}"' in page


def test_main_page_documents_environment_files_and_exit_codes() -> None:
    from brokercli.exit_codes import ExitCode

    page = (MAN / "dbaccess.1").read_text()
    for env in (
        "DBACCESS_SERVER",
        "DBACCESS_TOKEN",
        "DBACCESS_CONFIG_DIR",
        "DBACCESS_NO_KEYRING",
        "DBACCESS_PROFILE",
    ):
        assert rf"\fB{env}\fR" in page
    files = page.split(".SH FILES", 1)[1]
    assert "profile.json" in files and "profiles/NAME.json" in files
    exit_status = page.split('.SH "EXIT STATUS"', 1)[1].split(".SH", 1)[0]
    for code in ExitCode:
        assert rf"\fB{int(code)}\fR" in exit_status


def test_roff_escaping() -> None:
    gen = _gen_docs()
    assert gen.roff(r"a\b") == r"a\eb"
    assert gen.roff("--no-launch") == r"\-\-no\-launch"
    assert gen.roff("a \u2014 b") == r"a \(em b"
    assert gen.roff("\u00e9") == r"\[u00E9]"
    assert gen.roff_line(gen.roff(".hidden")) == r"\&.hidden"
    assert gen.roff_line(gen.roff("'quoted")) == r"\&'quoted"
    lines = gen.help_to_roff("First line\n.dot at a line start\n\n\b\n  kept\n  as is")
    assert lines == [
        ".PP",
        "First line .dot at a line start",
        ".PP",
        ".nf",
        r"  kept",
        r"  as is",
        ".fi",
    ]
    assert not any(line.startswith((".dot", "'")) for line in gen.help_to_roff(".dot\n\n'quote"))


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("page", sorted(p.name for p in MAN.glob("*.1")))
def test_man_page_renders_without_warnings(page: str) -> None:
    proc = _run(["groff", "-man", "-Tascii", "-P-cbou", "-ww", str(MAN / page)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    rendered = proc.stdout
    assert "NAME" in rendered
    assert f"{page.removesuffix('.1')} - " in rendered


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_option_names_render_as_plain_hyphens() -> None:
    rendered = _run(["groff", "-man", "-Tascii", "-P-cbou", str(MAN / "dbaccess-exec.1")]).stdout
    assert "--output" in rendered


# --------------------------------------------------------------------------- completions


@pytest.mark.parametrize("prog", PROGRAMS)
def test_bash_completion_syntax(prog: str) -> None:
    proc = _run(["bash", "-n", str(COMPLETIONS / f"{prog}.bash")])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
@pytest.mark.parametrize("prog", PROGRAMS)
def test_zsh_completion_syntax(prog: str) -> None:
    script = (COMPLETIONS / f"{prog}.zsh").read_text()
    assert script.startswith(f"#compdef {prog}\n")
    proc = _run(["zsh", "-n", str(COMPLETIONS / f"{prog}.zsh")])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
@pytest.mark.parametrize("prog", PROGRAMS)
def test_fish_completion_syntax(prog: str) -> None:
    proc = _run(["fish", "-n", str(COMPLETIONS / f"{prog}.fish")])
    assert proc.returncode == 0, proc.stderr


def _bash_complete(words: list[str]) -> list[str]:
    """COMPREPLY for the last word of a command line, as bash's completion would ask."""
    prog = words[0]
    script = COMPLETIONS / f"{prog}.bash"
    code = (
        f"source {shlex.quote(str(script))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={shlex.quote(' '.join(words))}\n"
        f"_{prog.replace('-', '_')}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = _run(["bash", "--norc", "--noprofile", "-c", code])
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["dbaccess", "con"], ["connect"]),
        (["dbaccess", "exec", "demo", "--out"], ["--output"]),
        (["dbaccess", "exec", "demo", "--output", ""], ["table", "json", "csv"]),
        (["dbaccess", "exec", "demo", "-o", "j"], ["json"]),
        (["dbaccess", "exec", "demo", "--output=c"], ["--output=csv"]),
        (["dbaccess", "audit", "--limit", "5", "v"], ["verify"]),
        (["dbaccess", "audit", "verify", "--se"], ["--server"]),
        (["dbaccess-server", "policy", "c"], ["check"]),
        (["dbaccess-server", "dev", "--no-w"], ["--no-write-profile"]),
    ],
)
def test_bash_completes(words: list[str], expected: list[str]) -> None:
    assert _bash_complete(words) == expected


def test_bash_completes_paths_for_path_values() -> None:
    assert _bash_complete(["dbaccess", "exec", "demo", "-f", "pyproj"]) == ["pyproject.toml"]
    assert _bash_complete(["dbaccess-server", "policy", "check", "pyproj"]) == ["pyproject.toml"]


@pytest.mark.parametrize("prog", PROGRAMS)
def test_bash_offers_every_subcommand_and_option(prog: str) -> None:
    for path, cmd, ctx in _tree(prog):
        if hasattr(cmd, "list_commands"):
            subs = [n for n in cmd.list_commands(ctx) if not cmd.get_command(ctx, n).hidden]
            assert _bash_complete([*path, ""]) == subs, path
        options = [
            name
            for p in cmd.get_params(ctx)
            if p.param_type_name == "option" and not p.hidden
            for name in [*p.opts, *p.secondary_opts]
        ]
        assert sorted(_bash_complete([*path, "-"])) == sorted(options), path


def _fish_complete(line: str) -> list[str]:
    prog = line.split()[0]
    script = COMPLETIONS / f"{prog}.fish"
    proc = _run(
        [
            "fish",
            "--no-config",
            "-c",
            f"source {shlex.quote(str(script))}; complete -C {shlex.quote(line)}",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    return [row.split("\t", 1)[0] for row in proc.stdout.splitlines()]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes() -> None:
    assert _fish_complete("dbaccess con") == ["connect"]
    assert _fish_complete("dbaccess exec demo --out") == ["--output"]
    assert sorted(_fish_complete("dbaccess exec demo --output ")) == ["csv", "json", "table"]
    assert _fish_complete("dbaccess audit --limit 5 ") == ["verify"]
    assert _fish_complete("dbaccess-server policy ") == ["check", "explain"]


# --------------------------------------------------------------------------- start-up cost

_PROBE = """
import json, sys
from brokercli.app import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
heavy = set(json.loads({heavy!r}))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
print(json.dumps({{"rc": rc, "loaded": loaded}}))
"""


def _help_argvs() -> list[list[str]]:
    return [[*path[1:], "--help"] for path, _cmd, _ctx in _tree("dbaccess") if len(path) <= 2]


@pytest.mark.parametrize("argv", _help_argvs(), ids=lambda argv: " ".join(argv))
def test_help_does_not_import_heavy_modules(argv: list[str]) -> None:
    code = _PROBE.format(heavy=json.dumps(HEAVY))
    proc = _run([sys.executable, "-c", code, *argv])
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] in (0, None)
    assert "Usage:" in proc.stdout
    assert result["loaded"] == [], f"`dbaccess {' '.join(argv)}` imported {result['loaded']}"


# --------------------------------------------------------------------------- README and docs/

README = ROOT / "README.md"
DOCS = ROOT / "docs"
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _outside_code(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {
        _slug(line.lstrip("#"))
        for line in _outside_code(path.read_text()).splitlines()
        if line.startswith("#")
    }


def test_the_first_screen_says_what_it_is_and_the_two_commands() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:24])
    assert "PostgreSQL" in first_screen
    assert "bash scripts/demo.sh" in first_screen
    assert "bash scripts/test.sh" in first_screen
    assert "## What just happened" in README.read_text()


def test_the_readme_walks_through_every_step_of_the_demo() -> None:
    walk = README.read_text().split("## What just happened", 1)[1].split("\n## ", 1)[0]
    walked = re.findall(r"(?m)^(\d+)\. ", walk)
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    steps = re.findall(r'(?m)^step "', demo)
    assert [int(n) for n in walked] == list(range(1, len(steps) + 1))


def test_every_page_in_docs_is_linked_from_the_readme() -> None:
    linked = set(_LINK.findall(_outside_code(README.read_text())))
    pages = sorted(DOCS.glob("*.md"))
    assert pages
    for page in pages:
        assert f"docs/{page.name}" in linked, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))]
)
def test_relative_links_lead_somewhere(page: str) -> None:
    source = ROOT / page
    for link in _LINK.findall(_outside_code(source.read_text())):
        if re.match(r"^[a-z]+:", link):
            continue  # https:, mailto:
        path, _, anchor = link.partition("#")
        target = (source.parent / path).resolve() if path else source
        assert target.exists(), f"{page}: {link} leads nowhere"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page}: no heading for #{anchor} in {target.name}"


ARCHITECTURE = DOCS / "architecture.md"
# File names a description of the module map mentions (``common.py``, ``sql/``).
_MAP_NAME = re.compile(r"(?<![\w./-])([A-Za-z_][\w-]*(?:\.(?:py|c|sh|sql|yaml)|/))(?![\w/])")


def _module_map() -> list[Path]:
    """Every path the module map of docs/architecture.md names: each line's entry,
    under the entry its indentation puts it in, and the files its description
    mentions, inside the entry when that is a folder, beside it otherwise."""
    block = ARCHITECTURE.read_text().split("## Module map", 1)[1].split("```", 2)[1]
    named: list[Path] = []
    parents: list[tuple[int, Path]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        entry, _, description = line.strip().partition(" ")
        while parents and parents[-1][0] >= depth:
            parents.pop()
        path = (parents[-1][1] if parents else ROOT) / entry
        named.append(path)
        if entry.endswith("/"):
            parents.append((depth, path))
        here = path if entry.endswith("/") else path.parent
        named += [here / name for name in _MAP_NAME.findall(description)]
    return named


def test_every_module_the_map_names_exists() -> None:
    named = _module_map()
    assert len(named) > 80
    missing = [str(p.relative_to(ROOT)) for p in named if not p.exists()]
    assert not missing, f"docs/architecture.md names what the tree does not have: {missing}"


def test_the_map_names_every_package() -> None:
    named = {p.resolve() for p in _module_map()}
    packages = [
        init.parent
        for top in ("brokercli", "common", "server")
        for init in sorted((ROOT / top).rglob("__init__.py"))
        if "migrations" not in init.parts
    ]
    unnamed = [str(p.relative_to(ROOT)) for p in packages if p.resolve() not in named]
    assert not unnamed, f"docs/architecture.md's module map leaves out {unnamed}"
