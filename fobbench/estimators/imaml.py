"""iMAML: conjugate gradient on (I + ∇²f̂(φ_K)/λ) x = ∇f(φ_K) with Hessian-vector products."""

from __future__ import annotations

import torch
from fobbench.estimators.base import EstimatorConfig, register
from fobbench.inner import solve
from fobbench.params import Data, LossFn, Params, dot, zeros_like


def conjugate_gradient(operator, b: Params, steps: int) -> Params:
    """``steps`` CG iterations for ``operator(x) = b`` from x₀ = 0 (operator SPD).

    No early exit (vmap needs a fixed trip count); a zero residual makes the remaining
    steps no-ops instead of 0/0.
    """
    x = zeros_like(b)
    r = dict(b)
    p = dict(b)
    rs = dot(r, r)
    for _ in range(steps):
        ap = operator(p)
        pap = dot(p, ap)
        alpha = torch.where(pap > 0, rs / torch.where(pap > 0, pap, 1.0), 0.0)
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rs_new = dot(r, r)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
        p = {n: r[n] + beta * p[n] for n in p}
        rs = rs_new
    return x


@register("imaml", "CG on (I + ∇²f̂(φ_K)/λ) v = ∇f(φ_K)", order="second")
def imaml(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
          noise: Params | None = None) -> Params:
    """Implicit meta-gradient (eq. 8) at the inexact inner solution φ_K."""
    phi = solve(theta, loss, support, query, 0.0, config.inner)
    rhs = torch.func.grad(loss)(phi, query)
    lam = config.inner.lam
    train_grad = torch.func.grad(loss)

    def operator(vector: Params) -> Params:
        _, hvp = torch.func.jvp(lambda p: train_grad(p, support), (phi,), (vector,))
        return {n: vector[n] + hvp[n] / lam for n in vector}

    return conjugate_gradient(operator, rhs, config.cg_steps)
