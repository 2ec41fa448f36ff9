"""Start-up stays light: --help, --version and errors that need no command import no torch (item 11)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "matplotlib", "scipy")


def _imported(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "fobbench", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False, timeout=120)
    seconds = time.perf_counter() - start
    modules = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
               if line.startswith("import time:")}
    return modules, done, seconds


@pytest.mark.parametrize(("args", "code"), [
    (("--version",), 0),
    (("--help",), 0),
    (("nosuchcommand",), 2),
    (("run", "no-such-suite.toml"), 2),
])
def test_no_heavy_import_for_help_version_and_errors(args: tuple[str, ...], code: int) -> None:
    modules, done, seconds = _imported(*args)
    assert done.returncode == code, done.stderr[-2000:]
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    assert seconds < 3.0  # about 0.2 s on an idle 2-core machine; the bound only catches a heavy import


def test_help_lists_every_command_without_importing_them() -> None:
    modules, done, _ = _imported("--help")
    for name in ("compare", "gradcheck", "info", "memory", "plot", "run", "train"):
        assert f" {name} " in done.stdout
    assert not [m for m in modules if m.startswith("fobbench.cli.") and m != "fobbench.cli.app"]
