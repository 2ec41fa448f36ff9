"""Plugins: the README example through train, memory and gradcheck; entry points; bad plugins."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fobbench import plugins

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## Benchmark your own model"):]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


@pytest.fixture
def blobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The README's blobs.py in a temporary folder that is the current directory."""
    (tmp_path / "blobs.py").write_text(_example())
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    import sys

    for name in [n for n in sys.modules if n.startswith("blobs") or n.startswith("badplug")]:
        del sys.modules[name]


def test_readme_example_runs_through_train_memory_and_gradcheck(cli, blobs: Path) -> None:
    code, _, err = cli("train", "problem", "--problem", "blobs:problem", "--methods", "fobmaml-sym",
                       "--iterations", "2", "--eval-every", "2", "--eval-tasks", "4", "--meta-batch", "2",
                       "--threads", "1", "--out", "train.csv", "--no-plot", "--quiet")
    assert code == 0, err
    assert "blobs" in (blobs / "train.csv").read_text()
    code, _, err = cli("memory", "--model", "blobs:mlp", "--sizes", "8,16", "--methods", "fobmaml-sym",
                       "--out", "memory.csv", "--no-plot", "--quiet")
    assert code == 0, err
    assert "peak_mib" in (blobs / "memory.csv").read_text()
    code, out, err = cli("gradcheck", "--problem", "blobs:problem", "--tasks", "1", "--inner-steps", "1,20",
                         "--methods", "fobmaml-sym,fomaml", "--nu-grid", "1e-3,1e-2,1e-1", "--out", "gc",
                         "--no-plot")
    assert code == 0, err
    truth = (blobs / "gc" / "network_truth.csv").read_text()
    assert ",ok," in truth and "route_agreement" in truth
    assert "slope of bias vs ν, fobmaml-sym" in out


def test_installed_entry_point_is_listed_and_loaded(blobs: Path) -> None:
    dist = blobs / "blobs_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: blobs-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fobbench.problems]\nblobs = blobs:problem\n\n"
                                           "[fobbench.models]\nblobs-mlp = blobs:mlp\n")
    assert "blobs" in plugins.names(plugins.PROBLEMS)
    assert "mnist1d" in plugins.names(plugins.PROBLEMS)
    assert "blobs-mlp" in plugins.names(plugins.MODELS)
    made = plugins.problem("blobs")
    assert made.name == "blobs"
    case = plugins.memory_model("blobs-mlp")(8)
    assert isinstance(case.model, torch.nn.Module)


def test_builtins_resolve_through_the_registry() -> None:
    points = plugins.registered(plugins.PROBLEMS)
    assert points["mnist1d"].value == "fobbench.problems.mnist1d:MNIST1DProblem"
    case = plugins.memory_model("convnet")(8)
    assert case.tasks.support[0].shape[0] == 1


BAD = {
    "badplug_memory.py": "def mlp(size):\n    return 42\n",
    "badplug_raises.py": "def problem():\n    raise RuntimeError('no data here')\n",
    "badplug_partial.py": "class P:\n    name = 'p'\n"
                          "    def sample(self, split, tasks, g):\n        return None\n"
                          "def problem():\n    return P()\n",
    "badplug_shapes.py": "import torch\nclass P:\n    name = 'p'\n"
                         "    def sample(self, split, tasks, g):\n        return ([1, 2], [3])\n"
                         "    def model(self):\n        return torch.nn.Linear(2, 2)\n"
                         "def problem():\n    return P()\n",
}


@pytest.mark.parametrize(("args", "expected"), [
    (("gradcheck", "--problem", "no_such_module_xyz:problem"), "cannot import module 'no_such_module_xyz'"),
    (("gradcheck", "--problem", "blobs:nothing"), "has no attribute 'nothing'"),
    (("gradcheck", "--problem", "not-registered"), "not a registered name"),
    (("gradcheck", "--problem", "badplug_raises:problem"), "the factory raised RuntimeError: no data here"),
    (("gradcheck", "--problem", "badplug_partial:problem"), "missing model"),
    (("gradcheck", "--problem", "badplug_shapes:problem"), "support must be a non-empty tuple of tensors"),
    (("train", "problem", "--problem", "badplug_partial:problem"), "missing model"),
    (("memory", "--model", "blobs:nothing", "--sizes", "8"), "has no attribute 'nothing'"),
    (("memory", "--model", "badplug_memory:mlp", "--sizes", "8"), "must return MemoryCase"),
    (("memory", "--model", "blobs:Blobs", "--sizes", "8"), "factory(8) raised TypeError"),
])
def test_bad_plugin_is_one_line_exit_2_nothing_written(cli, blobs: Path, args: tuple[str, ...],
                                                       expected: str) -> None:
    for name, text in BAD.items():
        (blobs / name).write_text(text)
    out = blobs / "out"
    code, _, err = cli(*args, "--out", str(out))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert "--problem" in lines[0] or "--model" in lines[0]
    assert not out.exists()


