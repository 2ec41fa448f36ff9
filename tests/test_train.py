"""``fobbench train``: learning well above chance, exact resume, evaluation, speed floor, CLI errors.

MNIST-1D is generated with 5,000 samples (the package default; 4,000 meta-train / 1,000
held-out examples) into the session's temporary cache shared with ``test_mnist1d.py``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from scipy import stats

from fobbench.estimators import REGISTRY, EstimatorConfig, names
from fobbench.experiments import train as experiment
from fobbench.figures import train as figures
from fobbench.inner import InnerConfig, solve
from fobbench.params import classification_loss
from fobbench.problems.mnist1d import MNIST1DProblem
from fobbench.results import read_results

SMALL = ("--num-samples", "5000", "--threads", "2", "--quiet")


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.getbasetemp() / "fobbench-cache"
    folder.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FOBBENCH_CACHE", str(folder))
        yield folder


def _values(frame: pd.DataFrame, method: str, metric: str) -> pd.Series:
    rows = frame[(frame["method"] == method) & (frame["metric"] == metric)]
    return rows.set_index("iteration")["value"].sort_index()


def test_short_training_beats_chance_by_far(cli, tmp_path: Path) -> None:
    out = tmp_path / "run.csv"
    code, stdout, stderr = cli(
        "train", "mnist1d", "--methods", "fobmaml-sym,maml", "--iterations", "30", "--meta-batch", "4",
        "--eval-every", "30", "--eval-tasks", "60", "--out", str(out), *SMALL,
    )
    assert code == 0, stderr
    frame = read_results(out)
    assert set(frame["benchmark"]) == {"train.mnist1d"}
    assert frame["split_hash"].notna().all() and frame["split_hash"].nunique() == 1
    for method in ("fobmaml-sym", "maml"):
        acc = _values(frame, method, "eval_acc")
        assert list(acc.index) == [0, 30]
        # 3-way: chance is 1/3; the trained model must clear it by far and beat its own start.
        assert acc[30] > 0.6, (method, acc.to_dict())
        assert acc[30] > acc[0] + 0.05, (method, acc.to_dict())
        last = frame[(frame["method"] == method) & (frame["iteration"] == 30)].set_index("metric")
        for metric in ("eval_acc_ci95", "eval_loss", "train_loss", "wall_time", "sec_per_iter",
                       "cpu_sec_per_iter", "floor_sec", "floor_ratio"):
            assert metric in last.index
        # On CPU the floor and its ratio are process CPU time, the ratio of the two CPU rows;
        # SMALL's two torch threads cannot spend more than 2× the wall time (+ a little).
        assert (last.loc[["cpu_sec_per_iter", "floor_sec", "floor_ratio"], "measured_by"]
                == "process_cpu_time").all()
        ratio = last.loc["cpu_sec_per_iter", "value"] / last.loc["floor_sec", "value"]
        assert last.loc["floor_ratio", "value"] == pytest.approx(ratio, rel=1e-12)
        assert last.loc["cpu_sec_per_iter", "value"] <= 2.2 * last.loc["sec_per_iter", "value"] + 0.01
    held = frame[frame["metric"] == "eval_acc"]
    assert held["split"].str.contains("held-out").all()
    # The rich table and the figures beside the CSV.
    assert "fobmaml-sym" in stdout and "maml" in stdout and "±95%" in stdout
    written = sorted(p.name for p in (tmp_path / "run-figures").iterdir())
    assert "train_mnist1d_3way5shot_accuracy.png" in written
    assert "train_mnist1d_3way5shot_speed.png" in written
    assert "train_mnist1d_3way5shot_final.md" in written
    assert sorted(p.name for p in (tmp_path / "run-checkpoints").iterdir()) == [
        "fobmaml-sym-seed0.pt", "maml-seed0.pt"]


def test_resume_reproduces_an_uninterrupted_run(cli, tmp_path: Path) -> None:
    common = ("--methods", "fobmaml-sym,reptile", "--meta-batch", "3", "--eval-every", "2",
              "--eval-tasks", "6", "--checkpoint-every", "2", "--seeds", "0,1", "--no-plot", *SMALL)
    straight, broken = tmp_path / "straight.csv", tmp_path / "broken.csv"
    assert cli("train", "mnist1d", *common, "--iterations", "4", "--out", str(straight))[0] == 0
    assert cli("train", "mnist1d", *common, "--iterations", "2", "--out", str(broken))[0] == 0
    code, _, stderr = cli("train", "mnist1d", *common, "--iterations", "4", "--resume", str(broken))
    assert code == 0, stderr
    keys = ["method", "seed", "iteration", "metric"]

    def stable(path: Path) -> pd.DataFrame:
        frame = read_results(path)
        frame = frame[~frame["metric"].isin(experiment.TIMING_METRICS)]
        return frame[[*keys, "value", "config_hash"]].sort_values(keys).reset_index(drop=True)

    a, b = stable(straight), stable(broken)
    # seeds × evaluations (0, 2, 4) × metrics (FO-B-MAML also records the ν it used)
    assert len(a) == 2 * 3 * (6 + 5)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # Seeds differ, and both methods start from the same θ₀ and tasks (same iteration-0 rows).
    acc0 = a[(a["iteration"] == 0) & (a["metric"] == "eval_acc")].set_index(["method", "seed"])["value"]
    assert acc0[("fobmaml-sym", 0)] == acc0[("reptile", 0)]
    assert acc0[("fobmaml-sym", 0)] != acc0[("fobmaml-sym", 1)]
    # One run id across the resume; a resumed run adds no duplicate rows.
    assert read_results(broken)["run_id"].nunique() == 1
    # The final meta-parameters and optimizer states are bitwise equal too.
    for name in ("fobmaml-sym-seed1.pt", "reptile-seed0.pt"):
        x = experiment.load_checkpoint(tmp_path / "straight-checkpoints" / name)
        y = experiment.load_checkpoint(tmp_path / "broken-checkpoints" / name)
        assert x["iteration"] == y["iteration"] == 4
        assert all(torch.equal(x["theta"][k], y["theta"][k]) for k in x["theta"])
        assert all(torch.equal(x["optimizer"]["state"][i]["exp_avg_sq"],
                               y["optimizer"]["state"][i]["exp_avg_sq"])
                   for i in x["optimizer"]["state"])


def test_resume_after_a_kill_between_checkpoints(cli, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    common = ("--method", "fobmaml-sym", "--meta-batch", "2", "--eval-every", "1", "--eval-tasks", "4",
              "--checkpoint-every", "2", "--iterations", "5", "--no-plot", *SMALL)
    straight, broken = tmp_path / "straight.csv", tmp_path / "broken.csv"
    assert cli("train", "mnist1d", *common, "--out", str(straight))[0] == 0
    save = experiment.save_checkpoint
    calls = []

    def interrupted(path: Path, state: dict) -> None:
        calls.append(state["iteration"])
        if state["iteration"] == 4:
            raise KeyboardInterrupt  # killed after the rows of iteration 4, before its checkpoint
        save(path, state)

    monkeypatch.setattr(experiment, "save_checkpoint", interrupted)
    code = cli("train", "mnist1d", *common, "--out", str(broken))[0]
    assert code == 130 and calls == [2, 4]
    checkpoint = tmp_path / "broken-checkpoints" / "fobmaml-sym-seed0.pt"
    assert experiment.load_checkpoint(checkpoint)["iteration"] == 2
    monkeypatch.setattr(experiment, "save_checkpoint", save)
    assert cli("train", "mnist1d", *common, "--resume", str(broken))[0] == 0
    rows = read_results(broken)
    assert not rows.duplicated(["iteration", "metric"]).any()  # iterations 3, 4 were not written twice
    x = experiment.load_checkpoint(tmp_path / "straight-checkpoints" / "fobmaml-sym-seed0.pt")
    y = experiment.load_checkpoint(tmp_path / "broken-checkpoints" / "fobmaml-sym-seed0.pt")
    assert x["iteration"] == y["iteration"] == 5
    assert all(torch.equal(x["theta"][k], y["theta"][k]) for k in x["theta"])
    acc = [read_results(p).query("metric == 'eval_acc'").set_index("iteration")["value"].sort_index()
           for p in (straight, broken)]
    pd.testing.assert_series_equal(acc[0], acc[1], check_exact=True)


def test_resume_refuses_a_checkpoint_of_other_settings(cli, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    base = ("--iterations", "1", "--meta-batch", "2", "--eval-tasks", "4", "--no-plot", *SMALL)
    assert cli("train", "mnist1d", *base, "--out", str(out))[0] == 0
    code, _, stderr = cli("train", "mnist1d", *base, "--inner-lr", "0.05", "--iterations", "2",
                          "--resume", str(out))
    assert code == 2 and stderr.count("\n") == 1 and "other settings" in stderr


def test_evaluation_agrees_with_a_task_by_task_loop() -> None:
    problem = MNIST1DProblem(num_samples=5000)
    torch.manual_seed(0)
    model = problem.model()
    theta = {n: p.detach() for n, p in model.named_parameters()}
    config = EstimatorConfig(inner=InnerConfig(steps=3, lr=0.3))
    tasks = problem.sample("eval", 12, torch.Generator().manual_seed(2))
    result = experiment.evaluate(model, theta, tasks, config, chunk_size=5)
    loss = classification_loss(model)
    accs, losses = [], []
    for i in range(12):
        support = tuple(t[i] for t in tasks.support)
        query = tuple(t[i] for t in tasks.query)
        phi = solve(theta, loss, support, query, 0.0, config.inner)
        logits = torch.func.functional_call(model, phi, (query[0],))
        accs.append(float((logits.argmax(-1) == query[1]).float().mean()))
        losses.append(float(torch.nn.functional.cross_entropy(logits, query[1])))
    mean = sum(accs) / 12
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / 11)
    assert result.tasks == 12
    assert result.acc == pytest.approx(mean, abs=1e-6)
    assert result.ci95 == pytest.approx(stats.t.ppf(0.975, 11) * sd / math.sqrt(12), abs=1e-6)
    assert result.loss == pytest.approx(sum(losses) / 12, abs=1e-5)


def test_floor_passes_come_from_each_registration() -> None:
    config = EstimatorConfig(inner=InnerConfig(steps=5), es_samples=4)
    trainable = {name for name, est in REGISTRY.items() if est.trainable}
    passes = {name: experiment.floor_passes(name, config) for name in trainable}
    assert passes["fobmaml-sym"] == (9, 0, 0) and passes["maml"] == (0, 5, 1)
    assert passes["reptile"] == (0, 5, 0) and passes["fomaml"] == passes["imaml"] == passes["maml"]
    assert passes["esmaml"] == (0, 40, 0) and passes["fobmaml-forward"] == (5, 4, 0)


def test_task_streams_are_pure_functions_of_seed_and_iteration() -> None:
    assert experiment.stream_seed(0, "train", 5) == experiment.stream_seed(0, "train", 5)
    assert len({experiment.stream_seed(s, "train", t) for s in range(3) for t in range(50)}) == 150
    assert torch.equal(torch.rand(3, generator=experiment.stream(1, "train", 2)),
                       torch.rand(3, generator=experiment.stream(1, "train", 2)))


def test_summary_uses_seed_intervals_for_several_seeds() -> None:
    rows = []
    for seed, acc in ((0, 0.8), (1, 0.9), (2, 0.85)):
        for iteration, value in ((0, 0.4), (100, acc)):
            for metric, v in (("eval_acc", value), ("eval_acc_ci95", 0.01)):
                rows.append({"benchmark": "train.mnist1d", "method": "maml", "ways": 3, "shots": 5,
                             "queries": 10, "run_id": "r", "seed": seed, "iteration": iteration,
                             "metric": metric, "value": v, "device_name": "cpu"})
    table = figures.summarize(pd.DataFrame(rows))
    row = table.iloc[0]
    assert row["seeds"] == 3 and row["ci_over"] == "seeds" and row["iteration"] == 100
    assert row["final_acc"] == pytest.approx(0.85)
    assert row["final_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * 0.05 / math.sqrt(3))


def test_summary_keeps_the_two_inner_protocols_apart() -> None:
    """The same method under `proximal` and `published` is two lines, labelled by protocol."""
    rows = []
    for protocol, lam, acc in (("proximal", 2.0, 0.9), ("published", 0.0, 0.7)):
        for iteration, value in ((0, 0.4), (100, acc)):
            rows.append({"benchmark": "train.mnist1d", "method": "maml", "ways": 3, "shots": 5, "queries": 10,
                         "lam": lam, "inner_protocol": protocol, "run_id": "r", "seed": 0,
                         "iteration": iteration, "metric": "eval_acc", "value": value, "device_name": "cpu"})
    table = figures.summarize(pd.DataFrame(rows))
    labels = dict(zip(table["final_acc"], table["label"], strict=True))
    assert labels == {0.7: "maml · lam=0.0 · inner_protocol=published",
                      0.9: "maml · lam=2.0 · inner_protocol=proximal"}


@pytest.mark.parametrize("args, message", [
    (("--methods", "exact"), "--methods: exact is gradcheck-only"),
    (("--method", "exact"), "--method: exact is gradcheck-only"),
    (("--method", "nope"), "unknown method"),
    (("--seeds", "4..1"), "--seeds"),
    (("--outer", "rmsprop"), "--outer"),
    (("--eval-tasks", "1"), "--eval-tasks"),
    (("--lam", "0"), "--lam (λ) must be > 0"),
    (("--lam", "-1"), "--lam (λ) must be"),
    (("--nu", "0"), "--nu (ν) must be"),
    (("--out", "a.csv", "--resume", "b.csv"), "either --out or --resume"),
])
def test_bad_options_are_one_line_errors(cli, args: tuple[str, ...], message: str) -> None:
    code, _, stderr = cli("train", "mnist1d", *args, "--iterations", "1", *SMALL)
    assert code == 2
    assert stderr.count("\n") == 1 and message in stderr, stderr


def test_seed_ranges() -> None:
    from fobbench.ranges import parse_seeds

    assert parse_seeds("0..4") == (0, 1, 2, 3, 4)
    assert parse_seeds("3") == (3,)
    assert parse_seeds("0,3,7") == (0, 3, 7)


def test_omniglot_command_reports_missing_data(cli, tmp_path: Path) -> None:
    pytest.importorskip("fobbench.problems.omniglot")
    code, _, stderr = cli("train", "omniglot", "--data-dir", str(tmp_path / "none"), "--iterations", "1",
                          "--quiet", "--no-plot", "--out", str(tmp_path / "o.csv"))
    assert code == 2 and stderr.count("\n") == 1 and "Omniglot" in stderr


OMNIGLOT = Path(os.environ.get("FOBBENCH_TEST_OMNIGLOT")
                or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot")


@pytest.mark.slow
def test_omniglot_command_trains_on_real_data(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fobbench.problems.omniglot")
    if not (OMNIGLOT / "images_background.npz").is_file():
        pytest.skip(f"real Omniglot not found in {OMNIGLOT}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "o.csv"
    code, _, stderr = cli("train", "omniglot", "--data-dir", str(OMNIGLOT), "--methods", "fobmaml-sym,maml",
                               "--iterations", "2", "--meta-batch", "2", "--eval-tasks", "4", "--quiet",
                               "--no-plot", "--out", str(out))
    assert code == 0, stderr
    frame = read_results(out)
    assert set(frame["benchmark"]) == {"train.omniglot"} and set(frame["split"].astype(str)) == {"maml"}
    assert frame["split_hash"].notna().all() and frame["split_hash"].nunique() == 1  # in every row
    acc = frame[frame["metric"] == "eval_acc"]
    assert set(acc["iteration"]) == {0, 2} and acc["value"].between(0, 1).all()


def test_every_trainable_registry_method_trains_with_its_own_floor(cli, tmp_path: Path) -> None:
    """``--methods all`` is the registry: each method (fobmaml-richardson included, with no
    edit outside its module) trains and reports time against its registered floor."""
    out = tmp_path / "all.csv"
    code, stdout, stderr = cli("train", "mnist1d", "--methods", "all", "--iterations", "1", "--meta-batch",
                               "2",
                               "--eval-every", "1", "--eval-tasks", "4", "--es-samples", "2", "--no-plot",
                               "--out", str(out), *SMALL)
    assert code == 0, stderr
    frame = read_results(out)
    assert set(frame["method"]) == set(names(trainable=True)) and "fobmaml-richardson" in set(frame["method"])
    floors = frame[frame["metric"] == "floor_sec"].set_index("method")["value"]
    assert (floors > 0).all() and len(floors) == len(names(trainable=True))


def _torchrun(tmp_path: Path, world: int, *args: str) -> None:
    """``torchrun --standalone --nproc-per-node <world> -m fobbench <args>`` (gloo on CPU)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "FOBBENCH_DIST_TIMEOUT": "60"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
         "-m", "fobbench", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # 70 s on the shared 2-core machine (three interpreter start-ups per torchrun)
