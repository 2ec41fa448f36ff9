"""``fobmaml-richardson``: Richardson extrapolation of the symmetric FO-B-MAML estimator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from fobbench.estimators import EstimatorConfig, get, meta_gradient
from fobbench.experiments import gradcheck as experiment
from fobbench.experiments.gradcheck import rates as rate_fits
from fobbench.inner import InnerConfig
from fobbench.problems.quadratic import PARAM, make_quadratic, quadratic_loss
from fobbench.results import read_results

LAM = 2.0
METHOD = "fobmaml-richardson"

pytestmark = pytest.mark.usefixtures("one_thread")


def _closed_form_estimate(problem, nu: float) -> torch.Tensor:
    """(4·g_sym(ν) − g_sym(2ν))/3 from exact perturbed solutions φ*_v (App. D.1 closed form)."""
    theta = problem.theta0

    def sym(h: float) -> torch.Tensor:
        plus, minus = problem.solution(theta, LAM, h), problem.solution(theta, LAM, -h)
        return (-LAM * (plus - minus) / (2 * h)).mean(0)

    return (4 * sym(nu) - sym(2 * nu)) / 3


def _rel(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return float((estimate - truth).norm() / truth.norm())


def test_closed_form_bias_is_fourth_order_in_nu() -> None:
    """With exact solves the error of the extrapolation falls like ν⁴ (the symmetric one like ν²)."""
    problem = make_quadratic(dim=10, tasks=4, seed=1)
    truth = problem.meta_gradient(problem.theta0, LAM)
    nus = np.geomspace(1e-2, 1e-1, 6)
    errors = [_rel(_closed_form_estimate(problem, float(nu)), truth) for nu in nus]
    slope = stats.linregress(np.log(nus), np.log(errors)).slope
    assert slope == pytest.approx(4.0, abs=0.15)
    assert errors[0] < 1e-7


def test_estimator_with_a_near_exact_solve_equals_the_closed_form() -> None:
    """Four heavy-ball solves to 1e-14 give the closed-form extrapolation to high precision,
    both with vmap over tasks and one task at a time (accumulated in place)."""
    problem = make_quadratic(dim=10, tasks=4, seed=1)
    nu = 0.05
    lr, beta, steps = experiment.heavy_ball(problem, LAM, [2 * nu])
    inner = InnerConfig(steps=steps, lr=lr, lam=LAM, optimizer="momentum", momentum=beta)
    config = EstimatorConfig(inner=inner, nu=nu)
    reference = _closed_form_estimate(problem, nu)
    for batching in ("vmap", "loop"):
        grad = meta_gradient(METHOD, problem.params(), quadratic_loss, problem.support, problem.query,
                             config, batching=batching).grad[PARAM]
        assert _rel(grad, reference) < 1e-10, batching
    # And it is the extrapolation of the registered symmetric estimator at ν and 2ν.
    sym = {h: meta_gradient("fobmaml-sym", problem.params(), quadratic_loss, problem.support, problem.query,
                            EstimatorConfig(inner=inner, nu=h)).grad[PARAM] for h in (nu, 2 * nu)}
    assert _rel(grad, (4 * sym[nu] - sym[2 * nu]) / 3) < 1e-10


def test_registration_declares_what_consumers_need() -> None:
    estimator = get(METHOD)
    assert estimator.uses_nu and estimator.trainable and estimator.order == "first"
    assert estimator.theory_nu == 4.0 and estimator.theory_delta == pytest.approx(0.8)
    assert estimator.floor(EstimatorConfig(inner=InnerConfig(steps=5))) == (20, 0, 0)
    assert sum(c for _, c in estimator.stencil) == pytest.approx(0.0, abs=1e-15)


def test_gradcheck_rate_fit_shows_slope_four() -> None:
    """gradcheck's ν-rate fit (near-exact solve, the registered ν span) finds the theory slope."""
    config = experiment.GradcheckConfig(experiments=("rates",), methods=(METHOD,), dim=8, tasks=3,
                                        nu_ks=(5, 10, 20), nu_grid=(1e-2, 1e-1, 0.3),
                                        rate_deltas=(1e-10, 1e-8, 1e-6))
    rows = [r for r in rate_fits.records(experiment.Context(config, 0), lambda m, p: False)
            if r.point.get("fit") == "nu" and r.point.get("x") is None]
    slope = {m.metric: m.value for m in rows[0].measurements}
    assert slope["theory_slope"] == 4.0
    assert slope["slope"] == pytest.approx(4.0, abs=0.1)
    assert slope["slope_lo"] <= 4.0 + 0.1 and slope["slope_hi"] >= 4.0 - 0.1


def test_it_appears_in_gradcheck_memory_and_train(cli, tmp_path: Path) -> None:
    code, stdout, stderr = cli("gradcheck", "--inner-steps", "1,5", "--dim", "6", "--tasks", "2", "--quiet",
                               "--no-plot",
                               "--out", str(tmp_path / "gc"))
    assert code == 0, stderr
    assert METHOD in stdout
    assert METHOD in set(read_results(tmp_path / "gc" / "error_vs_k.csv")["method"])
    code, stdout, stderr = cli("memory", "--arch", "transformer", "--d-model", "16", "--heads", "2",
                               "--ffn", "32",
                               "--batch", "2", "--seq", "8", "--inner-steps", "2", "--quiet", "--no-plot",
                               "--out", str(tmp_path / "mem.csv"))
    assert code == 0, stderr
    frame = read_results(tmp_path / "mem.csv")
    assert METHOD in set(frame["method"])
    peaks = frame[frame["metric"] == "peak_bytes"].set_index("method")["value"]
    # Four solves held one at a time: no more memory than the symmetric estimator's two.
    assert peaks[METHOD] == peaks["fobmaml-sym"]
