"""The float64 implicit truth of gradcheck --problem: two routes agree; honest statuses."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from fobbench import truth
from fobbench.experiments.gradcheck import summaries
from fobbench.params import classification_loss


def _task(activation: type[nn.Module], seed: int = 0) -> truth.TaskFunctions:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), activation(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(seed)
    support = (torch.randn(9, 4, generator=g, dtype=torch.float64), torch.arange(9) % 3)
    query = (torch.randn(9, 4, generator=g, dtype=torch.float64), torch.arange(9) % 3)
    return truth.TaskFunctions(classification_loss(model), dict(model.named_parameters()), support, query)


def test_newton_cg_truth_agrees_with_dense_route_to_1e_10() -> None:
    fn = _task(nn.Tanh)
    result = truth.implicit_gradient(fn, lam=1.0)
    assert result.status == truth.STATUS_OK
    assert result.inner_residual <= 1e-10 and result.cg_residual <= 1e-10
    dense = truth.dense_truth(fn, lam=1.0)
    assert dense.grad is not None
    assert float((dense.grad - result.grad).norm() / dense.grad.norm()) <= 1e-10
    # Lanczos' smallest eigenvalue matches the dense spectrum (n = 45 <= 60 Lanczos steps: exact)
    assert abs(result.lambda_min - dense.lambda_min) <= 1e-8 * abs(dense.lambda_min)


def test_perturbed_solutions_difference_is_the_truth_to_second_order() -> None:
    fn = _task(nn.Tanh)
    exact = truth.implicit_gradient(fn, lam=1.0).grad
    errors = []
    for nu in (1e-2, 1e-3):
        plus = truth.newton_cg(fn, nu, 1.0, tol=1e-13).phi
        minus = truth.newton_cg(fn, -nu, 1.0, tol=1e-13).phi
        estimate = -1.0 * (plus - minus) / (2 * nu)
        errors.append(float((estimate - exact).norm() / exact.norm()))
    assert 60 < errors[0] / errors[1] < 160  # O(ν²): a 10× smaller ν is ~100× smaller error


def test_nonconvex_inner_problem_is_reported_not_answered() -> None:
    theta = {"w": torch.tensor([0.3, -0.2], dtype=torch.float64)}

    def loss(params: dict[str, torch.Tensor], data: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return -(params["w"] ** 2).sum() + (params["w"] * data[0]).sum()  # Hessian −2I

    data = (torch.ones(2, dtype=torch.float64),)
    result = truth.implicit_gradient(truth.TaskFunctions(loss, theta, data, data), lam=1.0)
    assert result.status == truth.STATUS_NONCONVEX
    assert result.grad is None and result.lambda_min < 0


def test_newton_stops_at_the_rounding_floor_instead_of_running_on() -> None:
    fn = _task(nn.Tanh)
    # ‖∇‖ ≤ 1e-30 is below float64's reach: Newton must stop after a few steps without
    # progress, unconverged, with the residual it reached at the rounding floor.
    result = truth.newton_cg(fn, 0.0, 1.0, tol=1e-30, max_iter=50)
    assert not result.converged
    assert result.grad_norm <= 1e-13
    assert result.iterations <= 15


def test_first_order_warm_start_solves_a_perturbed_problem_in_two_newton_steps() -> None:
    fn = _task(nn.Tanh)
    exact = truth.implicit_gradient(fn, lam=1.0)
    nu = 1e-3
    cold = truth.newton_cg(fn, nu, 1.0, tol=1e-13, start=exact.phi)
    warm = truth.newton_cg(fn, nu, 1.0, tol=1e-13, start=exact.phi - nu * exact.grad)
    assert warm.converged and cold.converged
    assert warm.iterations <= 2 and warm.iterations < cold.iterations
    assert float((warm.phi - cold.phi).norm()) <= 1e-12


def _nu_frame(errors: dict[float, float], floor: float) -> pd.DataFrame:
    rows = []
    for nu, error in errors.items():
        for metric, value in (("rel_error", error), ("floor", floor)):
            rows.append({"benchmark": "gradcheck.network_error_vs_nu", "method": "fobmaml-richardson",
                         "nu": nu, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def test_nu_slope_is_fitted_only_above_the_estimated_floor() -> None:
    nus = [1e-3 * 10 ** (i / 4) for i in range(9)]
    # bias 1e-2·(ν/0.1)⁴ down to a rounding floor of 2e-9, under its estimated bound 5e-10 × 10
    errors = {nu: max(1e-2 * (nu / 0.1) ** 4, 2e-9) for nu in nus}
    (fit,) = summaries.network_slopes(_nu_frame(errors, 5e-10))
    assert fit.kept == 7 and fit.total == 9
    assert abs(fit.fit.slope - 4.0) < 1e-6
    assert fit.span == "0.0032..0.1"
    # fitted through the floor, the same points give a misleading slope
    assert summaries.network_slopes(_nu_frame(errors, 0.0))[0].fit.slope < 3.7
    # everything within 10× of the floor: no slope, said so
    flat = {nu: 5e-10 for nu in nus}
    notes = summaries.network_notes(_nu_frame(flat, 1e-10))
    assert any("no range above the floor" in line for line in notes), notes