def test_two_torchrun_ranks_train_exactly_as_one_process_and_resume_with_one(cli, tmp_path: Path) -> None:
    """``fobbench train`` as 2 gloo ranks (5 tasks = 3 + 2, 7 evaluation tasks = 4 + 3): the
    same θ after 4 outer steps (bitwise) and the same evaluation rows to the last digit as
    one process; only rank 0 writes, rows record world_size; a run stopped at 2 by 2 ranks is
    finished by ``--resume`` in 1 process, bitwise equal again."""
    common = ("--methods", "fobmaml-sym", "--meta-batch", "5", "--eval-every", "2", "--eval-tasks", "7",
              "--checkpoint-every", "2", "--no-plot", "--num-samples", "5000", "--threads", "1", "--quiet")
    one, two, broken = tmp_path / "one.csv", tmp_path / "two.csv", tmp_path / "broken.csv"
    assert cli("train", "mnist1d", *common, "--iterations", "4", "--out", str(one))[0] == 0
    _torchrun(tmp_path, 2, "train", "mnist1d", *common, "--iterations", "4", "--out", str(two))
    _torchrun(tmp_path, 2, "train", "mnist1d", *common, "--iterations", "2", "--out", str(broken))
    code, _, stderr = cli("train", "mnist1d", *common, "--iterations", "4", "--resume", str(broken))
    assert code == 0, stderr
    keys = ["iteration", "metric"]

    def stable(path: Path) -> pd.DataFrame:
        frame = read_results(path)
        frame = frame[~frame["metric"].isin(experiment.TIMING_METRICS)]
        return frame[[*keys, "value", "config_hash"]].sort_values(keys).reset_index(drop=True)

    a = stable(one)
    assert len(a) == 3 * 6  # evaluations (0, 2, 4) × (accuracies, losses, interval, nu_used)
    pd.testing.assert_frame_equal(a, stable(two), check_exact=True)
    pd.testing.assert_frame_equal(a, stable(broken), check_exact=True)
    assert set(read_results(one)["world_size"]) == {1} and set(read_results(two)["world_size"]) == {2}
    assert sorted(read_results(broken)["world_size"].unique()) == [1, 2]  # 0, 2 by two ranks; 4 by one
    assert sorted(p.name for p in tmp_path.glob("*-checkpoints/*")) == ["fobmaml-sym-seed0.pt"] * 3
    x = experiment.load_checkpoint(tmp_path / "one-checkpoints" / "fobmaml-sym-seed0.pt")
    for name in ("two", "broken"):
        y = experiment.load_checkpoint(tmp_path / f"{name}-checkpoints" / "fobmaml-sym-seed0.pt")
        assert y["iteration"] == 4
        assert all(torch.equal(x["theta"][k], y["theta"][k]) for k in x["theta"]), name


