"""``--nu auto``: FO-B-MAML's perturbation ν from the error budget of the paper's bounds.

The relative error of a finite-difference estimate, ‖g − ∇F‖/‖∇F‖, has three parts:

1. truncation bias of the difference (Prop. 2): ≈ a·ν for the forward estimator (12),
   ≈ a·ν² for the symmetric one (13). Prop. 2's brackets, divided by ‖∇F‖ ~ L₀ and with
   μ ≈ λ + L̂ (the inner curvature), scale like a_forward ~ L̂/(λ + L̂) and
   a_sym ~ (L̂/(λ + L̂))²: a strong proximal term flattens the solution path ν ↦ φ*_ν.
   The loss curvature L̂ is not known to the method; fobbench takes L̂ = 1 (:data:`CURVATURE`,
   the scale of a cross-entropy on normalised inputs; measured a_sym = 0.14 on a tanh MLP at
   λ = 2, where the rule says 0.11);
2. rounding: the two solutions are computed in floating point; with the inner iterates
   stored as Δ = φ − θ (:func:`fobbench.inner.solve_displacement`) what remains is the
   rounding of the gradients the solver evaluates, ~eps·‖∇f̂(φ)‖ = eps·λ‖Δ‖, which the
   difference divides by ν‖∇F‖·... : ≈ r·eps/ν with r = λ‖Δ‖/‖∇F‖ ≈ 1;
3. the inner-solve error ε of Cor. 1 (relative). fobbench's solves are deterministic and
   start every perturbed problem from Δ₀ = 0, so most of their truncation error is common to
   the solutions and cancels: what is left is a floor that does not depend on ν (measured:
   error-vs-ν curves on the quadratic are flat in ν up to where the bias reaches it). Below
   the ν where the bias a·ν^p equals that floor, a smaller ν buys nothing, and Cor. 1's
   worst-case term λδ/ν (the part that does not cancel: solves that differ in their
   convergence) only grows; for the forward estimator the O(ν) bias of GD-from-zero solves
   even runs against the truncation error (K-step solutions under-shoot, the forward secant
   over-shoots), so the error *falls* up to that ν (quadratic, K = 100: 2.4e-2 at ν ≤ 1e-3,
   7.5e-3 at ν = 3e-2).

The rule: ν = min(:data:`MAX_NU`/reach, max(ν_round, ν_solve)), with

- ν_round = (r·eps/(p·a))^{1/(p+1)}: minimises a·ν^p + r·eps/ν (p the method's registered
  ``theory_nu``: 1 forward, 2 symmetric, 4 Richardson; a = (L̂/(λ + L̂))^p);
- ν_solve = (ε/a)^{1/p}: the ν where the bias reaches the solve-error floor ε. ε is measured
  only where the method solves the unperturbed problem itself (its stencil has a v = 0 term:
  the forward estimator): ε = mean over tasks of ‖∇_φ(f̂ + λ/2‖φ − θ‖²)(φ_K)‖ / (λ‖φ_K − θ‖),
  the relative distance to φ* that strong convexity (μ ≥ λ) bounds by the residual
  (:func:`solve_error`; it costs one unperturbed K-step solve per task before the perturbed
  ones, i.e. forward's inner work × 1.5 under ``auto``). Methods without a v = 0 solve
  (symmetric, Richardson) take ε = 0: their only a priori δ, the GD contraction bound
  (1 − αλ)^K, overstates the floor 20× on the quadratic at K = 100 (0.14 vs 7e-3), and their
  bias adds to the floor instead of cancelling it (measured: moving the symmetric ν to
  ν_solve costs 3–40×).

Constants: L̂ = 1, r = 1 (:data:`ROUNDING`); ν is capped so that the stencil's farthest
perturbation stays ≤ :data:`MAX_NU` = 0.5 (inside the radius μ/L̂ where the path is smooth).
Near ν_round the error is within 2× of its minimum for ν in ~[0.45, 2.2]·ν_round (sym; a
misestimate of r/a by 10× moves ν by 2.15×). Values of ν_round at λ = 2: float32 sym 8.1e-3,
forward 6.0e-4, Richardson 7.5e-2; float64 sym 1.0e-5, forward 2.6e-8, Richardson 1.4e-3; at
λ = 1e3, float32 sym 0.39. ν_solve of the forward estimator at λ = 2 is 3ε (capped at 0.5):
gradcheck's quadratic gives ε = 4.1, 0.56, 7.4e-3 at K = 5, 20, 100, so ν = 0.5, 0.5, 0.022.
"""

