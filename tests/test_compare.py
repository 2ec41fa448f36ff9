"""``fobbench compare``: the pure decision function and the command around it.

Result files are written with the real ResultWriter; their values are synthetic because what
is under test is the comparison logic (matching, tolerances, statistics, exit codes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fobbench.errors import FobbenchError
from fobbench.results import Measurement, ResultWriter, read_results
from fobbench.results import compare as comparison

# Timings: spread of about +-10% around 1 s, 8 repeats (seeds) per side.
SPREAD = np.array([0.88, 0.93, 0.97, 1.0, 1.01, 1.04, 1.08, 1.12])
TIGHT = np.array([0.995, 0.997, 0.999, 1.0, 1.0, 1.001, 1.003, 1.005])


def write_run(
    path: Path,
    error_scale: float = 1.0,
    time_scale: float = 1.0,
    times: np.ndarray = SPREAD,
    lam: float = 2.0,
    acc_shift: float = 0.0,
) -> Path:
    """A gradcheck-like file (deterministic errors per seed, noisy times) and a train-like file."""
    grad = ResultWriter(path / "gradcheck.csv", "gradcheck.error_vs_k", ["inner_steps", "nu"])
    for k in (1, 4, 16):
        for seed, t in enumerate(times):
            grad.write_point(
                "fobmaml-sym", {"inner_steps": k, "nu": 0.01}, {"lam": lam}, seed,
                [
                    Measurement("rel_error", error_scale * 0.5 / k * (1 + 0.1 * seed), "1", "closed_form"),
                    Measurement("seconds", float(time_scale * 0.01 * k * t), "s", "wall_clock"),
                ],
            )
    train = ResultWriter(path / "train.csv", "train.mnist1d", ["iteration"])
    for seed, a in enumerate([0.80, 0.82, 0.84, 0.86, 0.81, 0.83]):
        train.write_point("maml", {"iteration": 100}, {"lam": 2.0}, seed,
                          [Measurement("eval_acc", a + acc_shift, "1", "evaluation")])
    return path


def verdicts(report: pd.DataFrame, metric: str) -> set[str]:
    return set(report.loc[report["metric"] == metric, "verdict"])


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write_run(tmp_path / "base")


def test_unchanged_copy_is_all_same(base: Path, tmp_path: Path, cli) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    report = comparison.run(read_results(base), read_results(copy))
    assert set(report["verdict"]) == {"same"}
    # 3 k x 8 seeds of a deterministic metric, 3 pooled timing points, 1 accuracy point
    assert len(report) == 3 * 8 + 3 + 1
    code, out, err = cli("compare", str(base), str(copy))
    assert code == 0, err
    assert "same" in out and "worse" not in out


def test_deterministic_metric_20_percent_worse_fails_and_is_named(base: Path, tmp_path: Path, cli) -> None:
    worse = write_run(tmp_path / "new", error_scale=1.2)
    report = comparison.run(read_results(base), read_results(worse))
    assert verdicts(report, "rel_error") == {"worse"}
    assert verdicts(report, "seconds") == {"same"}
    assert np.allclose(report.loc[report["metric"] == "rel_error", "ratio"], 1.2)
    code, out, _ = cli("compare", str(base), str(worse))
    assert code == 1
    assert "REGRESSION" in out and "rel_error" in out


def test_deterministic_change_below_rtol_is_same_and_above_is_counted(base: Path, tmp_path: Path) -> None:
    tiny = write_run(tmp_path / "tiny", error_scale=1 + 1e-9)
    small = write_run(tmp_path / "small", error_scale=1 + 1e-4)
    assert verdicts(comparison.run(read_results(base), read_results(tiny)), "rel_error") == {"same"}
    # deterministic: no factor, any change beyond rtol counts (better here: errors went down)
    better = write_run(tmp_path / "better", error_scale=1 - 1e-4)
    assert verdicts(comparison.run(read_results(base), read_results(small)), "rel_error") == {"worse"}
    assert verdicts(comparison.run(read_results(base), read_results(better)), "rel_error") == {"better"}
    loose = comparison.run(read_results(base), read_results(small), rtol=1e-3)
    assert verdicts(loose, "rel_error") == {"same"}


def test_roundoff_level_values_are_equal_within_atol(tmp_path: Path) -> None:
    """The exact gradient's ~1e-16 relative error is roundoff: doubling it is not a regression."""
    base = read_results(write_run(tmp_path / "b", error_scale=1e-15))
    new = read_results(write_run(tmp_path / "n", error_scale=2e-15))
    assert verdicts(comparison.run(base, new), "rel_error") == {"same"}
    assert verdicts(comparison.run(base, new, atol=0.0), "rel_error") == {"worse"}


