"""Where things live: user results never mix with the committed CI baseline; one figure rule."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fobbench.paths import figure_dir
from fobbench.results import read_results
from fobbench.results.store import DEFAULT_ROOT

ROOT = Path(__file__).resolve().parents[1]


def test_the_ci_baseline_is_outside_the_default_results_folder() -> None:
    baseline = ROOT / ".ci" / "baseline"
    assert len(read_results(baseline)) > 0
    assert not (ROOT / DEFAULT_ROOT / "baseline").exists()
    assert DEFAULT_ROOT not in baseline.relative_to(ROOT).parents
    ci = (ROOT / ".ci" / "run").read_text()
    assert "fobbench compare .ci/baseline" in ci and "results/baseline" not in ci


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout")
def test_user_results_and_figures_are_ignored_by_git_and_the_baseline_is_not() -> None:
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False).returncode == 0

    assert ignored("results/memory/20260101T000000Z-abc1234.csv")
    assert ignored("results-figures/memory_transformer_seq.png")
    assert not ignored(".ci/baseline/memory-transformer-seq/seq-16.csv")


@pytest.mark.parametrize(
    ("results", "figures"),
    [
        ("results/memory/x.csv", "results/memory/x-figures"),
        ("results/gradcheck/20260101T000000Z-abc", "results/gradcheck/20260101T000000Z-abc-figures"),
        ("results", "results-figures"),
        ("results/", "results-figures"),
    ],
)
def test_one_figure_rule_for_every_command(results: str, figures: str) -> None:
    assert figure_dir(results) == Path.cwd() / figures
