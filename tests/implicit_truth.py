"""A float64 implicit ground truth of the B-MAML meta-gradient for networks (test helper).

The proximal inner problem f̂(φ) + λ/2‖φ − θ‖² is solved tightly in float64 (gradient
descent to a relative residual of 1e-14), then (I + ∇²f̂(φ*)/λ) g = ∇f(φ*) is solved by
conjugate gradient with exact Hessian-vector products (forward-over-reverse), to a
relative residual of 1e-14. It shares no code with the estimators under test, so agreement
between the two is a real check.
"""

from __future__ import annotations

import torch

from fobbench.params import Data, LossFn, Params


def _dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[n] * b[n]).sum() for n in a)  # type: ignore[return-value]


def _cg(operator, rhs: Params, steps: int, tol: float = 1e-14) -> Params:
    """Conjugate gradient for operator(x) = rhs from 0, to a relative residual of ``tol``."""
    x = {n: torch.zeros_like(v) for n, v in rhs.items()}
    r, p = dict(rhs), dict(rhs)
    rs = _dot(r, r)
    stop = (tol * torch.sqrt(rs)) ** 2
    for _ in range(steps):
        if rs <= stop:
            break
        ap = operator(p)
        alpha = rs / _dot(p, ap)
        x = {n: x[n] + alpha * p[n] for n in x}
        r = {n: r[n] - alpha * ap[n] for n in r}
        rs_new = _dot(r, r)
        p = {n: r[n] + (rs_new / rs) * p[n] for n in p}
        rs = rs_new
    return x


def implicit_truth(theta: Params, loss: LossFn, support: Data, query: Data, lam: float,
                   lr: float, warm_steps: int = 300, newton_steps: int = 8, cg_steps: int = 1000) -> Params:
    """∇F(θ) = (I + ∇²f̂(φ*)/λ)⁻¹ ∇f(φ*) in float64 (θ and data must be float64).

    The inner problem is solved for the displacement Δ = φ − θ: ``warm_steps`` of gradient
    descent (step ``lr`` < 2/(L̂ + λ)), then Newton steps whose systems (∇²f̂ + λI) d = ∇
    are solved by CG with exact Hessian-vector products, until the residual stops falling.
    """
    theta = {n: p.detach() for n, p in theta.items()}
    grad_train = torch.func.grad(loss)

    def at(delta: Params) -> Params:
        return {n: theta[n] + delta[n] for n in theta}

    def residual(delta: Params) -> Params:
        g = grad_train(at(delta), support)
        return {n: g[n] + lam * delta[n] for n in g}

    delta = {n: torch.zeros_like(p) for n, p in theta.items()}
    for _ in range(warm_steps):
        g = residual(delta)
        delta = {n: delta[n] - lr * g[n] for n in delta}
    for _ in range(newton_steps):
        g = residual(delta)
        phi = at(delta)

        def hessian(v: Params, phi: Params = phi) -> Params:
            _, hvp = torch.func.jvp(lambda p: grad_train(p, support), (phi,), (v,))
            return {n: hvp[n] + lam * v[n] for n in v}

        step = _cg(hessian, g, cg_steps)
        delta = {n: delta[n] - step[n] for n in delta}
    if torch.sqrt(_dot(residual(delta), residual(delta))) > 1e-10:
        raise RuntimeError("implicit_truth: the inner problem did not converge")
    phi = at(delta)
    rhs = torch.func.grad(loss)(phi, query)

    def operator(v: Params) -> Params:
        _, hvp = torch.func.jvp(lambda p: grad_train(p, support), (phi,), (v,))
        return {n: v[n] + hvp[n] / lam for n in v}

    return _cg(operator, rhs, cg_steps)
