"""The shared runner: every results file it opens is locked while it writes and released after."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fobbench.errors import FobbenchError
from fobbench.experiments import runner
from fobbench.results import Measurement, ResultWriter, read_results
from fobbench.results.lock import lock_path


@dataclass(frozen=True)
class Demo:
    """Two outputs (a folder run), ``points`` points each; fails after ``fail_after`` records."""

    points: int = 3
    fail_after: int | None = None

    def outputs(self) -> list[runner.Output]:
        return [runner.Output("a", "demo.a", ("x",)), runner.Output("b", "demo.b", ("x",))]

    def total(self) -> int:
        return 2 * self.points

    def records(self, sink: runner.Sink) -> Iterator[runner.Record | runner.Tick]:
        count = 0
        for output in ("a", "b"):
            for x in range(self.points):
                if self.fail_after is not None and count == self.fail_after:
                    raise RuntimeError("boom")
                count += 1
                record = runner.Record("m", {"x": x}, output=output)
                yield record if sink.done(record) else runner.Record(
                    "m", {"x": x}, output=output, measurements=[Measurement("v", float(x), "1", "t")])


def _unlocked(folder: Path) -> bool:
    return not any(lock_path(folder / f"{name}.csv").exists() for name in ("a", "b"))


def test_consecutive_runs_in_one_process_release_their_locks(tmp_path: Path) -> None:
    for number in range(3):  # like `fobbench run`: several points, one process
        runner.execute(Demo(), tmp_path / f"p{number}")
        assert _unlocked(tmp_path / f"p{number}")
    runner.execute(Demo(points=4), tmp_path / "p0", resume=True)  # the same folder again
    assert len(read_results(tmp_path / "p0" / "a.csv")) == 4
    ResultWriter(tmp_path / "p0" / "b.csv", "demo.b", ("x",), resume=True).close()


def test_a_failing_run_releases_its_locks_and_keeps_finished_points(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        runner.execute(Demo(fail_after=4), tmp_path / "r")
    assert _unlocked(tmp_path / "r")
    runner.execute(Demo(), tmp_path / "r", resume=True)
    assert [len(read_results(tmp_path / "r" / f"{name}.csv")) for name in ("a", "b")] == [3, 3]


def test_resume_names_the_folder_when_given_one_of_its_files(tmp_path: Path) -> None:
    runner.execute(Demo(), tmp_path / "r")
    with pytest.raises(FobbenchError, match=f"takes the run's folder.*--resume {tmp_path / 'r'}$"):
        runner.execute(Demo(), tmp_path / "r" / "a.csv", resume=True)
    with pytest.raises(FobbenchError, match=f"pass --resume {tmp_path / 'r'} to continue"):
        runner.execute(Demo(), tmp_path / "r")
