"""The README says what the code does: set-up lines, defaults, exit codes."""

from __future__ import annotations

import re
from pathlib import Path

from fobbench.cli import load_commands

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _setup_lines() -> list[str]:
    section = README.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_set_up_is_two_single_line_commands_pinning_the_torch_ci_installs() -> None:
    quick, tests = _setup_lines()[:2]
    assert "\n" not in quick and "\n" not in tests
    assert quick.startswith("python3 -m venv .venv") and quick.endswith(".venv/bin/fobbench gradcheck")
    assert "[ -x .venv/bin/fobbench ]" in tests and tests.endswith(".venv/bin/python -m pytest -q")
    pins = set(re.findall(r"torch==([\d.]+)", quick + tests))
    ci_pins = set(re.findall(r"torch==([\d.]+)", (ROOT / ".ci" / "run").read_text()))
    assert len(pins) == 1 and pins == ci_pins
    assert "from the repository root" in README and "../shared" in README


def _default(command: list[str], option: str) -> object:
    click_command = load_commands()
    for name in command:
        click_command = click_command.commands[name]  # type: ignore[attr-defined]
    (param,) = [p for p in click_command.params if option in p.opts]
    return param.default


def test_omniglot_evaluation_default_in_the_readme_is_the_clis() -> None:
    default = _default(["train", "omniglot"], "--eval-tasks")
    assert f"held-out tasks (default {default};" in README


def test_compare_exit_codes_in_the_readme() -> None:
    for code in ("| 0 | nothing got worse", "| 1 | something got worse", "| 2 | bad input"):
        assert code in README
    assert "--allow-missing" in README
