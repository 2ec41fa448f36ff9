"""Shared test fixtures."""

from __future__ import annotations

import os

# Spinning OpenMP threads make an oversubscribed 2-core machine several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


@pytest.fixture(autouse=True)
def _two_threads():
    """Tests run with the thread count of the CI machine (2 cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def one_thread():
    """Tiny problems (quadratics, small MLPs) run several times faster on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def cli(capsys):
    """Run ``fobbench ...`` in-process: returns (exit code, stdout, stderr)."""
    from fobbench.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
