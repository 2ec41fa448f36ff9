"""The results store: schema round-trip, refusal of foreign schemas, interrupt and resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from fobbench.errors import FobbenchError
from fobbench.results import SCHEMA, Measurement, ResultWriter, config_hash, default_path, read_results
from fobbench.results.schema import PROVENANCE_COLUMNS, columns


def _writer(path: Path, resume: bool = False) -> ResultWriter:
    return ResultWriter(path, "demo.sweep", point_columns=("k", "nu"), info_columns=("status",),
                        resume=resume)


def test_round_trip_keeps_every_column_and_value(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    writer = _writer(path)
    writer.write_point("fobmaml-sym", {"k": 5, "nu": 0.1}, {"lam": 2.0}, seed=0,
                       measurements=[Measurement("rel_error", 0.0123456789012345, "1", "closed_form"),
                                     Measurement("seconds", 1.5, "s", "wall_clock")],
                       info={"status": "ok"})
    frame = pd.read_csv(path)  # readable by pandas with no arguments
    assert list(frame.columns) == columns(("k", "nu"), ("status",))
    assert set(PROVENANCE_COLUMNS) <= set(frame.columns)
    assert (frame["schema"] == SCHEMA).all()
    assert frame.loc[0, "value"] == 0.0123456789012345  # full float precision survives
    assert frame["k"].tolist() == [5, 5] and frame["status"].tolist() == ["ok", "ok"]
    again = read_results(path)
    assert again["config_hash"].nunique() == 1 and len(again) == 2


def test_config_hash_is_order_independent_and_seed_free(tmp_path: Path) -> None:
    assert config_hash({"a": 1, "b": 0.1}) == config_hash({"b": 0.1, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    writer = _writer(tmp_path / "h.csv")
    h1 = writer.point_hash("m", {"k": 1, "nu": 0.1, "seed": 0}, {"lam": 2.0})
    h2 = writer.point_hash("m", {"k": 1, "nu": 0.1, "seed": 5}, {"lam": 2.0})
    h3 = writer.point_hash("m", {"k": 1, "nu": 0.1}, {"lam": 3.0})
    assert h1 == h2 != h3


def test_runs_never_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    _writer(path)
    with pytest.raises(FobbenchError, match="already exists"):
        _writer(path)
    first = default_path("demo.sweep", root=tmp_path)
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_text("x")
    assert default_path("demo.sweep", root=tmp_path) != first


def test_foreign_schema_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    _writer(path).write_point("m", {"k": 1, "nu": 0.1}, {}, 0, [Measurement("x", 1.0, "1", "t")])
    text = path.read_text().replace(SCHEMA, "fobbench.results/2")
    path.write_text(text)
    with pytest.raises(FobbenchError, match=r"line 2: schema 'fobbench.results/2' is not supported"):
        read_results(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b,c\n1,2,3\n", "not a fobbench results CSV"),
        ("", "empty file"),
    ],
)
def test_foreign_csv_is_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "x.csv").write_text(content)
    with pytest.raises(FobbenchError, match=message):
        read_results(tmp_path)


def test_malformed_row_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    _writer(path).write_point("m", {"k": 1, "nu": 0.1}, {}, 0, [Measurement("x", 1.0, "1", "t")])
    with path.open("a") as handle:
        handle.write("fobbench.results/1,only,three\n")
    with pytest.raises(FobbenchError, match=r"r.csv: line 3: 3 fields"):
        read_results(path)


def test_folder_gathers_all_csvs_and_empty_folder_errors(tmp_path: Path) -> None:
    for name in ("a", "b"):
        ResultWriter(tmp_path / name / "r.csv", f"demo.{name}", ("k",)).write_point(
            "m", {"k": 1}, {}, 0, [Measurement("x", 1.0, "1", "t")])
    frame = read_results(tmp_path)
    assert sorted(frame["benchmark"]) == ["demo.a", "demo.b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FobbenchError, match="no results CSV"):
        read_results(tmp_path / "empty")


SWEEP = textwrap.dedent(
    """
    import sys, time
    from fobbench.results import Measurement, ResultWriter
    path, resume, delay = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    writer = ResultWriter(path, "demo.sweep", ("k", "nu"), ("status",), resume=resume)
    print("started", flush=True)
    for k in range(1, 41):
        for method in ("a", "b"):
            point = {"k": k, "nu": 0.1}
            if writer.is_done(method, point, {"lam": 2.0}, 0):
                continue
            time.sleep(delay)
            writer.write_point(method, point, {"lam": 2.0}, 0,
                               [Measurement("err", 1.0 / k, "1", "closed_form"),
                                Measurement("sec", 0.01, "s", "wall_clock")], {"status": "ok"})
    """
)


def test_kill_mid_sweep_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sweep.csv"
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    process = subprocess.Popen([sys.executable, str(script), str(path), "0", "0.02"], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "started"
    deadline = time.time() + 30
    while time.time() < deadline:
        rows = path.read_text().count("\n") - 1 if path.exists() else 0
        if rows >= 10:
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    # A kill can also land inside a write: simulate the worst case, a half-written last line.
    with path.open("a") as handle:
        handle.write("fobbench.results/1,deadbeef,demo.sweep,a,41")
    partial = read_results(path)  # readable, the torn line is ignored
    finished = len(partial)
    # The torn line's hash did not survive, so the point before it is dropped too (at worst a
    # finished point is measured again): whole points only (2 rows each).
    assert 8 <= finished < 160 and finished % 2 == 0
    assert not partial.duplicated(subset=["method", "k", "metric"]).any()

    subprocess.run([sys.executable, str(script), str(path), "1", "0"], check=True, timeout=120)
    final = read_results(path)
    assert len(final) == 40 * 2 * 2
    assert not final.duplicated(subset=["method", "k", "metric"]).any()
    assert final["run_id"].nunique() == 1  # a resumed run keeps its id
    with path.open(newline="") as handle:
        widths = {len(row) for row in csv.reader(handle)}
    assert len(widths) == 1


def test_resume_refuses_a_file_with_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    ResultWriter(path, "demo.sweep", ("k",))
    with pytest.raises(FobbenchError, match="columns differ"):
        _writer(path, resume=True)
    with pytest.raises(FobbenchError, match="does not exist"):
        _writer(tmp_path / "missing.csv", resume=True)
