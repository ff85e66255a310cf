"""The `guie` command's help: usage lines name `guie` (not the `python -m guie` it re-executes as)
and flags show no type placeholder such as `<bool>`."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

from guie.cli import app

COMMANDS = sorted(command.name or command.callback.__name__ for command in app.registered_commands)


def test_usage_lines_read_guie():
    proc = subprocess.run(["guie", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.lstrip().startswith("Usage: guie train ") and "python -m" not in proc.stdout


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_shows_no_bool_placeholder(command):
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="guie")
    assert result.exit_code == 0, result.output
    assert "--help" in result.output and "<bool>" not in result.output
