"""The README stays true: its config table is the one generated from the dataclasses."""

from __future__ import annotations

from diffusion.config import markdown_table


def test_readme_config_table_matches_the_code(repo_root):
    text = (repo_root / "README.md").read_text()
    start, end = "<!-- config-table:start -->", "<!-- config-table:end -->"
    table = text[text.index(start) + len(start): text.index(end)].strip()
    assert table == markdown_table(), "README config table is stale: run python -m diffusion.config"


def test_readme_shows_the_two_commands(repo_root):
    text = (repo_root / "README.md").read_text()
    assert "make demo" in text and "make test" in text