def test_timing_5_percent_slower_with_overlapping_samples_is_not_a_regression(
    base: Path, tmp_path: Path, cli
) -> None:
    slower = write_run(tmp_path / "slower", time_scale=1.05)
    report = comparison.run(read_results(base), read_results(slower))
    timing = report[report["metric"] == "seconds"]
    assert set(timing["verdict"]) == {"same"}
    assert all("not significant" in note or "within factor" in note for note in timing["note"])
    code, _, _ = cli("compare", str(base), str(slower))
    assert code == 0


def test_timing_decision_needs_significance_and_factor(tmp_path: Path) -> None:
    base = read_results(write_run(tmp_path / "b", times=TIGHT))
    # 30% slower but with +-10% noise on only one side... both sides tight: significant and beyond
    slow_tight = read_results(write_run(tmp_path / "st", times=TIGHT, time_scale=1.3))
    assert verdicts(comparison.run(base, slow_tight), "seconds") == {"worse"}
    fast_tight = read_results(write_run(tmp_path / "ft", times=TIGHT, time_scale=0.7))
    assert verdicts(comparison.run(base, fast_tight), "seconds") == {"better"}
    # 5% slower with tight samples: significant, but within the 1.10 factor
    five = comparison.run(base, read_results(write_run(tmp_path / "5", times=TIGHT, time_scale=1.05)))
    assert verdicts(five, "seconds") == {"same"}
    assert all("within factor" in n for n in five.loc[five["metric"] == "seconds", "note"])
    # the same 5% counts once the factor is tightened
    assert verdicts(comparison.run(base, read_results(tmp_path / "5"), factor=1.02), "seconds") == {"worse"}


