"""Ctrl-C: exit 130 with the exact command that continues the run (issue 13, item 3)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fobbench.errors import Interrupted

ROOT = Path(__file__).resolve().parents[1]


def test_continue_args_replace_out_and_resume() -> None:
    args = ["memory", "--seq", "8,16", "--out", "a.csv", "--quiet"]
    assert Interrupted(resume=Path("a.csv")).continue_args(args) == [
        "memory", "--seq", "8,16", "--quiet", "--resume", "a.csv"]
    assert Interrupted(resume=Path("g")).continue_args(["gradcheck", "--resume=g", "--no-plot"]) == [
        "gradcheck", "--no-plot", "--resume", "g"]
    assert Interrupted(suite_out=Path("o")).continue_args(["run", "s.toml", "--out", "o", "--quiet"]) == [
        "run", "s.toml", "--quiet", "--out", "o", "--resume"]
    assert Interrupted().continue_args(["memory"]) is None


def _interrupt(args: list[str], written: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Start ``python -m fobbench ARGS``, SIGINT it once ``written`` holds a finished row."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fobbench", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = [written] if written.suffix == ".csv" else list(written.glob("*.csv"))
        if any(f.exists() and f.read_text().count("\n") >= 2 for f in files):
            break
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("command", ["memory", "gradcheck"])
def test_sigint_exits_130_naming_the_resume_command(tmp_path: Path, command: str) -> None:
    if command == "memory":
        out = tmp_path / "mem.csv"
        args = ["memory", "--arch", "transformer", "--d-model", "16", "--heads", "2", "--ffn", "32",
                "--batch", "2", "--inner-steps", "1", "--seq", "8..8192", "--methods", "fomaml,maml",
                "--no-plot", "--quiet", "--out", str(out)]
    else:
        out = tmp_path / "g"  # gradcheck's --resume takes the folder
        args = ["gradcheck", "--experiments", "error_vs_k", "--methods", "fomaml", "--inner-steps", "1,2",
                "--seeds", "0..5000", "--threads", "1", "--no-plot", "--quiet", "--out", str(out)]
    done = _interrupt(args, out, tmp_path)
    resumed = [a for a in args if a not in ("--out", str(out))] + ["--resume", str(out)]
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"fobbench: interrupted; continue with: fobbench {shlex.join(resumed)}")
    assert "Traceback" not in done.stderr


class _SwallowedInterrupt:
    """An experiment whose second point is interrupted inside a ``__del__`` (where Python cannot
    raise the KeyboardInterrupt and only reports it as unraisable)."""

    def outputs(self) -> list:
        from fobbench.experiments import runner

        return [runner.Output("", "test.interrupt", ("n",))]

    def total(self) -> int:
        return 5

    def records(self, sink) -> Iterator:
        from fobbench.experiments import runner
        from fobbench.results import Measurement

        class Dying:
            def __del__(self) -> None:
                raise KeyboardInterrupt

        for n in range(5):
            if n == 2:
                Dying()  # the Ctrl-C lands in a destructor: swallowed by Python
            yield runner.Record("fomaml", {"n": n}, seed=0,
                                measurements=[Measurement("value", float(n), "1", "test")])


def test_ctrl_c_swallowed_by_a_destructor_still_stops_the_run(tmp_path: Path, capsys) -> None:
    from fobbench.experiments import runner
    from fobbench.results import read_results

    out = tmp_path / "t.csv"
    with pytest.raises(Interrupted) as stopped:
        runner.execute(_SwallowedInterrupt(), out, quiet=True)
    assert stopped.value.resume == out
    assert sorted(read_results(out)["n"]) == [0, 1, 2]  # the point in flight is written, then it stops
    assert "Exception ignored" not in capsys.readouterr().err