from __future__ import annotations

import torch

from fobbench.inner import InnerConfig, solve_displacement
from fobbench.params import Data, LossFn, Params

CURVATURE = 1.0
"""L̂: the assumed curvature scale of the train loss, in the units of λ."""

MAX_NU = 0.5
"""Upper bound of the chosen ν (dimensionless)."""

ROUNDING = 1.0
"""r: the rounding-error constant, in units of the dtype's machine epsilon."""

AUTO = "auto"
"""The value of ``EstimatorConfig.nu`` (``--nu auto``) that asks for this rule."""


def auto_nu(dtype: torch.dtype, order: float, lam: float, reach: float = 1.0,
            solve_error: float = 0.0) -> float:
    """ν = min(MAX_NU/reach, max(ν_round, ν_solve)) of the module docstring.

    Args:
        dtype: floating dtype of θ (its machine epsilon eps enters the rounding term).
        order: p, the bias order in ν with an exact solve (the registry's ``theory_nu``):
            1 for the forward difference (12), 2 for the symmetric one (13), 4 for its
            Richardson extrapolation. The bias a·ν^p with a = (L̂/(λ + L̂))^p against
            rounding r·eps/ν is least at ν_round = (r·eps/(p·a))^{1/(p+1)}.
        lam: λ > 0, the proximal strength.
        reach: the largest |multiple| of ν the stencil perturbs by (2 for Richardson's ±2ν);
            ν is capped so that reach·ν ≤ :data:`MAX_NU`.
        solve_error: ε ≥ 0, the relative inner-solve error floor (:func:`solve_error`; 0 when
            the method has no unperturbed solve): ν is at least ν_solve = (ε/a)^{1/p}, where
            the bias reaches it.
    """
    if not order > 0:
        raise ValueError(f"the bias order in ν must be > 0 (got {order})")
    eps = torch.finfo(dtype).eps
    flatten = CURVATURE / (lam + CURVATURE)
    bias = flatten**order
    nu = (ROUNDING * eps / (order * bias)) ** (1 / (order + 1))
    if solve_error > 0:
        nu = max(nu, (solve_error / bias) ** (1 / order))
    return min(nu, MAX_NU / reach)


def _relative_residual(theta: Params, delta: Params, loss: LossFn, support: Data, lam: float) -> torch.Tensor:
    """‖∇f̂(θ + Δ) + λΔ‖ / (λ‖Δ‖) of one task (0 where Δ = 0), as a 0-d tensor."""
    grad = torch.func.grad(loss)({n: theta[n] + delta[n] for n in theta}, support)
    residual = torch.sqrt(sum(((grad[n] + lam * delta[n]) ** 2).sum() for n in theta))
    size = lam * torch.sqrt(sum((delta[n] ** 2).sum() for n in theta))
    return torch.where(size > 0, residual / torch.where(size > 0, size, torch.ones_like(size)),
                       torch.zeros_like(size))


def solve_error(theta: Params, loss: LossFn, support: Data, query: Data, inner: InnerConfig,
                batching: str = "vmap", chunk_size: int | None = None) -> float:
    """ε: the mean over a batch of tasks of the unperturbed K-step solve's relative residual.

    For each task, Δ_K = K steps of ``inner`` on f̂ + λ/2‖φ − θ‖² from 0 (v = 0) and
    ε_i = ‖∇f̂(θ + Δ_K) + λΔ_K‖ / (λ‖Δ_K‖) ≥ ‖Δ_K − Δ*‖/‖Δ_K‖ (strong convexity μ ≥ λ).
    ``support``/``query`` carry a leading task axis; ``batching`` as for the estimators
    (``vmap``: all tasks at once, ``chunk_size`` at a time; ``loop``: one at a time).
    """
    theta = {n: p.detach() for n, p in theta.items()}

    def one(s: Data, q: Data, in_place: bool = False) -> torch.Tensor:
        delta = solve_displacement(theta, loss, s, q, 0.0, inner, in_place=in_place)
        return _relative_residual(theta, delta, loss, s, inner.lam)

    with torch.no_grad():
        if batching == "vmap":
            values = torch.func.vmap(one, chunk_size=chunk_size)(support, query)
        else:
            values = torch.stack([one(tuple(d[i] for d in support), tuple(d[i] for d in query), True)
                                  for i in range(int(support[0].shape[0]))])
    return float(values.double().mean())
