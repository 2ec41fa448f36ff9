"""``fobbench plot``: dispatch to figure modules, folder handling and one-line errors."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fobbench import plot as plotting
from fobbench.figures import common
from fobbench.results import Measurement, ResultWriter


def write_bench(folder: Path, benchmark: str, values: list[float]) -> Path:
    writer = ResultWriter(folder / f"{benchmark}.csv", benchmark, ["size"])
    for size, value in zip((1, 2, 4, 8), values, strict=False):
        writer.write_point("fobmaml-sym", {"size": size}, {}, 0,
                           [Measurement("score", float(value), "1", "closed_form")])
    return writer.path


@pytest.fixture
def fake_figures(monkeypatch):
    """Two figure modules: one that draws the mean per size, one that fails."""
    calls: dict[str, pd.DataFrame] = {}

    def draw(frame: pd.DataFrame, out_dir: Path, fmt: str = "png") -> list[Path]:
        calls["fakebench"] = frame
        fig, ax = common.plt.subplots()
        stats = common.aggregate(frame, ["size"])
        ax.plot(stats["size"], stats["mean"])
        return [common.save(fig, out_dir, "fakebench_score", fmt)]

    def broken(frame: pd.DataFrame, out_dir: Path, fmt: str = "png") -> list[Path]:
        raise ValueError("cannot draw")

    monkeypatch.setitem(sys.modules, "fobbench.figures.fakebench",
                        types.SimpleNamespace(draw=draw))
    monkeypatch.setitem(sys.modules, "fobbench.figures.brokenbench",
                        types.SimpleNamespace(draw=broken))
    return calls


def test_dispatch_by_prefix_and_figures_folder_is_skipped(tmp_path: Path, fake_figures, cli) -> None:
    results = tmp_path / "results"
    write_bench(results / "run1", "fakebench.alpha", [1, 2, 3, 4])
    write_bench(results / "run2", "fakebench.beta", [4, 3, 2, 1])
    write_bench(results / "run2", "nofigures.gamma", [1, 1, 1, 1])
    out = results / "figures"
    code, _, err = cli("plot", str(results), "--out", str(out))
    assert code == 0, err
    png = out / "fakebench_score.png"
    assert png.is_file() and Image.open(png).size[0] > 100
    # both runs of the prefix reached the one module; the other prefix is reported, not drawn
    assert set(fake_figures["fakebench"]["benchmark"]) == {"fakebench.alpha", "fakebench.beta"}
    assert "nofigures" in err and "no figure" in err
    # a stray CSV below the figures folder is never read back as results
    (out / "table.csv").write_text("not,results\n")
    code, _, err = cli("plot", str(results), "--out", str(out), "--format", "svg")
    assert code == 0, err
    assert (out / "fakebench_score.svg").read_text().lstrip().startswith("<?xml")


def test_default_figure_folder_is_beside_path_and_each_figure_is_named(tmp_path: Path, fake_figures,
                                                                       cli) -> None:
    results = tmp_path / "results"
    write_bench(results / "run1", "fakebench.alpha", [1, 2, 3, 4])
    code, out, err = cli("plot", str(results))
    assert code == 0, err
    png = tmp_path / "results-figures" / "fakebench_score.png"
    assert png.is_file() and not list(results.rglob("*.png"))
    assert f"figure: {png}" in err and str(png.parent) in out


def test_a_failing_figure_module_does_not_hide_the_others(tmp_path: Path, fake_figures, cli) -> None:
    write_bench(tmp_path / "r", "fakebench.alpha", [1, 2, 3, 4])
    write_bench(tmp_path / "r", "brokenbench.x", [1, 2, 3, 4])
    report = plotting.draw_all(plotting.collect(tmp_path / "r"), tmp_path / "fig", "png")
    assert "fakebench" in report.written and "cannot draw" in report.failed["brokenbench"]
    code, _, err = cli("plot", str(tmp_path / "r"), "--out", str(tmp_path / "fig2"))
    assert code == 1 and "brokenbench" in err and (tmp_path / "fig2" / "fakebench_score.png").is_file()


def test_empty_folder_unknown_schema_and_bad_format_exit_2(tmp_path: Path, cli) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("schema,benchmark,method,metric,value\nother/1,a,b,c,1\n")
    header_only = tmp_path / "header"
    ResultWriter(header_only / "x.csv", "gradcheck.error_vs_k", ["k"])
    good = tmp_path / "good"
    write_bench(good, "fakebench.alpha", [1, 2, 3, 4])
    cases = [
        ((str(empty),), "no results CSV"),
        ((str(foreign),), "unknown schema"),
        ((str(header_only),), "no rows"),
        ((str(tmp_path / "absent"),), "no such file"),
        ((str(good), "--format", "gif"), "--format"),
    ]
    for args, needle in cases:
        code, _, err = cli("plot", *args, "--out", str(tmp_path / "figs"))
        lines = err.strip().splitlines()
        assert code == 2, (args, err)
        assert len(lines) == 1 and needle in lines[0], (args, err)


TINY_SUITE = """\
description = "every benchmark kind at toy sizes"

