"""The one inner solver every method adapts with.

All methods solve the same proximal inner problem (paper eq. 10)

    min_φ  v·f(φ) + f̂(φ) + λ/2 ‖φ − θ‖²

with K steps of the same optimizer from φ₀ = θ, where f̂ is the train (support) loss and
f the test (query) loss; v = 0 is the unperturbed problem (6). Differences between
methods therefore come from the estimator, not from the set-up. The solver is pure and
differentiable (MAML backpropagates through it) and vmappable over tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fobbench.errors import FobbenchError
from fobbench.params import Data, LossFn, Params, sq_norm, sub

OPTIMIZERS = ("gd", "momentum", "adam")


@dataclass(frozen=True)
class InnerConfig:
    """Settings of the inner solver.

    Attributes:
        steps: K, the number of inner steps (default 5, the paper's MNIST-1D/Omniglot value).
        lr: α, the inner step size (default 0.1).
        lam: λ > 0, the proximal strength (default 2.0, the paper's value).
        optimizer: ``gd`` (default), ``momentum`` (heavy ball) or ``adam``.
        momentum: β for ``momentum`` (default 0.9).
        betas: (β₁, β₂) for ``adam`` (default (0.9, 0.999)).
        eps: ε for ``adam`` (default 1e-8).
    """

    steps: int = 5
    lr: float = 0.1
    lam: float = 2.0
    optimizer: str = "gd"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise FobbenchError(f"inner steps K must be an integer >= 1 (got {self.steps})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FobbenchError(f"inner step size must be > 0 (got {self.lr})")
        if not (self.lam > 0 and math.isfinite(self.lam)):
            raise FobbenchError(f"lambda must be > 0 (got {self.lam})")
        if self.optimizer not in OPTIMIZERS:
            raise FobbenchError(
                f"unknown inner optimizer '{self.optimizer}' (choose from {', '.join(OPTIMIZERS)})"
            )


def proximal_objective(
    phi: Params, theta: Params, loss: LossFn, support: Data, query: Data, v: float, lam: float
) -> Tensor:
    """v·f(φ) + f̂(φ) + λ/2‖φ − θ‖² (the query term is skipped when v == 0)."""
    value = loss(phi, support) + 0.5 * lam * sq_norm(sub(phi, theta))
    if v != 0.0:
        value = value + v * loss(phi, query)
    return value


def _objective_grad(
    phi: Params, theta: Params, loss: LossFn, support: Data, query: Data, v: float, lam: float
) -> Params:
    """∇_φ of :func:`proximal_objective`.

    The two data terms are differentiated one after the other, so only one data set's
    activations are alive at a time: a perturbed solve (FO-B-MAML) then peaks like an
    unperturbed one (FO-MAML) instead of holding support and query activations together.
    """
    grad = torch.func.grad(loss)(phi, support)
    if v != 0.0:
        query_grad = torch.func.grad(loss)(phi, query)
        grad = {n: grad[n] + v * query_grad[n] for n in grad}
    return {n: grad[n] + lam * (phi[n] - theta[n]) for n in grad}


def solve(
    theta: Params, loss: LossFn, support: Data, query: Data, v: float, config: InnerConfig
) -> Params:
    """K optimizer steps on the proximal objective from φ₀ = θ; returns φ_K.

    Pure and differentiable in θ: MAML differentiates through it, first-order methods call
    it on detached θ and keep only the returned parameters.
    """
    phi = dict(theta)
    lr = config.lr
    if config.optimizer == "gd":
        for _ in range(config.steps):
            grad = _objective_grad(phi, theta, loss, support, query, v, config.lam)
            phi = {n: phi[n] - lr * grad[n] for n in phi}
    elif config.optimizer == "momentum":
        velocity = {n: torch.zeros_like(p) for n, p in phi.items()}
        for _ in range(config.steps):
            grad = _objective_grad(phi, theta, loss, support, query, v, config.lam)
            velocity = {n: config.momentum * velocity[n] + grad[n] for n in phi}
            phi = {n: phi[n] - lr * velocity[n] for n in phi}
    else:
        beta1, beta2 = config.betas
        m = {n: torch.zeros_like(p) for n, p in phi.items()}
        s = {n: torch.zeros_like(p) for n, p in phi.items()}
        for step in range(1, config.steps + 1):
            grad = _objective_grad(phi, theta, loss, support, query, v, config.lam)
            m = {n: beta1 * m[n] + (1 - beta1) * grad[n] for n in phi}
            s = {n: beta2 * s[n] + (1 - beta2) * grad[n] ** 2 for n in phi}
            c1, c2 = 1 - beta1**step, 1 - beta2**step
            phi = {n: phi[n] - lr * (m[n] / c1) / ((s[n] / c2).sqrt() + config.eps) for n in phi}
    return phi
