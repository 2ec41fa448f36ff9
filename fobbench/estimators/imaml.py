"""iMAML: conjugate gradient on (I + ∇²f̂(φ_K)/λ) x = ∇f(φ_K) with Hessian-vector products."""

from __future__ import annotations

import torch

from fobbench.estimators.base import EstimatorConfig, register
from fobbench.inner import loss_gradient, solve
from fobbench.params import Data, LossFn, Params, dot, zeros_like


def conjugate_gradient(operator, b: Params, steps: int) -> Params:
    """``steps`` iterations of truncated CG for ``operator(x) = b`` from x₀ = 0.

    The operator should be SPD. If a search direction meets non-positive curvature
    (pᵀAp ≤ 1e-12·pᵀp, i.e. λ is below the most negative Hessian eigenvalue, or the residual
    is already zero), x is frozen from then on, as in truncated (Steihaug) CG, instead of
    stepping along a direction of negative curvature. No early exit: vmap needs a fixed trip
    count, so the stop is a mask.
    """
    x = zeros_like(b)
    r = dict(b)
    p = dict(b)
    rs = dot(r, r)
    active = torch.ones((), dtype=torch.bool, device=rs.device)
    for _ in range(steps):
        ap = operator(p)
        pap = dot(p, ap)
        active = active & (pap > 1e-12 * dot(p, p))
        alpha = torch.where(active, rs / torch.where(active, pap, 1.0), 0.0)
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rs_new = dot(r, r)
        beta = torch.where(active & (rs > 0), rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
        p = {n: r[n] + beta * p[n] for n in p}
        rs = rs_new
    return x


@register("imaml")
def imaml(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
          noise: Params | None = None) -> Params:
    """Implicit meta-gradient (eq. 8) at the inexact inner solution φ_K.

    Assumes λ exceeds the most negative eigenvalue of ∇²f̂(φ_K) in magnitude, so that
    I + ∇²f̂/λ is positive definite; otherwise CG is truncated at the first direction of
    non-positive curvature. With damping (ρ, τ) = ``config.imaml_damping()`` the operator
    is (1 + ρ)I + ∇²f̂/(λ + τ), as in the iMAML authors' code (default under the
    ``published`` protocol: (1, 10), which keeps it positive definite for ∇²f̂ ≻ −24 I at
    λ = 2); (0, 0) is the B-MAML system itself.
    """
    phi = solve(theta, loss, support, query, 0.0, config.inner, in_place=config.in_place)
    rhs = loss_gradient(loss, phi, query, in_place=config.in_place)
    regu, lam_damping = config.imaml_damping()
    diagonal, lam = 1.0 + regu, config.inner.lam + lam_damping
    train_grad = torch.func.grad(loss)

    def operator(vector: Params) -> Params:
        _, hvp = torch.func.jvp(lambda p: train_grad(p, support), (phi,), (vector,))
        return {n: diagonal * vector[n] + hvp[n] / lam for n in vector}

    return conjugate_gradient(operator, rhs, config.cg_steps)
