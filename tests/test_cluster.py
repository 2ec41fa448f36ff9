"""Cluster-array suites (issue 16): ``--shard slurm`` and shard file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from fobbench import suites
from fobbench.cluster import array_folder, resolve_shard, shard_file, shard_label
from fobbench.errors import FobbenchError
from fobbench.results import Measurement, ResultWriter, read_results

ROOT = Path(__file__).resolve().parents[1]


def _array(task: int, count: int, **extra: str) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(count), **extra}


def test_i_of_n_is_parsed_as_before() -> None:
    assert resolve_shard("2/8", {}) == (2, 8)
    assert resolve_shard(" 1 / 1 ", _array(5, 9)) == (1, 1)  # explicit I/N wins over SLURM's
    with pytest.raises(FobbenchError, match="not I/N"):
        resolve_shard("2-8", {})


@pytest.mark.parametrize(("env", "expected"), [
    (_array(0, 3), (1, 3)),
    (_array(2, 3), (3, 3)),
    (_array(1, 8, SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="8"), (1, 8)),  # --array=1-8
    (_array(8, 8, SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="8"), (8, 8)),
    (_array(14, 8, SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="14", SLURM_ARRAY_TASK_STEP="2"), (8, 8)),
    (_array(0, 1), (1, 1)),
])
def test_slurm_shard_is_the_zero_based_array_index_plus_one(env: dict[str, str],
                                                            expected: tuple[int, int]) -> None:
    assert resolve_shard("slurm", env) == expected
    assert resolve_shard("SLURM", env) == expected


@pytest.mark.parametrize(("env", "fragment"), [
    ({}, "$SLURM_ARRAY_TASK_ID is not set"),
    ({"SLURM_ARRAY_TASK_ID": "0"}, "$SLURM_ARRAY_TASK_COUNT is not set"),
    (_array(0, 3) | {"SLURM_ARRAY_TASK_ID": "zero"}, "'zero' is not a non-negative integer"),
    (_array(3, 3), "SLURM_ARRAY_TASK_ID=3 is not one of 3 indices from 0"),
    (_array(0, 3, SLURM_ARRAY_TASK_MIN="1"), "SLURM_ARRAY_TASK_ID=0 is not one of 3"),
    (_array(0, 0), "SLURM_ARRAY_TASK_COUNT >= 1"),
    # --array=1,4,9
    (_array(4, 3, SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="9"), "not 3 evenly spaced jobs"),
    (_array(1, 3, SLURM_ARRAY_TASK_STEP="2"), "is not one of 3 indices from 0 step 2"),
])
def test_bad_slurm_environment_is_one_line(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(FobbenchError) as error:
        resolve_shard("slurm", env)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_three_slurm_jobs_cover_the_ci_suite_exactly_once() -> None:
    points = suites.expand(suites.load(ROOT / "suites" / "ci.toml"))
    taken = [p.index for task in range(3)
             for p in suites.shard(points, *resolve_shard("slurm", _array(task, 3)))]
    assert sorted(taken) == [p.index for p in points] and len(points) >= 3
    outputs = [p.output(Path("out")) for p in points]
    assert len(set(outputs)) == len(outputs)  # every point has its own file: shards never share one


def test_shard_files_and_the_array_folder() -> None:
    assert shard_label(3, 8) == "shard-3-of-8" and shard_label(1, 1) == "all"
    assert shard_file(Path("runs"), "summary", 3, 8, ".log") == Path("runs/summary.shard-3-of-8.log")
    assert shard_file(Path("runs"), "summary", 1, 1) == Path("runs/summary.csv")
    with pytest.raises(FobbenchError):
        shard_label(0, 8)
    assert array_folder(Path("results/suites"), "paper", {"SLURM_ARRAY_JOB_ID": "4242"}) == Path(
        "results/suites/paper-slurm4242")
    assert array_folder(Path("results"), "paper", {}) is None
    with pytest.raises(FobbenchError, match="not a job id"):
        array_folder(Path("results"), "paper", {"SLURM_ARRAY_JOB_ID": "../x"})


def test_a_folder_of_shard_files_reads_as_one_result_set(tmp_path: Path) -> None:
    """What ``fobbench plot``/``compare`` rely on: read_results concatenates every CSV below a folder."""
    for index in (1, 2, 3):
        writer = ResultWriter(shard_file(tmp_path / "run", "point", index, 3), "demo.x", ("k",))
        writer.write_point("m", {"k": index}, {}, 0, [Measurement("v", float(index), "1", "exact")])
    frame = read_results(tmp_path)
    assert sorted(frame["k"]) == [1, 2, 3] and frame["source"].nunique() == 3


def test_run_shard_slurm_takes_its_slice_into_the_array_folder(cli, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in {**_array(1, 3), "SLURM_ARRAY_JOB_ID": "4242"}.items():
        monkeypatch.setenv(key, value)
    code, out, err = cli("run", str(ROOT / "suites" / "ci.toml"), "--shard", "slurm", "--dry-run")
    assert code == 0, err
    assert "shard 2/3: " in out and str(Path("results") / "suites" / "ci-slurm4242") in out
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    code, _, err = cli("run", str(ROOT / "suites" / "ci.toml"), "--shard", "slurm", "--dry-run")
    assert code == 2 and "$SLURM_ARRAY_TASK_ID is not set" in err
