"""Packaging metadata: the project configuration reads without setuptools warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_applies_without_setuptools_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PEP 639 license string, not the deprecated ``project.license`` table."""
    setuptools = pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (77, 0):
        pytest.skip("license strings need setuptools >= 77 (the build requirement)")
    monkeypatch.chdir(ROOT)  # README.md is resolved relative to the project
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    messages = [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught
                if "setuptools" in w.category.__module__.lower() or "Setuptools" in w.category.__name__]
    assert messages == []
    assert dist.metadata.license_expression == "MIT"
