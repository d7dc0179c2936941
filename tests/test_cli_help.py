"""`saec --version` and the help texts: an example under every command, plain value labels."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import saec
from saec.cli import EXAMPLES, app

runner = CliRunner()
COMMANDS = ["compile", "train", "plan", "eval", "export", "simulate", "sweep", "stats", "report", "schema"]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"saec {saec.__version__}"


def test_every_command_is_listed_and_has_an_example():
    assert sorted(EXAMPLES) == sorted(COMMANDS)
    listing = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "Example: saec train specs/sae_dense.yaml --set data.dataset=mnist5k" in listing
    for command in COMMANDS:
        assert re.search(rf"│ {command}\s", listing), command


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example_and_clean_labels(command):
    text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
    assert f"Example: {EXAMPLES[command]}" in " ".join(text.split())
    # typer's type labels (<bool>, <list[str]>, <path>, <int>, ...) never appear as value labels
    labels = re.findall(r"│\s+(?:\*\s+)?(-[-\w]+(?:\s+-[-\w]+)*|[A-Z_]+)\s+(<[^>]+>)", text)
    assert labels == [], labels
    assert "<bool>" not in text and "<list[" not in text


def test_examples_name_real_commands_and_options():
    """Each example parses: its command exists and its options are the command's own."""
    for command, example in EXAMPLES.items():
        words = example.split()
        assert words[:2] == ["saec", command]
        help_text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
        for option in (w for w in words[2:] if w.startswith("-")):
            assert option in help_text, (command, option)
