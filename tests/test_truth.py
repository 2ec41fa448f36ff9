"""The float64 implicit truth of gradcheck --problem: two routes agree; honest statuses."""

from __future__ import annotations

import torch
from torch import nn

from fobbench import truth
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
