"""``fobbench speed``, the honest floor, MAML's plain-autograd loop, peers and threads."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from fobbench.errors import FobbenchError
from fobbench.estimators import EstimatorConfig, compiled, get, meta_gradient
from fobbench.estimators.compiled import compile_cache
from fobbench.experiments import speed as experiment
from fobbench.inner import InnerConfig
from fobbench.measure.floor import (
    COMPILED_REFERENCE,
    HONEST,
    compiled_floor_calls,
    honest_floor,
    pass_inputs,
    plain_pass,
    timed_floor,
    vmap_floor,
)
from fobbench.measure.timing import default_threads, time_call
from fobbench.params import classification_loss, relative_error
from fobbench.peers import PEERS, Peer, parse_peers, unavailable
from fobbench.plot import collect, draw_all
from fobbench.problems.mnist1d import MNIST1DProblem
from fobbench.results import read_results
from fobbench.results.compare import run as compare_run

TINY = ("--num-samples", "2000", "--meta-batch", "2", "--inner-steps", "2", "--rounds", "1",
        "--min-run-time", "0.02", "--quiet", "--no-plot")


@pytest.fixture(scope="module")
def problem() -> MNIST1DProblem:
    return MNIST1DProblem(num_samples=2000)


def _work(problem: MNIST1DProblem, tasks: int = 3) -> experiment.Workload:
    return experiment.build(problem, tasks, seed=0, device="cpu")


@pytest.mark.parametrize("optimizer", ["gd", "momentum"])
def test_maml_loop_with_plain_autograd_equals_vmap(problem, one_thread, optimizer: str) -> None:
    """Loop batching (plain autograd create_graph through K steps for gd) and vmap
    (torch.func.grad through the pure solver) are independent computations of one gradient."""
    work = _work(problem)
    config = EstimatorConfig(inner=InnerConfig(steps=3, lr=0.1, lam=2.0, optimizer=optimizer))
    loss = classification_loss(work.model64)
    theta = dict(work.model64.named_parameters())
    b = work.batch64
    loop = meta_gradient("maml", theta, loss, b.support, b.query, config, batching="loop").grad
    vmap = meta_gradient("maml", theta, loss, b.support, b.query, config, batching="vmap").grad
    assert relative_error(loop, vmap) < 1e-12
    assert all(p.grad is None for p in theta.values())  # θ's leaves untouched


def test_plain_pass_is_the_gradient_of_the_concatenated_batch(problem, one_thread) -> None:
    work = _work(problem)
    x, y = pass_inputs(work.batch64.support, work.batch64.query)["both"]
    assert x.shape[0] == 3 * (15 + 30)
    plain_pass(work.model64, x, y)
    got = {n: p.grad.clone() for n, p in work.model64.named_parameters()}
    loss = classification_loss(work.model64)
    want = torch.func.grad(loss)({n: p.detach() for n, p in work.model64.named_parameters()}, (x, y))
    assert relative_error(got, want) < 1e-12


def test_honest_floor_counts_the_registered_passes(problem, one_thread) -> None:
    work = _work(problem)
    config = EstimatorConfig(inner=InnerConfig(steps=2))
    passes = get("fobmaml-sym").floor(config)
    assert passes == (3, 0, 0)  # 2K − 1: the two solves share their first step
    floor = honest_floor(work.model, work.batch.support, work.batch.query, passes, min_run_time=0.02)
    assert floor.kind == HONEST and set(floor.per_pass) == {"both"}
    assert floor.seconds == pytest.approx(3 * floor.per_pass["both"])
    assert all(p.grad is None for p in work.model.parameters())
    maml = honest_floor(work.model, work.batch.support, work.batch.query, get("maml").floor(config), 0.02)
    assert set(maml.per_pass) == {"support", "query"}
    fastest = honest_floor(work.model, work.batch.support, work.batch.query, passes, 0.02, statistic="min")
    assert 0 < fastest.seconds == pytest.approx(3 * fastest.per_pass["both"])
    reference = vmap_floor(classification_loss(work.model), work.theta, work.batch.support, work.batch.query,
                           passes, 0.02)
    assert reference.seconds > 0


def test_time_call_reports_median_and_iqr() -> None:
    timing = time_call(lambda: sum(range(1000)), min_run_time=0.02)
    assert timing.median > 0 and timing.iqr >= 0 and len(timing.times) >= 1 and timing.calls >= 1


def test_default_threads() -> None:
    assert default_threads("speed") == 1
    assert 1 <= default_threads("train") <= torch.get_num_threads()


def test_speed_cli_writes_a_versioned_csv(cli, tmp_path: Path) -> None:
    path = tmp_path / "speed.csv"
    code, out, err = cli("speed", "--methods", "maml,fobmaml-sym", "--out", str(path), *TINY)
    assert code == 0, err
    frame = read_results(path)
    assert set(frame["benchmark"]) == {"speed.mnist1d"}
    assert set(frame["schema"]) == {"fobbench.results/1"}
    assert set(frame["threads"].astype(str)) == {"1"}  # the timing default, recorded
    rows = frame[frame["metric"] == "seconds_median"]
    got = set(zip(rows["method"], rows["impl"], rows["batching"], strict=True))
    for method in ("maml", "fobmaml-sym"):
        assert {(method, "fobbench", "vmap"), (method, "fobbench", "loop"), (method, "floor", "plain"),
                (method, "floor", "vmap-ref")} <= got
    mine = frame[frame["impl"] == "fobbench"]
    agreement = mine[mine["metric"] == "agreement"]
    assert (agreement["value"] < 1e-12).all() and set(agreement["measured_by"]) == {"float64_global_norm"}
    for metric in ("seconds", "seconds_iqr", "floor_sec", "floor_ratio", "peak_mib"):
        assert metric in set(mine["metric"])
    ratio = mine[mine["metric"] == "floor_ratio"]["value"]
    assert (ratio > 0).all()
    assert "×floor" in out
    report = compare_run(frame, frame)
    assert not report["verdict"].isin(["worse", "changed", "not comparable"]).any()
    drawn = draw_all(collect(path), tmp_path / "figures")
    assert [p.name for p in drawn.written["speed"]] == ["speed_mnist1d_B2.png"] and not drawn.failed


def test_resume_skips_finished_methods(cli, tmp_path: Path) -> None:
    path = tmp_path / "speed.csv"
    assert cli("speed", "--methods", "fomaml", "--batching", "loop", "--no-floors", "--no-memory",
               "--out", str(path), *TINY)[0] == 0
    before = len(read_results(path))
    assert cli("speed", "--methods", "fomaml", "--batching", "loop", "--no-floors", "--no-memory",
               "--resume", str(path), *TINY)[0] == 0
    assert len(read_results(path)) == before


def test_unimportable_peer_is_skipped_with_one_line_note(cli, tmp_path: Path, monkeypatch) -> None:
    ghost = Peer("learn2learn", "fobbench_no_such_module", ("maml",), "fobbench.peers.learn2learn")
    note = unavailable(ghost)
    assert note is not None and "\n" not in note and note.startswith("learn2learn skipped")
    monkeypatch.setitem(PEERS, "learn2learn", ghost)
    path = tmp_path / "speed.csv"
    code, out, err = cli("speed", "--methods", "maml", "--batching", "loop", "--no-floors", "--no-memory",
                         "--peers", "learn2learn", "--out", str(path), *TINY)
    assert code == 0, err
    assert "learn2learn skipped" in out + err
    assert set(read_results(path)["impl"]) == {"fobbench"}


def test_unknown_peer_is_refused(cli) -> None:
    code, _, err = cli("speed", "--peers", "jax", *TINY)
    assert code == 2 and "unknown peer 'jax'" in err
    assert [p.name for p in parse_peers("all")] == list(PEERS)


def test_compile_failure_gives_a_skipped_row(problem, monkeypatch, one_thread) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler\nmore")

    monkeypatch.setattr(torch, "compile", broken)
    settings = experiment.SpeedSettings(methods=("fomaml",), batchings=("compiled",),
                                        estimator=EstimatorConfig(inner=InnerConfig(steps=1)))
    rows = experiment.contenders(settings, "fomaml", _work(problem, 2), [])
    assert rows[0].status == "skipped" and "torch.compile unavailable: no C++ compiler" in rows[0].note
    measured = experiment.contender_measurements(rows[0], 1.0)
    assert [m.metric for m in measured] == ["seconds_median"] and math.isnan(measured[0].value)
    run = experiment.SpeedRun(problem, settings, "speed.mnist1d")
    calls, seconds = run._compile_floor(_work(problem, 2), {"fomaml"})
    assert calls == {} and math.isnan(seconds)
    assert run.notes == ["compiled floor not timed: torch.compile unavailable: no C++ compiler; "
                         "run without --compile"]


def test_compile_cache_follows_fobbench_cache(tmp_path: Path, monkeypatch) -> None:
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    monkeypatch.setenv("FOBBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert compile_cache() == tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch writes there itself
    assert compile_cache() == tmp_path / "inductor" and cache_dir() == str(tmp_path / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice wins
    assert compile_cache() == tmp_path / "mine"


def _linear_tasks(tasks: int = 3) -> tuple[dict[str, torch.Tensor], object, tuple, tuple]:
    """A 6→3 linear classifier and random tasks: small enough to compile in seconds."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(6, 3)
    theta = {n: p.detach() for n, p in model.named_parameters()}

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(tasks, n, 6, generator=generator)
        return x, torch.randint(0, 3, (tasks, n), generator=generator)

    return theta, classification_loss(model), data(5), data(7)


