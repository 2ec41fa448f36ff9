"""``fobbench gradcheck``: the quadratic's closed forms, the rate fits, the CLI and its files."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from fobbench.experiments import gradcheck as experiment
from fobbench.inner import InnerConfig, solve
from fobbench.problems.quadratic import make_quadratic, quadratic_loss
from fobbench.results import read_results

LAM = 2.0


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the quadratic problem ------------------------------------------------------------------


@pytest.mark.parametrize("distinct", [False, True])
def test_closed_form_meta_gradient_is_the_gradient_of_the_outer_objective(distinct: bool) -> None:
    problem = make_quadratic(dim=5, tasks=3, distinct_test=distinct, seed=2)
    theta = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    eye = torch.eye(5, dtype=torch.float64)
    # F written here from eq. (5)-(6), differentiated by autograd through the linear solve.
    phi = torch.linalg.solve(problem.train_a + LAM * eye, (LAM * theta - problem.train_b).unsqueeze(-1))
    phi = phi.squeeze(-1)
    outer = (0.5 * torch.einsum("ti,tij,tj->t", phi, problem.test_a, phi)
             + (phi * problem.test_b).sum(-1)).mean()
    (autograd,) = torch.autograd.grad(outer, theta)
    closed = problem.meta_gradient(theta.detach(), LAM)
    assert float((closed - autograd).norm() / autograd.norm()) < 1e-12
    assert problem.outer_loss(theta.detach(), LAM) == pytest.approx(float(outer.detach()), rel=1e-12)


def test_perturbed_solution_is_stationary_and_its_derivative_in_nu_is_the_meta_gradient() -> None:
    problem = make_quadratic(dim=5, tasks=3, distinct_test=True, seed=4)
    theta = problem.theta0 + 0.3
    nu = 0.2
    phi = problem.solution(theta, LAM, nu)
    a, b, c, d = problem.train_a, problem.train_b, problem.test_a, problem.test_b
    stationarity = ((a + nu * c) @ phi.unsqueeze(-1)).squeeze(-1) + b + nu * d + LAM * (phi - theta)
    assert float(stationarity.abs().max()) < 1e-12
    # Proposition 1: ∇F_i = −λ dφ*_ν/dν at ν = 0 (forward-mode derivative in ν).
    zero = torch.tensor(0.0, dtype=torch.float64)
    derivative = torch.func.jacfwd(lambda v: problem.solution(theta, LAM, v))(zero)
    assert torch.allclose(-LAM * derivative, problem.task_gradients(theta, LAM), rtol=1e-12, atol=1e-12)


def test_closed_form_optimum_is_a_minimum() -> None:
    problem = make_quadratic(dim=6, tasks=4, seed=1)
    theta_star, f_star = problem.optimum(LAM)
    assert float(problem.meta_gradient(theta_star, LAM).norm()) < 1e-12
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        nearby = theta_star + 1e-2 * torch.randn(6, dtype=torch.float64, generator=generator)
        assert problem.outer_loss(nearby, LAM) > f_star


def test_closed_form_k_steps_match_the_inner_solver() -> None:
    problem = make_quadratic(dim=5, tasks=3, distinct_test=True, seed=5)
    lr = problem.safe_lr(LAM, 0.3)
    for steps, nu in ((1, 0.0), (7, 0.3), (7, -0.3)):
        config = InnerConfig(steps=steps, lr=lr, lam=LAM)
        def one(s, q, nu=nu, config=config):
            return solve(problem.params(), quadratic_loss, s, q, nu, config)["theta"]

        reference = torch.func.vmap(one)(problem.support, problem.query)
        closed = problem.unrolled(problem.theta0, LAM, lr, steps, nu)
        assert float((closed - reference).abs().max()) < 1e-12
    precisions = [problem.inner_precision(LAM, lr, k) for k in (5, 20, 80)]
    assert precisions[0] > precisions[1] > precisions[2] > 0


def test_defaults_mirror_appendix_a() -> None:
    """App. A: cond(A + λI) ≈ 25 → 5 and ‖φ* − θ‖ ≈ 3.25 → 1.75 as λ goes 0.1 → 10."""
    problem = experiment.GradcheckConfig().problem(0)
    assert 20 < float(problem.condition_numbers(0.1).mean()) < 26
    assert float(problem.condition_numbers(10.0).mean()) == pytest.approx(5.0, rel=1e-9)
    assert 3.0 < float(problem.adaptation_distances(0.1).mean()) < 3.3
    assert 1.6 < float(problem.adaptation_distances(10.0).mean()) < 1.9


@pytest.mark.parametrize("nu", [0.01, 1.0])
def test_safe_inner_step_contracts_for_plus_and_minus_nu(nu: float) -> None:
    problem = make_quadratic(dim=8, tasks=4, seed=0)
    lr = problem.safe_lr(LAM, nu)
    assert problem.contraction(LAM, lr, (0.0, nu, -nu)) < 1


def test_fit_slope_recovers_a_power_law_with_a_t_interval() -> None:
    x = np.geomspace(1e-4, 1e-1, 8)
    noise = np.exp(0.05 * np.sin(np.arange(8)))
    fit = experiment.fit_slope(x, 3 * x**1.5 * noise)
    reference = stats.linregress(np.log(x), np.log(3 * x**1.5 * noise))
    half = stats.t.ppf(0.975, 6) * reference.stderr
    assert fit.slope == pytest.approx(reference.slope) and fit.lo == pytest.approx(reference.slope - half)
    assert fit.lo < 1.5 < fit.hi and fit.points == 8


# --- the command ----------------------------------------------------------------------------

SMALL = ["--dim", "4", "--tasks", "3", "--quiet"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nu", "0"], "--nu (ν) must be a non-zero"),
        (["--lam", "0"], "--lam (λ) must be > 0"),
        (["--lam", "-1"], "--lam (λ) must be > 0"),
        (["--lam-grid", "0..1@3"], "--lam-grid"),
        (["--inner-steps", "0"], "--inner-steps"),
        (["--inner-steps", "5..1"], "descending"),
        (["--cg-steps", "0"], "--cg-steps"),
        (["--methods", "maml,bogus"], "unknown method 'bogus'"),
        (["--nu-grid", "abc"], "--nu-grid"),
        (["--experiments", "error_vs_k,bogus"], "unknown experiment 'bogus'"),
        (["--outer", "rmsprop"], "--outer"),
        (["--inner-lr", "-0.1"], "--inner-lr (inner step size) must be > 0"),
        (["--es-samples", "0"], "es-samples"),
        (["--seeds", "-1"], "--seeds"),
        (["--experiments", "rates", "--methods", "maml"], "need a method that uses nu"),
    ],
)
def test_bad_settings_are_one_line_errors_with_exit_2(cli, tmp_path: Path, args: list[str],
                                                      message: str) -> None:
    out = tmp_path / "never"
    code, _, stderr = cli("gradcheck", *SMALL, "--out", str(out), *args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fobbench: error:") and message in lines[0], stderr
    assert not out.exists()


def test_out_and_resume_misuse_are_one_line_errors(cli, tmp_path: Path) -> None:
    code, _, stderr = cli("gradcheck", *SMALL, "--out", str(tmp_path / "a"), "--resume", str(tmp_path / "a"))
    assert code == 2 and "either --out or --resume" in stderr
    code, _, stderr = cli("gradcheck", *SMALL, "--resume", str(tmp_path / "missing"))
    assert code == 2 and "--resume" in stderr


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, str]:
    """Every sub-experiment on a small problem (ES-MAML left out: it is the slow one)."""
    from fobbench.cli import main

    out = tmp_path_factory.mktemp("gradcheck") / "run"
    args = ["gradcheck", "--experiments", "all", *SMALL, "--inner-steps", "1,10,30",
            "--methods", "maml,fomaml,reptile,imaml,fobmaml-forward,fobmaml-sym,exact",
            "--nu-inner-steps", "5,10,20", "--nu-grid", "1e-3..1e-1@3", "--rate-nu", "1e-3..1e-1@5",
            "--iters", "4", "--lam-grid", "0.1,1,10", "--out", str(out)]
    import contextlib
    import io

    buffer = io.StringIO()
    previous = torch.get_num_threads()
    with contextlib.redirect_stdout(buffer):
        try:
            main(args)
        except SystemExit as exit_:
            assert exit_.code in (0, None)
    torch.set_num_threads(previous)
    return out, buffer.getvalue()


def test_full_run_writes_one_csv_per_experiment_and_their_figures(full_run) -> None:
    out, _ = full_run
    for name in experiment.EXPERIMENTS:
        frame = read_results(out / f"{name}.csv")
        assert set(frame["benchmark"]) == {f"gradcheck.{name}"}
    assert not list(out.glob("*.png"))  # figures never inside the results folder
    figure_dir = out.parent / f"{out.name}-figures"
    figures = sorted(p.name for p in figure_dir.glob("*.png"))
    assert figures == sorted(f"gradcheck_{name}.png" for name in experiment.EXPERIMENTS)
    for figure in figure_dir.glob("*.png"):
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_full_run_numbers_have_the_expected_properties(full_run) -> None:
    out, stdout = full_run
    errors = read_results(out / "error_vs_k.csv")
    errors = errors[errors["metric"] == "rel_error"]
    assert errors[errors["method"] == "exact"]["value"].max() < 1e-12
    sym = errors[errors["method"] == "fobmaml-sym"].set_index("inner_steps")["value"]
    assert sym[30] < sym[10] < sym[1]
    assert set(errors[errors["method"] == "imaml"]["cg_steps"]) == {2, 5}
    assert errors["inner_lr"].nunique() == 1 and errors["inner_lr"].iloc[0] > 0
    # The table and the headline are printed from the data.
    assert "K=30" in stdout and "fobmaml-sym" in stdout
    table = experiment.error_table(errors)
    best = table.drop(index="exact")[30].idxmin()
    assert f"most accurate estimator is {best}" in experiment.headline(table)
    # Meta-training with the exact gradient decreases F towards F*.
    losses = read_results(out / "outer_loss.csv")
    exact = losses[(losses["method"] == "exact") & (losses["metric"] == "suboptimality")]
    exact = exact.sort_values("iteration")
    assert (np.diff(exact["value"].to_numpy()) < 0).all() and (exact["value"] >= -1e-12).all()


def test_full_run_rates_agree_with_theory(full_run) -> None:
    out, stdout = full_run
    rates = read_results(out / "rates.csv")
    slopes = rates[rates["metric"] == "slope"].set_index(["fit", "solver", "method"])["value"]
    assert slopes[("nu", "heavy-ball", "fobmaml-forward")] == pytest.approx(1.0, abs=0.1)
    assert slopes[("nu", "heavy-ball", "fobmaml-sym")] == pytest.approx(2.0, abs=0.1)
    assert slopes[("delta", "perturbed", "fobmaml-forward")] == pytest.approx(0.5, abs=0.1)
    assert slopes[("delta", "perturbed", "fobmaml-sym")] == pytest.approx(2 / 3, abs=0.1)
    intervals = rates[rates["metric"].isin(["slope_lo", "slope_hi"])].pivot_table(
        index=["fit", "solver", "method"], columns="metric", values="value")
    assert (intervals["slope_lo"] <= slopes.loc[intervals.index]).all()
    assert (intervals["slope_hi"] >= slopes.loc[intervals.index]).all()
    assert "fitted log-log slopes" in stdout


def test_lambda_sweep_trades_adaptation_for_conditioning(full_run) -> None:
    out, _ = full_run
    sweep = read_results(out / "lambda.csv").pivot_table(index="lam", columns="metric", values="value")
    assert sweep["adaptation_distance"].is_monotonic_decreasing
    assert sweep["condition_number"].is_monotonic_decreasing


def test_resume_skips_finished_points_and_completes_a_cut_file(cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["gradcheck", *SMALL, "--inner-steps", "1,3", "--methods", "fomaml,imaml,exact", "--no-plot"]
    assert cli(*args, "--out", str(out))[0] == 0
    path = out / "error_vs_k.csv"
    complete = read_results(path)
    lines = path.read_text().splitlines(keepends=True)
    # Each point writes two rows (rel_error, seconds): lose the last point, half a line left over.
    path.write_text("".join(lines[:-2]) + lines[-2][:10])
    code, stdout, _ = cli(*args, "--resume", str(out))
    assert code == 0 and "K=3" in stdout
    resumed = read_results(path)
    assert len(resumed) == len(complete)
    assert not resumed.duplicated(["config_hash", "seed", "metric"]).any()
    code, _, stderr = cli(*args, "--out", str(out))
    assert code == 2 and "already exists" in stderr


def test_loop_batching_gives_the_same_errors_as_vmap(tmp_path: Path) -> None:
    values = {}
    for batching in ("vmap", "loop"):
        config = experiment.GradcheckConfig(methods=("maml", "imaml", "fobmaml-sym", "esmaml"), ks=(2, 8),
                                            dim=4, tasks=3, es_samples=4, batching=batching)
        files = experiment.run(config, tmp_path / batching)
        frame = files.frame()
        values[batching] = frame[frame["metric"] == "rel_error"].sort_values(
            ["method", "inner_steps", "cg_steps"])["value"].to_numpy()
    assert np.allclose(values["vmap"], values["loop"], rtol=1e-9, atol=0)


@pytest.mark.slow
def test_default_quick_start_finishes_within_30_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "fobbench", "gradcheck", "--out", str(tmp_path / "r"),
                             "--quiet"], check=False, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "fobmaml-sym" in result.stdout and elapsed < 30, elapsed
    frame = pd.read_csv(tmp_path / "r" / "error_vs_k.csv")
    assert set(frame["inner_steps"]) == {1, 2, 5, 10, 20, 50, 100}
