"""The CLI skeleton: help, version, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import fobbench

COMMANDS = ("gradcheck", "train", "memory", "plot", "compare", "run", "info")


def test_help_lists_every_command(cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


def test_each_command_has_help_with_an_example(cli) -> None:
    for command in COMMANDS:
        code, out, _ = cli(command, "--help")
        assert code == 0, command
        assert "fobbench" in out and "xample" in out, f"{command} --help has no example"


def test_version(cli) -> None:
    code, out, _ = cli("--version")
    assert code == 0 and fobbench.__version__ in out


def test_unknown_option_is_one_line_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fobbench", "info", "--bogus"], capture_output=True, text=True, timeout=120,
        check=False
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--bogus" in lines[0]
    assert "Traceback" not in result.stderr
