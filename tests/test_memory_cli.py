"""``fobbench memory`` end to end: CSV rows, OOM handling, resume, errors and figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from fobbench.figures.memory import draw
from fobbench.results import read_results

TINY = ("--arch", "transformer", "--d-model", "16", "--heads", "2", "--ffn", "32", "--tasks", "1",
        "--batch", "2", "--inner-steps", "2", "--cg-steps", "2", "--es-samples", "2", "--quiet")


def _statuses(path: Path) -> pd.DataFrame:
    frame = read_results(path)
    return frame[frame["metric"] == "peak_mib"].set_index(["method", "seq"])


def test_limit_records_oom_and_the_sweep_continues(cli, tmp_path: Path) -> None:
    out = tmp_path / "mem.csv"
    code, stdout, stderr = cli("memory", *TINY, "--seq", "8,64", "--methods", "maml,fomaml",
                               "--limit", "0.25", "--out", str(out))
    assert code == 0, stderr
    rows = _statuses(out)
    assert len(rows) == 4  # every (seq, method) pair has its row
    assert rows.loc[("maml", 64), "status"] == "oom"  # MAML at seq 64 needs more than 0.25 MiB
    assert pd.isna(rows.loc[("maml", 64), "value"])
    assert rows.loc[("fomaml", 64), "status"] == "ok"  # and the sweep went on after it
    assert rows.loc[("fomaml", 64), "value"] < 0.25
    assert "oom" in stdout and "maml" in stdout  # the final table
    figures = list((tmp_path / "mem-figures").glob("*.png"))
    assert [f.name for f in figures] == ["memory_transformer_seq.png"]
    assert f"figure: {figures[0]}" in stderr  # the full path of each figure written


def test_rows_record_every_setting_and_how_they_were_measured(cli, tmp_path: Path) -> None:
    out = tmp_path / "mem.csv"
    code, _, stderr = cli("memory", *TINY, "--seq", "8", "--methods", "maml,fobmaml-sym", "--out", str(out),
                          "--no-plot")
    assert code == 0, stderr
    frame = read_results(out)
    assert set(frame["benchmark"]) == {"memory.transformer"}
    for column in ("d_model", "seq", "heads", "ffn", "depth", "batch", "tasks", "inner_steps", "lam", "nu",
                   "cg_steps", "es_samples", "batching", "sdpa", "status", "sdpa_backend", "sweep"):
        assert column in frame.columns, column
    assert set(frame["metric"]) == {"peak_bytes", "peak_mib", "peak_abs_bytes", "baseline_bytes", "seconds"}
    memory_rows = frame[frame["metric"] != "seconds"]
    assert set(memory_rows["measured_by"]) == {"cpu_dispatch_tracker"}
    assert set(frame["batching"]) == {"loop"}
    kernels = frame.groupby("method")["sdpa_backend"].first()
    assert kernels["maml"] == "math (second-order fallback)" and kernels["fobmaml-sym"] != "math"
    peak = frame[frame["metric"] == "peak_bytes"].set_index("method")["value"]
    absolute = frame[frame["metric"] == "peak_abs_bytes"].set_index("method")["value"]
    baseline = frame[frame["metric"] == "baseline_bytes"].set_index("method")["value"]
    assert (absolute == peak + baseline).all() and (baseline > 0).all()
    assert not (tmp_path / "mem").exists()  # --no-plot


def test_estimate_rows_are_labelled_and_resume_skips_finished_points(cli, tmp_path: Path) -> None:
    out = tmp_path / "est.csv"
    args = ("memory", *TINY, "--seq", "8,16", "--methods", "fomaml", "--estimate", "--no-plot")
    code, _, stderr = cli(*args, "--out", str(out))
    assert code == 0, stderr
    frame = read_results(out)
    assert set(frame["measured_by"]) == {"estimate"} and "seconds" not in set(frame["metric"])
    assert set(frame["device"]) == {"meta"}
    lines = out.read_text().count("\n")
    code, _, stderr = cli(*args, "--resume", str(out))
    assert code == 0, stderr
    assert out.read_text().count("\n") == lines  # nothing measured twice


def test_convnet_sweep_runs(cli, tmp_path: Path) -> None:
    out = tmp_path / "conv.csv"
    code, stdout, stderr = cli("memory", "--arch", "convnet", "--channels", "2,4", "--depth", "2",
                               "--image", "6", "--tasks", "1", "--batch", "2", "--inner-steps", "1",
                               "--methods", "fomaml,fobmaml-forward", "--quiet", "--out", str(out))
    assert code == 0, stderr
    frame = read_results(out)
    peaks = frame[frame["metric"] == "peak_bytes"]
    assert len(peaks) == 4 and (peaks["value"] > 0).all()
    assert set(frame["sweep"]) == {"channels"} and "channels" in stdout
    assert (out.parent / "conv-figures" / "memory_convnet_channels.png").is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--seq", "8..32", "--d-model", "16,32"), "one size at a time"),
        (("--seq", "8", "--d-model", "13"), "divisible"),
        (("--seq", "0"), "--seq"),
        (("--seq", ""), "--seq: empty value"),
        (("--seq", "32,"), "--seq: '32,' has an empty item"),
        (("--seq", "8", "--lam", "-1"), "--lam (λ) must be"),
        (("--seq", "8", "--nu", "0"), "--nu (ν) must be"),
        (("--seq", "8", "--methods", "exact"), "exact is gradcheck-only"),
        (("--seq", "8", "--methods", "maml,bogus"), "bogus"),
        (("--seq", "8", "--channels", "16"), "--channels"),
        (("--seq", "8", "--limit", "-1"), "--limit"),
        (("--seq", "8", "--inner-steps", "0"), "--inner-steps (K) must be"),
        (("--seq", "8", "--estimate", "--device", "cuda"), "--estimate"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    out = tmp_path / "x.csv"
    code, _, stderr = cli("memory", *TINY, *args, "--out", str(out))  # the last value wins
    assert code == 2 and not out.exists()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(cli, tmp_path: Path) -> None:
    code, _, stderr = cli("memory", *TINY, "--seq", "8", "--device", "cuda", "--out", str(tmp_path / "x.csv"))
    assert code == 2 and "CUDA is not available" in stderr and len(stderr.strip().splitlines()) == 1


def test_figure_marks_oom_points_and_splits_measurement_kinds(tmp_path: Path) -> None:
    rows = []
    for by in ("cpu_dispatch_tracker", "estimate"):
        for seq, value, status in ((32, 10.0, "ok"), (64, 40.0, "ok"), (128, float("nan"), "oom")):
            rows.append({"schema": "fobbench.results/1", "benchmark": "memory.transformer", "method": "maml",
                         "seq": seq, "d_model": 128, "metric": "peak_mib", "value": value, "unit": "MiB",
                         "measured_by": by, "status": status, "sweep": "seq", "device_name": "cpu"})
    frame = pd.DataFrame(rows)
    import matplotlib.pyplot as plt

    from fobbench.figures import memory as figures

    captured = {}
    original = figures.save

    def spy(fig, out_dir, name, fmt="png"):
        ax = fig.axes[0]
        captured["labels"] = [line.get_label() for line in ax.get_lines()]
        captured["markers"] = [line.get_marker() for line in ax.get_lines()]
        return original(fig, out_dir, name, fmt)

    figures.save = spy
    try:
        paths = draw(frame, tmp_path, "svg")
    finally:
        figures.save = original
    plt.close("all")
    assert [p.name for p in paths] == ["memory_transformer_seq.svg"] and paths[0].is_file()
    assert captured["labels"].count("maml · cpu_dispatch_tracker") == 1
    assert captured["labels"].count("maml · estimate") == 1  # never merged into one line
    assert captured["markers"].count("x") == 2  # one OOM marker per series


def test_threads_default_to_one_are_recorded_and_do_not_change_bytes(cli, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    rows = {}
    for threads in (None, 2):
        out = tmp_path / f"mem-{threads}.csv"
        extra = () if threads is None else ("--threads", str(threads))
        code, _, stderr = cli("memory", *TINY, "--seq", "8", "--methods", "fomaml,fobmaml-sym",
                              "--no-plot", "--out", str(out), *extra)
        assert code == 0, stderr
        rows[threads] = read_results(out)
    assert set(rows[None]["threads"].astype(str)) == {"1"} and set(rows[2]["threads"].astype(str)) == {"2"}
    peak = {t: frame[frame["metric"] == "peak_bytes"].set_index("method")["value"]
            for t, frame in rows.items()}
    assert peak[None].equals(peak[2])
    assert torch.get_num_threads() == before  # restored
    code, _, stderr = cli("memory", *TINY, "--seq", "8", "--threads", "0")
    assert code == 2 and "--threads must be >= 1" in stderr