def test_compiled_floor_runs_the_plain_passes(tmp_path: Path, monkeypatch, one_thread) -> None:
    """The compiled floor's pass of each kind is the plain pass's gradient over the same
    concatenated examples (an independent computation: nn.Module + backward), and its floor
    counts the registered passes."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    _, _, support, query = _linear_tasks()
    model = torch.nn.Linear(6, 3)
    calls = compiled_floor_calls(model, support, query)
    for kind, (x, y) in pass_inputs(support, query).items():
        plain_pass(model, x, y)
        want = {n: p.grad for n, p in model.named_parameters()}
        assert relative_error(calls[kind](), want) < 1e-6
    floor = timed_floor(calls, get("fomaml").floor(EstimatorConfig(inner=InnerConfig(steps=4))),
                        COMPILED_REFERENCE, 0.02)
    assert floor.kind == COMPILED_REFERENCE and set(floor.per_pass) == {"support", "query"}
    assert floor.seconds == pytest.approx(4 * floor.per_pass["support"] + floor.per_pass["query"])


def test_compiled_rows_get_the_compiled_floor(problem) -> None:
    """Compiled rows are set against both floors; the compiled floor is timed only beside them."""
    row = experiment.Contender("fomaml", "fobbench", "compiled", lambda: None, times=[0.3, 0.3, 0.3])
    got = {m.metric: m.value for m in experiment.contender_measurements(row, 0.4, 0.2)}
    assert got["floor_ratio"] == pytest.approx(0.75) and got["compiled_floor_ratio"] == pytest.approx(1.5)
    row.batching = "vmap"
    assert "compiled_floor_ratio" not in {m.metric for m in experiment.contender_measurements(row, 0.4, 0.2)}
    run = experiment.SpeedRun(problem, experiment.SpeedSettings(batchings=("vmap",)), "speed.mnist1d")
    assert run.floor_batchings() == ("plain", "vmap-ref")
    run = experiment.SpeedRun(problem, experiment.SpeedSettings(batchings=("compiled",)), "speed.mnist1d")
    assert run.floor_batchings() == ("plain", "vmap-ref", "plain-compiled")


@pytest.mark.parametrize("method", ["fomaml", "fobmaml-sym", "maml"])
def test_compiled_batching_equals_vmap(method: str, tmp_path: Path, monkeypatch, one_thread) -> None:
    """The compiled meta-gradient is the eager vmap one (float32 rounding apart), and a second
    call reuses the compiled function."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    theta, loss, support, query = _linear_tasks()
    config = EstimatorConfig(inner=InnerConfig(steps=2, lr=0.1, lam=2.0))
    eager = meta_gradient(method, theta, loss, support, query, config, batching="vmap").grad
    first = meta_gradient(method, theta, loss, support, query, config, batching="compiled")
    assert first.batching == "compiled" and relative_error(first.grad, eager) < 1e-5
    again = meta_gradient(method, theta, loss, support, query, config, batching="compiled").grad
    assert all(torch.equal(again[n], first.grad[n]) for n in theta)