def test_wide_noise_hides_a_15_percent_change(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = np.exp(rng.normal(0, 0.5, size=8))  # ~50% log-normal noise
    base = read_results(write_run(tmp_path / "b", times=noisy))
    new = read_results(write_run(tmp_path / "n", times=noisy[::-1], time_scale=1.15))
    report = comparison.run(base, new)
    assert verdicts(report, "seconds") == {"same"}
    assert all("not significant" in n for n in report.loc[report["metric"] == "seconds", "note"])


def test_single_sample_of_a_noisy_metric_is_insufficient(tmp_path: Path) -> None:
    base = read_results(write_run(tmp_path / "b", times=np.array([1.0])))
    new = read_results(write_run(tmp_path / "n", times=np.array([1.0]), time_scale=3.0))
    report = comparison.run(base, new)
    timing = report[report["metric"] == "seconds"]
    assert set(timing["verdict"]) == {"insufficient samples"}  # not "same": nothing was decided
    assert all("1 vs 1 samples" in n for n in timing["note"])
    assert not comparison.failed(report)
    assert "3 insufficient samples" in comparison.summary(report)


def test_accuracy_is_higher_better(base: Path, tmp_path: Path) -> None:
    up = comparison.run(read_results(base), read_results(write_run(tmp_path / "up", acc_shift=0.15)))
    down = comparison.run(read_results(base), read_results(write_run(tmp_path / "dn", acc_shift=-0.15)))
    assert verdicts(up, "eval_acc") == {"better"}
    assert verdicts(down, "eval_acc") == {"worse"}


def test_config_change_is_not_comparable_and_not_a_regression(base: Path, tmp_path: Path, cli) -> None:
    other = write_run(tmp_path / "lam", lam=0.5, error_scale=3.0)
    report = comparison.run(read_results(base), read_results(other))
    gradcheck = report[report["benchmark"] == "gradcheck.error_vs_k"]
    assert set(gradcheck["verdict"]) == {"not comparable"}
    assert all("config differs" in n for n in gradcheck["note"])
    assert not comparison.failed(report)
    code, out, _ = cli("compare", str(base), str(other))
    assert code == 0 and "not comparable" in out


def test_missing_and_new_points(base: Path, tmp_path: Path) -> None:
    frame = read_results(base)
    fewer = frame[frame["inner_steps"] != 16]
    report = comparison.run(frame, fewer)
    assert set(report.loc[report["point"].str.startswith("inner_steps=16"), "verdict"]) == {"missing"}
    assert comparison.failed(report) and not comparison.failed(report, allow_missing=True)
    report = comparison.run(fewer, frame)
    assert set(report.loc[report["point"].str.startswith("inner_steps=16"), "verdict"]) == {"new"}
    assert not comparison.failed(report)


def test_a_run_missing_baseline_points_fails_the_gate_unless_allowed(base: Path, tmp_path: Path, cli) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(base / "train.csv", partial / "train.csv")  # the whole gradcheck benchmark is missing
    code, out, _ = cli("compare", str(base), str(partial))
    assert code == 1 and "REGRESSION" in out and "missing" in out and "--allow-missing" in out
    code, out, _ = cli("compare", str(base), str(partial), "--allow-missing")
    assert code == 0 and "OK:" in out


def test_nothing_comparable_is_exit_2_with_one_line(base: Path, tmp_path: Path, cli) -> None:
    other = tmp_path / "memory"
    writer = ResultWriter(other / "m.csv", "memory.transformer", ["seq"])
    writer.write_point("fomaml", {"seq": 32}, {}, 0,
                       [Measurement("peak_bytes", 1e6, "bytes", "cpu_dispatch_tracker")])
    writer.close()
    code, _, err = cli("compare", str(base), str(other))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "nothing comparable (no point in common)" in lines[0]
    assert "gradcheck.error_vs_k" in lines[0] and "memory.transformer" in lines[0]
    other = write_run(tmp_path / "lam", lam=0.5) / "gradcheck.csv"
    code, _, err = cli("compare", str(base / "gradcheck.csv"), str(other))
    assert code == 2 and "every shared point has another config hash" in err


def test_exit_codes_are_documented_in_help(cli) -> None:
    code, out, _ = cli("compare", "--help")
    text = " ".join(out.split())
    assert code == 0 and "--allow-missing" in text
    for fragment in ("0 = nothing got worse", "1 = something got worse", "2 = bad input"):
        assert fragment in text


def test_a_compare_report_among_results_is_skipped_by_compare_and_plot(base: Path, tmp_path: Path,
                                                                      cli) -> None:
    run = tmp_path / "run"
    shutil.copytree(base, run)
    assert cli("compare", str(base), str(run), "--csv", str(run / "compare.csv"))[0] == 0
    assert pd.read_csv(run / "compare.csv")["schema"].eq("fobbench.compare/1").all()
    code, _, err = cli("compare", str(base), str(run))  # the report lies inside NEW now
    assert code == 0 and "skipped" in err and "compare report" in err
    code, _, err = cli("plot", str(run), "--out", str(tmp_path / "figures"))
    assert code == 0 and "compare report" in err
    legacy = run / "old_report.csv"  # written before reports had a schema column
    pd.read_csv(run / "compare.csv").drop(columns="schema").to_csv(legacy, index=False)
    assert cli("compare", str(base), str(run))[0] == 0


def test_different_measured_by_is_never_matched(base: Path) -> None:
    frame = read_results(base)
    other = frame.copy()
    other["measured_by"] = other["measured_by"].replace({"closed_form": "estimate"})
    report = comparison.run(frame, other)
    rel = report[report["metric"] == "rel_error"]
    assert set(rel["verdict"]) == {"missing", "new"}


def test_point_columns_and_metric_table() -> None:
    frame = pd.DataFrame(columns=["schema", "run_id", "benchmark", "method", "k", "nu", "metric", "value",
                                  "unit", "measured_by", "seed", "config_hash", "status", "device",
                                  "host", "source", "seq"])
    assert comparison.point_columns(frame) == ["k", "nu", "seq"]
    assert comparison.direction_of("eval_acc") == "higher"
    assert comparison.direction_of("peak_bytes") == "lower"
    assert comparison.direction_of("some_new_accuracy") == "higher"
    assert comparison.kind_of("peak_bytes", "cpu_dispatch_tracker") == "deterministic"
    assert comparison.kind_of("peak_bytes", "wall_clock") == "noisy"
    assert comparison.kind_of("unknown_metric", "my_timer") == "noisy"
    assert comparison.kind_of("unknown_metric", "closed_form") == "deterministic"
    assert comparison.kind_of("seconds", "closed_form") == "noisy"


def test_point_columns_come_from_the_file_headers(tmp_path: Path) -> None:
    """An info column (outside the hash) is never a point column, whatever its name."""
    writer = ResultWriter(tmp_path / "x.csv", "gradcheck.error_vs_k", ["k", "nu"],
                          info_columns=["inner_lr", "seq"])
    writer.write_point("maml", {"k": 1, "nu": 0.1}, {}, 0,
                       [Measurement("rel_error", 0.5, "1", "closed_form")],
                       info={"inner_lr": 0.3, "seq": 4})
    frame = read_results(tmp_path / "x.csv")
    assert comparison.point_columns(frame) == ["k", "nu"]
    # an info value that changes between runs does not split the point
    other = frame.copy()
    other["inner_lr"] = 0.4
    assert set(comparison.run(frame, other)["verdict"]) == {"same"}


def test_markdown_and_csv_reports(base: Path, tmp_path: Path, cli) -> None:
    worse = write_run(tmp_path / "new", error_scale=1.2)
    md, csv = tmp_path / "report" / "summary.md", tmp_path / "report" / "compare.csv"
    code, _, _ = cli("compare", str(base), str(worse), "--markdown", str(md), "--csv", str(csv))
    assert code == 1
    text = md.read_text()
    assert text.count("**worse**") == 3 * 8 and "| benchmark |" in text
    table = pd.read_csv(csv)
    assert list(table.columns) == ["schema", *comparison.REPORT_COLUMNS]
    assert (table["verdict"] == "worse").sum() == 3 * 8
    # a compare report is not a results file: given directly, it is refused with one clear line
    with pytest.raises(FobbenchError, match="a fobbench compare report, not a results file"):
        read_results(csv)


def test_kind_filter(base: Path, tmp_path: Path, cli) -> None:
    worse = write_run(tmp_path / "new", error_scale=1.2)
    code, out, _ = cli("compare", str(base), str(worse), "--kind", "noisy")
    assert code == 0 and "rel_error" not in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (("missing-folder", "{base}"), "no such file or folder"),
        (("{bad}", "{base}"), "not a fobbench results CSV"),
        (("{base}", "{empty}"), "no results CSV files"),
        (("{base}", "{base}", "--factor", "0.9"), "--factor"),
        (("{base}", "{base}", "--kind", "fast"), "--kind"),
    ],
)
def test_bad_input_is_one_line_exit_2(base: Path, tmp_path: Path, cli, args, needle) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(base=base, bad=bad, empty=empty) for a in args]
    code, _, err = cli("compare", *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
