"""The shared inner solver: its gradient and its convergence to the proximal solution."""

from __future__ import annotations

import pytest
import torch

from fobbench.errors import FobbenchError
from fobbench.inner import InnerConfig, _objective_grad, proximal_objective, solve


def _quadratic(d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = q @ q.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)

    def loss(params, data):
        a_, b_ = data
        x = params["x"]
        return 0.5 * x @ a_ @ x + x @ b_

    theta = {"x": torch.randn(d, generator=g, dtype=torch.float64)}
    return loss, theta, a, b


@pytest.mark.parametrize("v", [0.0, 0.3, -0.3])
def test_sequential_gradient_equals_autograd_of_the_objective(v: float) -> None:
    loss, theta, a, b = _quadratic()
    phi = {"x": theta["x"] + 0.1}
    query = (2 * a, -b)
    expected = torch.func.grad(proximal_objective)(phi, theta, loss, (a, b), query, v, 2.0)
    got = _objective_grad(phi, theta, loss, (a, b), query, v, 2.0)
    torch.testing.assert_close(got["x"], expected["x"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("optimizer", "lr", "steps"), [("gd", 0.2, 400), ("momentum", 0.05, 400), ("adam", 0.05, 3000)])
def test_every_inner_optimizer_reaches_the_closed_form_solution(optimizer: str, lr: float, steps: int) -> None:
    loss, theta, a, b = _quadratic()
    lam, v = 2.0, 0.1
    query = (a, b)
    config = InnerConfig(steps=steps, lr=lr, lam=lam, optimizer=optimizer)
    phi = solve(theta, loss, (a, b), query, v, config)["x"]
    eye = torch.eye(len(b), dtype=torch.float64)
    closed = torch.linalg.solve((1 + v) * a + lam * eye, lam * theta["x"] - (1 + v) * b)  # App. D.1
    assert torch.linalg.norm(phi - closed) / torch.linalg.norm(closed) < 1e-6


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"lam": 0.0}, {"lam": -1.0}, {"lr": 0.0}, {"optimizer": "lbfgs"}])
def test_bad_inner_settings_are_one_line_errors(kwargs: dict) -> None:
    with pytest.raises(FobbenchError) as error:
        InnerConfig(**kwargs)
    assert "\n" not in str(error.value)