def test_compiled_batching_refuses_to_run_eagerly_in_disguise(monkeypatch) -> None:
    """A compile that yields no graph (dynamo gave up) is an error, not an eager "compiled" run."""
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)
    theta, loss, support, query = _linear_tasks()
    config = EstimatorConfig(inner=InnerConfig(steps=1, lr=0.1, lam=2.0))
    with pytest.raises(FobbenchError, match="gave up on the meta-gradient"):
        meta_gradient("reptile", theta, loss, support, query, config, batching="compiled")


@pytest.mark.parametrize(("method", "nu", "why"), [("exact", 0.1, "does not run under vmap"),
                                                   ("fobmaml-sym", "auto", "not with --nu auto")])
def test_compiled_batching_refuses_what_it_cannot_compile(method: str, nu: object, why: str) -> None:
    theta, loss, support, query = _linear_tasks()
    config = EstimatorConfig(inner=InnerConfig(steps=1), nu=nu)
    with pytest.raises(FobbenchError, match=why):
        compiled.vmapped(get(method), loss, config, (None, 0, 0, None), None)


@pytest.mark.parametrize("name", ["higher", "torchopt", "learn2learn"])
@pytest.mark.parametrize("method", ["maml", "fomaml"])
def test_peer_meta_gradient_matches_fobbench(problem, one_thread, name: str, method: str) -> None:
    """Each installed peer's MAML / FO-MAML equals fobbench's meta-gradient in float64."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (pip install 'fobbench[peers]')")
    work = _work(problem, 2)
    config = EstimatorConfig(inner=InnerConfig(steps=2, lr=0.1, lam=2.0))
    peer = experiment.peer_call(PEERS[name], method, work, config, double=True)()
    ours = experiment.fobbench_call(method, "vmap", work, config, double=True)()
    assert relative_error(peer, ours) < 1e-12
    assert all(p.grad is None for p in work.model64.parameters())
