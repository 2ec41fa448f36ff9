"""Faults in the results store: a second concurrent writer, and points torn by a kill."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fobbench.errors import FobbenchError
from fobbench.results import Measurement, ResultWriter, read_results
from fobbench.results.lock import LockedError, lock_path
from fobbench.results.store import torn_tail

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("err", "sec", "bytes")


def _writer(path: Path, resume: bool = False) -> ResultWriter:
    return ResultWriter(path, "demo.sweep", ("k",), resume=resume, report=lambda message: None)


def _point(writer: ResultWriter, k: int) -> None:
    writer.write_point("a", {"k": k}, {"lam": 2.0}, 0,
                       [Measurement(m, float(k), "1", "closed_form") for m in METRICS])


def _sweep(writer: ResultWriter, n: int = 5) -> int:
    """Write the points 1..n that are not done; returns how many were written."""
    written = 0
    for k in range(1, n + 1):
        if not writer.is_done("a", {"k": k}, {"lam": 2.0}, 0):
            _point(writer, k)
            written += 1
    return written


# --- 1. one writer per file ---------------------------------------------------------------


def test_second_writer_of_a_file_is_refused_naming_the_holder_pid(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    first = _writer(path)
    _point(first, 1)
    with pytest.raises(LockedError, match=rf"r.csv is being written by process {os.getpid()}\b") as info:
        _writer(path, resume=True)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    first.close()
    second = _writer(path, resume=True)  # free again once the first writer is done
    assert _sweep(second) == 4
    second.close()
    assert not lock_path(path).exists()  # a clean release leaves no lock file behind
    assert len(read_results(path)) == 5 * len(METRICS)


HOLD = textwrap.dedent(
    """
    import sys
    from fobbench.results import ResultWriter
    writer = ResultWriter(sys.argv[1], "memory.transformer", ("seq",))
    print("holding", flush=True)
    sys.stdin.read()
    """
)


def test_cli_resume_of_a_file_being_written_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mem.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        done = subprocess.run(
            [sys.executable, "-m", "fobbench", "memory", "--arch", "transformer", "--seq", "32",
             "--methods", "fomaml", "--resume", str(path), "--quiet", "--no-plot"],
            check=False, capture_output=True, text=True, env=env, timeout=120,
        )
    finally:
        holder.communicate("", timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"being written by process {holder.pid}" in done.stderr and str(path) in done.stderr


def test_a_lock_left_by_a_killed_writer_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    holder.kill()
    holder.wait(timeout=30)
    assert lock_path(path).exists()  # the kill left the sidecar file, but the kernel dropped the lock
    ResultWriter(path, "memory.transformer", ("seq",), resume=True).close()


def test_gradcheck_advice_names_what_its_resume_takes(cli, tmp_path: Path) -> None:
    out = tmp_path / "g"
    args = ("gradcheck", "--methods", "fomaml", "--inner-steps", "1", "--no-plot", "--quiet")
    assert cli(*args, "--out", str(out))[0] == 0
    code, _, stderr = cli(*args, "--out", str(out))
    assert code == 2 and f"pass --resume {out} to continue" in stderr
    assert cli(*args, "--resume", str(out))[0] == 0  # the advice works as given
    code, _, stderr = cli(*args, "--resume", str(out / "error_vs_k.csv"))
    assert code == 2 and f"--resume {out}" in stderr


# --- 2. torn points -----------------------------------------------------------------------


def _cut(path: Path, row: int, keep_fields: int) -> None:
    """Cut the file inside data row ``row`` (1-based), keeping ``keep_fields`` whole fields of it."""
    lines = path.read_bytes().split(b"\n")
    prefix = b",".join(lines[row].split(b",")[:keep_fields]) + b","
    path.write_bytes(b"\n".join(lines[:row]) + b"\n" + prefix)


@pytest.mark.parametrize("keep_fields", [3, 12])
def test_a_point_torn_inside_is_dropped_reported_and_measured_again(tmp_path: Path, keep_fields: int) -> None:
    path = tmp_path / "r.csv"
    with _writer(path) as writer:
        _sweep(writer)
    rows = 5 * len(METRICS)
    _cut(path, rows - 1, keep_fields)  # inside the 2nd of point 5's 3 rows: one whole row before it
    notes: list[str] = []
    frame = read_results(path, report=notes.append)
    assert len(frame) == 4 * len(METRICS)  # point 5 left out whole, not with 1 of its 3 rows
    assert sorted(frame["k"].unique()) == [1, 2, 3, 4]
    assert len(notes) == 1 and "torn" in notes[0] and "2 row(s)" in notes[0]
    with _writer(path, resume=True) as writer:
        assert _sweep(writer) == 1  # point 5 is not counted as done
    final = read_results(path)
    assert len(final) == rows and not final.duplicated(["k", "metric"]).any()
    assert final.groupby("k").size().eq(len(METRICS)).all()


def test_a_torn_first_row_of_a_point_keeps_the_finished_point_before_it(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with _writer(path) as writer:
        _sweep(writer)
    data = path.read_bytes()
    _cut(path, 4 * len(METRICS) + 1, 12)  # point 5's first row, its config_hash whole
    assert torn_tail(path.read_bytes()) == (len(b"\n".join(data.split(b"\n")[: 4 * len(METRICS) + 1])) + 1, 1)
    assert sorted(read_results(path, report=lambda m: None)["k"].unique()) == [1, 2, 3, 4]


def test_an_intact_file_has_no_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with _writer(path) as writer:
        _sweep(writer)
    data = path.read_bytes()
    assert torn_tail(data) == (len(data), 0)


def test_a_newline_terminated_damaged_row_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with _writer(path) as writer:
        _sweep(writer)
    with path.open("a") as handle:
        handle.write("fobbench.results/1,x,y\n")
    with pytest.raises(FobbenchError, match="line 17: 3 fields"):
        read_results(path)