def test_floor_samples_between_iterations_leave_training_unchanged(cli, tmp_path: Path, monkeypatch) -> None:
    """The floor re-measured between iterations (every one here: ⌈4/20⌉ = 1) is timed over the
    run and changes nothing that is trained: same accuracies and losses as with no samples."""
    from fobbench.experiments import train as train_module

    calls: list[int] = []
    real = train_module._MethodRun.sample_floor

    def counted(self) -> None:
        calls.append(1)
        real(self)

    common = ("--methods", "fobmaml-sym", "--meta-batch", "3", "--eval-every", "4", "--eval-tasks", "6",
              "--iterations", "4", "--no-plot", *SMALL)
    monkeypatch.setattr(train_module._MethodRun, "sample_floor", counted)
    assert cli("train", "mnist1d", *common, "--out", str(tmp_path / "sampled.csv"))[0] == 0
    assert len(calls) == 3  # the timed iterations 2..4 (iteration 1 warms up)
    monkeypatch.setattr(train_module._MethodRun, "sample_floor", lambda self: None)
    assert cli("train", "mnist1d", *common, "--out", str(tmp_path / "bare.csv"))[0] == 0
    sampled, bare = read_results(tmp_path / "sampled.csv"), read_results(tmp_path / "bare.csv")
    for metric in ("eval_acc", "eval_loss", "train_acc", "train_loss"):
        assert (_values(sampled, "fobmaml-sym", metric).tolist()
                == _values(bare, "fobmaml-sym", metric).tolist())
    last = sampled[(sampled["iteration"] == 4)].set_index("metric")["value"]
    assert last["floor_sec"] > 0
    assert last["floor_ratio"] == pytest.approx(last["cpu_sec_per_iter"] / last["floor_sec"])
