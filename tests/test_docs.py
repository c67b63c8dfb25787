"""The documentation stays true to the code: README.md short with working links, every command-line
option documented, the code examples' imports resolvable, every module in the layout table.

The site itself is built with ``mkdocs build --strict`` by ``make docs`` (part of ``make test``)."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
from pathlib import Path

import pytest

from dmtg_nas.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 200

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_gives_the_two_commands_of_a_fresh_machine() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]


def test_readme_links_point_to_existing_files() -> None:
    targets = [t for t in LINK.findall(README.read_text(encoding="utf-8")) if "://" not in t]
    assert targets, "README.md links into the documentation"
    for target in targets:
        path = target.split("#", 1)[0]
        if not path or path.startswith("mailto:"):
            continue
        assert (README.parent / path).exists(), f"README.md links to {target}, which does not exist"


def _options(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Every subcommand's long option strings (help and hidden options left out)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, command in sub.choices.items():
        out[name] = [
            max(action.option_strings, key=len)
            for action in command._actions
            if action.option_strings and action.help != argparse.SUPPRESS and "--help" not in action.option_strings
        ]
    return out


def test_every_command_and_option_is_in_the_cli_reference() -> None:
    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    for command, options in _options(build_parser()).items():
        section = text.split(f"## `dmtg {command}`", 1)
        assert len(section) == 2, f"docs/reference/cli.md has no section for dmtg {command}"
        body = section[1].split("\n## ", 1)[0]
        for option in options:
            if option in ("--accelerator", "--devices", "--num-nodes", "--precision"):
                assert f"`{option}" in text, f"dmtg {command} {option} is not in docs/reference/cli.md"
                continue
            if option == "--set":  # documented once, for every command
                assert "`--set KEY=VALUE`" in text
                continue
            assert f"`{option}" in body, f"dmtg {command} {option} is not in its section of docs/reference/cli.md"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_examples_import_what_exists(path: Path) -> None:
    for block in CODE_BLOCK.findall(path.read_text(encoding="utf-8")):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{path.name}: {node.module} has no {alias.name}"


def test_the_layout_table_names_every_module() -> None:
    text = (DOCS / "development.md").read_text(encoding="utf-8").split("## Layout", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([\w/]+\.py)` \|", text, re.MULTILINE))
    package = ROOT / "dmtg_nas"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    assert modules - documented == set(), f"modules missing from docs/development.md: {sorted(modules - documented)}"
    assert documented - modules == set(), (
        f"docs/development.md names modules that do not exist: {sorted(documented - modules)}"
    )
