"""The README stays true: its config table is the generated one, and its commands use flags and
files that exist."""

from __future__ import annotations

import contextlib
import importlib
import io
import re

import pytest

from diffusion.config import markdown_table

SCRIPT = re.compile(r"(train\.py|inference\.py|benchmarks/\w+\.py|-m diffusion\.\w+)\b([^`\n|]*)")


def readme(repo_root) -> str:
    return (repo_root / "README.md").read_text()


def test_readme_config_table_matches_the_code(repo_root):
    text = readme(repo_root)
    start, end = "<!-- config-table:start -->", "<!-- config-table:end -->"
    table = text[text.index(start) + len(start): text.index(end)].strip()
    assert table == markdown_table(), "README config table is stale: run python -m diffusion.config"


def test_readme_shows_the_two_commands(repo_root):
    text = readme(repo_root)
    assert "make demo" in text and "make test" in text


def script_help(script: str) -> str:
    """The --help text of a script, from its own parser."""
    module = importlib.import_module(script.removeprefix("-m ").removesuffix(".py").replace("/", "."))
    entry = getattr(module, "parse_args", None) or getattr(module, "main", None)
    if entry is None:  # a module run for its output (python -m diffusion.config): no flags
        return ""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        entry(["--help"])
    return out.getvalue()


def test_readme_commands_use_existing_flags_and_files(repo_root):
    text = readme(repo_root).replace("\\\n", " ")  # join continued shell lines
    commands = SCRIPT.findall(text)
    assert len(commands) >= 10 and {"train.py", "inference.py", "-m diffusion.export"} <= {s for s, _ in commands}
    helps: dict[str, str] = {}
    for script, args in commands:
        assert script.startswith("-m ") or (repo_root / script).is_file(), script
        help_text = helps.setdefault(script, script_help(script))
        for flag in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", args.split("#")[0]):
            assert re.search(rf"{flag}\b", help_text), f"README: {script} has no flag {flag}"
        for path in re.findall(r"(?<!\S)(Configs/\S+\.yaml)", args):
            assert (repo_root / path).is_file(), f"README: {path} does not exist"