[[run]]
name = "gc"
command = "gradcheck"
[run.options]
experiments = "error_vs_k,error_vs_nu,lambda,outer_loss"
methods = ["maml", "fomaml", "fobmaml-sym", "exact"]
k = "1,4"
nu_k = "2,4"
nu_grid = "1e-3..1e-1@3"
lam_grid = "0.5,2"
train_k = 2
iters = 3
dim = 4
tasks = 2
threads = 1

[[run]]
name = "mem"
command = "memory"
[run.options]
arch = "transformer"
d_model = 16
heads = 2
ffn = 16
methods = ["maml", "fobmaml-sym"]
tasks = 1
batch = 2
k = 2
[run.sweep]
option = "seq"
values = [4, 8]

[[run]]
name = "tr"
command = "train mnist1d"
[run.options]
methods = ["fobmaml-sym", "fomaml"]
iterations = 4
eval_every = 2
eval_tasks = 4
meta_batch = 2
num_samples = 1500
threads = 1
"""


def _main(*args: str) -> int:
    from fobbench.cli import main

    try:
        main(list(args))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory) -> Path:
    """Real results of every benchmark kind, run as two shards of one suite into one folder."""
    root = tmp_path_factory.mktemp("suite")
    suite = root / "tiny.toml"
    suite.write_text(TINY_SUITE)
    out = root / "out"
    assert _main("run", str(suite), "--out", str(out), "--shard", "1/2", "--quiet") == 0
    assert _main("run", str(suite), "--out", str(out), "--shard", "2/2", "--quiet") == 0
    return out


def test_two_shards_write_every_point_of_the_suite(suite_run: Path) -> None:
    assert sorted(p.relative_to(suite_run).as_posix() for p in suite_run.rglob("*.csv")) == [
        "gc/all/error_vs_k.csv", "gc/all/error_vs_nu.csv", "gc/all/lambda.csv", "gc/all/outer_loss.csv",
        "mem/seq-4.csv", "mem/seq-8.csv", "tr/all.csv",
    ]
    assert (suite_run / "mem" / "seq-4.log").read_text().startswith("$ fobbench memory")


def test_real_results_of_each_benchmark_kind_produce_figures(suite_run: Path, cli) -> None:
    figures = suite_run / "figures"
    code, out, err = cli("plot", str(suite_run), "--out", str(figures))
    assert code == 0, err
    pngs = sorted(p.name for p in figures.glob("*.png"))
    for prefix in ("gradcheck_", "memory_", "train_"):
        assert any(name.startswith(prefix) for name in pngs), (prefix, pngs)
    for png in figures.glob("*.png"):
        width, height = Image.open(png).size
        assert width >= 300 and height >= 200
    # integer point columns stay integers per benchmark (no cross-benchmark NaN upcasting)
    assert not any("3.0way" in name for name in pngs)
    # the shards' outputs compare like one run: against themselves, nothing changes
    code, out, _ = cli("compare", str(suite_run), str(suite_run), "--kind", "deterministic")
    assert code == 0 and "worse" not in out
