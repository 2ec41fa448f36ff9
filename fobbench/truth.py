"""The B-MAML meta-gradient of a real network to high precision (float64): gradcheck's truth.

Never an estimator under test. For one task with support loss f̂, query loss f and λ > 0:

1. φ* = argmin_φ f̂(φ) + v·f(φ) + λ/2‖φ − θ‖² by Newton–CG on exact Hessian-vector products
   (:func:`newton_cg`) until ‖∇‖ ≤ ``tol`` (default 1e-10);
2. g = (I + ∇²f̂(φ*)/λ)⁻¹ ∇f(φ*), i.e. (∇²f̂(φ*) + λI) g = λ∇f(φ*), by CG on exact HVPs to a
   relative residual ≤ ``cg_tol`` (default 1e-10) (:func:`implicit_gradient`);
3. the smallest eigenvalue of ∇²f̂(φ*) + λI by Lanczos on HVPs (:func:`lanczos_extremes`): the
   inner problem is strongly convex at φ* only when it is > 0.

:func:`dense_truth` is an independent second route for small models (dense Hessian, damped
Newton from θ with direct solves, then a direct linear solve), used to check the first.
Everything works on flat float64 vectors; ``Vec`` is a 1-D tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fobbench.params import Data, LossFn, Params, flatten, unflatten

Vec = Tensor
STATUS_OK = "ok"
STATUS_NONCONVEX = "nonconvex"
STATUS_NOT_CONVERGED = "not_converged"


class TaskFunctions:
    """Support loss f̂, query loss f, their gradients and HVPs on flat vectors of one task."""

    def __init__(self, loss: LossFn, theta: Params, support: Data, query: Data) -> None:
        self.like = {n: p.detach() for n, p in theta.items()}
        self.theta = flatten(self.like).detach()
        self.loss, self.support, self.query = loss, support, query

    def value(self, vec: Vec, data: Data) -> Tensor:
        return self.loss(unflatten(vec, self.like), data)

    def grad(self, vec: Vec, data: Data) -> Vec:
        return torch.func.grad(lambda x: self.value(x, data))(vec).detach()

    def hvp(self, vec: Vec, data: Data, direction: Vec) -> Vec:
        grad_fn = torch.func.grad(lambda x: self.value(x, data))
        return torch.func.jvp(grad_fn, (vec,), (direction,))[1].detach()

    # The proximal objective P_v(φ) = f̂(φ) + v·f(φ) + λ/2‖φ − θ‖².
    def objective(self, phi: Vec, v: float, lam: float) -> float:
        value = self.value(phi, self.support) + 0.5 * lam * (phi - self.theta).pow(2).sum()
        if v != 0.0:
            value = value + v * self.value(phi, self.query)
        return float(value)

    def objective_grad(self, phi: Vec, v: float, lam: float) -> Vec:
        g = self.grad(phi, self.support) + lam * (phi - self.theta)
        return g + v * self.grad(phi, self.query) if v != 0.0 else g

    def objective_hvp(self, phi: Vec, v: float, lam: float) -> Callable[[Vec], Vec]:
        def apply(d: Vec) -> Vec:
            h = self.hvp(phi, self.support, d) + lam * d
            return h + v * self.hvp(phi, self.query, d) if v != 0.0 else h

        return apply

    def dense_hessian(self, phi: Vec, v: float, lam: float, chunk: int = 256) -> Tensor:
        """∇²P_v(φ) as a dense (n, n) matrix, symmetrised (HVPs vmapped over the identity)."""
        n = phi.numel()
        eye = torch.eye(n, dtype=phi.dtype)

        def column(d: Vec) -> Vec:
            h = torch.func.jvp(torch.func.grad(lambda x: self.value(x, self.support)), (phi,), (d,))[1]
            if v != 0.0:
                query_grad = torch.func.grad(lambda x: self.value(x, self.query))
                h = h + v * torch.func.jvp(query_grad, (phi,), (d,))[1]
            return h

        rows = torch.func.vmap(column, chunk_size=chunk)(eye).detach()
        return 0.5 * (rows + rows.T) + lam * eye


@dataclass(frozen=True)
class CGResult:
    x: Vec
    residual: float
    """‖b − Ax‖/‖b‖ at return (recomputed, not the recursion's estimate)."""
    iterations: int
    negative_curvature: bool


def conjugate_gradient(apply: Callable[[Vec], Vec], b: Vec, rtol: float, max_iter: int) -> CGResult:
    """CG for A x = b from x = 0 until ‖r‖ ≤ rtol·‖b‖; stops at a direction of curvature ≤ 0."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = float(r @ r)
    b_norm = math.sqrt(float(b @ b)) or 1.0
    negative = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (reported)
        if math.sqrt(rr) <= rtol * b_norm:
            it -= 1
            break
        ap = apply(p)
        curvature = float(p @ ap)
        if curvature <= 0:
            negative = True
            break
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    residual = float((b - apply(x)).norm()) / b_norm
    return CGResult(x, residual, it, negative)


@dataclass(frozen=True)
class InnerSolution:
    phi: Vec
    grad_norm: float
    """‖∇P_v(φ)‖ at return."""
    iterations: int
    converged: bool
    negative_curvature: bool


STALL_STEPS = 3
"""Accepted Newton steps in a row without measurable progress after which :func:`newton_cg` stops."""


def newton_cg(fn: TaskFunctions, v: float, lam: float, tol: float = 1e-10, max_iter: int = 50,
              start: Vec | None = None) -> InnerSolution:
    """Newton–CG on P_v from θ (or ``start``) until ‖∇P_v‖ ≤ ``tol``.

    Inexact Newton directions (CG to a relative residual min(0.1, max(‖∇‖, 0.1·tol/‖∇‖))), a step accepted
    when it lowers ‖∇‖ or P (backtracking otherwise); a direction of negative curvature is
    recorded and CG's iterate so far is used.

    It also stops, unconverged, at the rounding floor: after :data:`STALL_STEPS` accepted steps
    in a row that neither halved ‖∇‖ nor lowered P by more than 4 ulp of |P| (no measurable
    progress: each would otherwise cost a CG solve to a relative residual near ‖∇‖, i.e. up
    to 2n HVPs, for nothing). The residual reached is returned either way.
    """
    phi = (fn.theta if start is None else start).clone()
    n = phi.numel()
    g = fn.objective_grad(phi, v, lam)
    g_norm = float(g.norm())
    negative = False
    stalled = 0
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (reported)
        if g_norm <= tol or stalled >= STALL_STEPS:
            it -= 1
            break
        # Forcing term: min(0.1, ‖∇‖) for quadratic convergence, but never more accurate than the
        # target needs (0.1·tol/‖∇‖): near the rounding floor a CG to ~‖∇‖ costs up to 2n HVPs.
        forcing = min(0.1, max(g_norm, 0.1 * tol / g_norm))
        cg = conjugate_gradient(fn.objective_hvp(phi, v, lam), -g, forcing, 2 * n)
        negative |= cg.negative_curvature
        d = cg.x if float(cg.x.norm()) > 0 else -g / lam
        value = fn.objective(phi, v, lam)
        slope = float(g @ d)
        step = 1.0
        accepted = False
        for _ in range(40):
            trial = phi + step * d
            g_trial = fn.objective_grad(trial, v, lam)
            if float(g_trial.norm()) < g_norm or fn.objective(trial, v, lam) <= value + 1e-4 * step * slope:
                accepted = True
                break
            step *= 0.5
        if not accepted:
            break
        halved = float(g_trial.norm()) <= 0.5 * g_norm
        stalled = 0 if halved or value - fn.objective(trial, v, lam) > 4 * _ULP * abs(value) else stalled + 1
        phi, g = trial, g_trial
        g_norm = float(g.norm())
    return InnerSolution(phi, g_norm, it, g_norm <= tol, negative)


_ULP = 2.0**-52
"""float64 machine epsilon (spacing of doubles near 1)."""


def lanczos_extremes(apply: Callable[[Vec], Vec], n: int, steps: int = 60, dtype: torch.dtype = torch.float64,
                     seed: int = 0) -> tuple[float, float]:
    """(smallest, largest) Ritz values of a symmetric operator after ``steps`` Lanczos steps
    with full reorthogonalisation (exact for n ≤ steps)."""
    steps = min(steps, n)
    q = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    q = q / q.norm()
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        w = apply(basis[j])
        alphas.append(float(w @ basis[j]))
        for b in basis:  # full reorthogonalisation (twice is enough)
            w = w - (w @ b) * b
        for b in basis:
            w = w - (w @ b) * b
        beta = float(w.norm())
        if j == steps - 1 or beta < 1e-12:
            break
        betas.append(beta)
        basis.append(w / beta)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    eig = torch.linalg.eigvalsh(t)
    return float(eig[0]), float(eig[-1])


@dataclass(frozen=True)
class Truth:
    """One task's truth and its own residuals.

    Attributes:
        grad: λ(∇²f̂(φ*) + λI)⁻¹∇f(φ*) (flat), or None when not trustworthy.
        phi: φ*.
        status: ``ok``, ``nonconvex`` (λ_min(∇²f̂(φ*) + λI) ≤ 0) or ``not_converged``.
        inner_residual: ‖∇P_0(φ*)‖ reached.
        cg_residual: relative residual of the linear solve.
        lambda_min, lambda_max: Lanczos extremes of ∇²f̂(φ*) + λI.
        newton_iters, cg_iters: iterations spent.
    """

    grad: Vec | None
    phi: Vec
    status: str
    inner_residual: float
    cg_residual: float
    lambda_min: float
    lambda_max: float
    newton_iters: int
    cg_iters: int


def implicit_gradient(fn: TaskFunctions, lam: float, tol: float = 1e-10, cg_tol: float = 1e-10,
                      lanczos_steps: int = 60) -> Truth:
    """The truth of one task by Newton–CG + CG (see the module doc); honest status otherwise."""
    inner = newton_cg(fn, 0.0, lam, tol=tol)
    hvp = fn.objective_hvp(inner.phi, 0.0, lam)
    low, high = lanczos_extremes(hvp, inner.phi.numel(), lanczos_steps)
    rhs = lam * fn.grad(inner.phi, fn.query)
    n = inner.phi.numel()
    cg = conjugate_gradient(hvp, rhs, cg_tol, 4 * n)
    status = STATUS_OK
    if low <= 0 or cg.negative_curvature:
        status = STATUS_NONCONVEX
    elif not inner.converged or cg.residual > cg_tol:
        status = STATUS_NOT_CONVERGED
    grad = cg.x if status == STATUS_OK else None
    return Truth(grad, inner.phi, status, inner.grad_norm, cg.residual, low, high, inner.iterations,
                 cg.iterations)


@dataclass(frozen=True)
class DenseTruth:
    grad: Vec | None
    inner_residual: float
    lambda_min: float


def dense_truth(fn: TaskFunctions, lam: float, tol: float = 1e-11, max_iter: int = 40) -> DenseTruth:
    """Second, independent route: damped Newton from θ with dense Hessians and direct solves,
    then g = λ(∇²f̂ + λI)⁻¹∇f(φ*) by a Cholesky solve of the dense matrix."""
    phi = fn.theta.clone()
    g = fn.objective_grad(phi, 0.0, lam)
    for _ in range(max_iter):
        if float(g.norm()) <= tol:
            break
        h = fn.dense_hessian(phi, 0.0, lam)
        eig, vecs = torch.linalg.eigh(h)
        d = -(vecs @ ((vecs.T @ g) / eig.clamp_min(1e-8)))
        step, value = 1.0, fn.objective(phi, 0.0, lam)
        for _ in range(40):
            trial = phi + step * d
            g_trial = fn.objective_grad(trial, 0.0, lam)
            if float(g_trial.norm()) < float(g.norm()) or fn.objective(trial, 0.0, lam) < value:
                break
            step *= 0.5
        else:
            break
        phi, g = trial, g_trial
    h = fn.dense_hessian(phi, 0.0, lam)
    eig = torch.linalg.eigvalsh(h)
    grad = None
    if float(eig[0]) > 0:
        grad = torch.linalg.solve(h, lam * fn.grad(phi, fn.query))
    return DenseTruth(grad, float(g.norm()), float(eig[0]))
