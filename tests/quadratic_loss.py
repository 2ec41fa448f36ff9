"""A random strongly convex quadratic loss 0.5·xᵀAx + bᵀx on one parameter ``x`` (float64),
shared by the inner-solver and inner-protocol tests, which compare against its closed forms."""

from __future__ import annotations

import torch

from fobbench.params import LossFn, Params


def quadratic(d: int, seed: int = 0) -> tuple[LossFn, Params, torch.Tensor, torch.Tensor]:
    """(loss, θ, A, b): A = QQᵀ/d + I/2 (eigenvalues ≥ 1/2), data = (A, b), θ random."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = q @ q.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)

    def loss(params: Params, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        a_, b_ = data
        x = params["x"]
        return 0.5 * x @ a_ @ x + x @ b_

    theta = {"x": torch.randn(d, generator=g, dtype=torch.float64)}
    return loss, theta, a, b