GC_ARGS = ("gradcheck", "--problem", "blobs:problem", "--tasks", "1", "--inner-steps", "1,5",
           "--methods", "fobmaml-sym,fomaml", "--nu-grid", "1e-3,1e-2,1e-1", "--no-plot", "--quiet")


def _rel_errors(folder: Path) -> dict[tuple[str, str, float], float]:
    from fobbench.results import read_results

    values = {}
    for name in ("network_error_vs_k", "network_error_vs_nu"):
        frame = read_results(folder / f"{name}.csv")
        frame = frame[frame["metric"] == "rel_error"]
        x = "inner_steps" if name == "network_error_vs_k" else "nu"
        values.update({(name, m, float(v)): e for m, v, e in zip(frame["method"], frame[x], frame["value"],
                                                                 strict=True)})
    return values


def test_gradcheck_problem_resume_skips_finished_points_and_remeasures_a_torn_tail(
        cli, blobs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fobbench.experiments.gradcheck import network

    code, _, err = cli(*GC_ARGS, "--out", "gc")
    assert code == 0, err
    full = _rel_errors(blobs / "gc")
    assert len(full) == 2 * 2 + 3  # (sym, fomaml) × K, sym × ν
    calls = {"meta_gradient": 0, "implicit_gradient": 0, "second_route": 0, "newton_cg": 0}

    def counted(name: str):  # noqa: ANN202
        original = getattr(network, name)

        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(network, name, counted(name))
    # Nothing missing: nothing is solved or estimated again, and no row is added.
    before = {p.name: p.read_bytes() for p in (blobs / "gc").glob("*.csv")}
    code, _, err = cli(*GC_ARGS, "--resume", "gc")
    assert code == 0, err
    assert calls == {"meta_gradient": 0, "implicit_gradient": 0, "second_route": 0, "newton_cg": 0}
    assert {p.name: p.read_bytes() for p in (blobs / "gc").glob("*.csv")} == before
    # A torn last point of the ν sweep (an interrupted write): only that point is measured again.
    nu_csv = blobs / "gc" / "network_error_vs_nu.csv"
    nu_csv.write_bytes(nu_csv.read_bytes()[:-40])
    code, _, err = cli(*GC_ARGS, "--resume", "gc")
    assert code == 0, err
    assert calls["meta_gradient"] == 0 and calls["second_route"] == 0
    assert calls["implicit_gradient"] == 1  # the truth the re-measured point needs
    assert calls["newton_cg"] == 2  # φ_ν and φ_−ν of one ν, one task
    resumed = _rel_errors(blobs / "gc")
    assert resumed.keys() == full.keys()
    for key, value in full.items():
        assert resumed[key] == pytest.approx(value, rel=1e-12), key


def test_builtin_memory_models_and_problems_take_the_plugin_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from fobbench.cli import train as train_cli
    from fobbench.experiments import memory
    from fobbench.models.convnet import ConvNet, convnet_tasks

    seen: list[str] = []
    original = plugins.load

    def load(group: str, spec: str):  # noqa: ANN202
        seen.append(f"{group}:{spec}")
        return original(group, spec)

    monkeypatch.setattr(plugins, "load", load)
    settings = memory.MemorySettings(arch="convnet", depth=3, ways=4, batch=2, image=8, seed=5)
    work = memory.build(settings, {"channels": 6}, "cpu")
    assert seen == [f"{plugins.MODELS}:convnet"]
    # the registered factory received the sweep's settings: same model and tasks as built directly
    torch.manual_seed(5)
    direct = ConvNet(6, 3, 1, 4)
    support, _ = convnet_tasks(1, 2, 4, 1, 8, torch.Generator().manual_seed(5))
    for (name, p), (_, q) in zip(work.model.named_parameters(), direct.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(work.support[0], support[0])
    transformer = memory.build(memory.MemorySettings(arch="transformer", heads=2, ffn=16),
                               {"d_model": 8, "seq": 5}, "meta")
    assert seen[-1] == f"{plugins.MODELS}:transformer" and transformer.has_attention
    assert transformer.support[0].shape[-2:] == (5, 8)
    asked: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr(plugins, "problem", lambda spec, options=None: asked.append((spec, dict(options))))
    train_cli.mnist1d_problem({"ways": 3, "shots": 2, "queries": 2, "num_samples": 120})
    train_cli.omniglot_problem({"data_dir": None, "ways": 5, "shots": 1, "queries": 3, "split": "maml",
                                "image_size": 28, "quiet": True})
    assert [spec for spec, _ in asked] == ["mnist1d", "omniglot"]
    assert asked[0][1]["num_samples"] == 120 and asked[1][1]["queries"] == 3
