"""``--nu auto``: FO-B-MAML's perturbation ν from the error budget of the paper's bounds.

The relative error of a finite-difference estimate, ‖g − ∇F‖/‖∇F‖, has three parts:

1. truncation bias of the difference (Prop. 2): ≈ a·ν for the forward estimator (12),
   ≈ a·ν² for the symmetric one (13). Prop. 2's brackets, divided by ‖∇F‖ ~ L₀ and with
   μ ≈ λ + L̂ (the inner curvature), scale like a_forward ~ L̂/(λ + L̂) and
   a_sym ~ (L̂/(λ + L̂))²: a strong proximal term flattens the solution path ν ↦ φ*_ν. L̂, the
   curvature of the train loss f̂, is measured per batch (:func:`measure`) as the secant
   ‖∇f̂(θ − α∇f̂(θ)) − ∇f̂(θ)‖/‖α∇f̂(θ)‖ along one inner GD step (α the inner step size), two
   gradient evaluations of f̂ per task. Measured: MNIST-1D tanh network (λ = 50) L̂ = 16.6,
   so a_sym = 0.062 — its measured bias constant is 0.062; gradcheck's quadratic L̂ = 36.5.
   A fixed L̂ = 1 (the earlier rule, still :data:`CURVATURE` when nothing is measured) is 160×
   off on that network and put the symmetric ν 5× too high (5.5× the best grid error at K = 100);
2. rounding: the solutions are computed in floating point; with the inner iterates stored
   as Δ = φ − θ (:func:`fobbench.inner.solve_displacement`) what remains is the rounding of
   the gradients the solver evaluates, ~eps·‖∇f̂(φ)‖ = eps·λ‖Δ‖, which the difference divides
   by ν: ≈ r·eps/ν relative, r = λ‖Δ‖/‖∇F‖ ≈ 1 (:data:`ROUNDING`; measured 0.66 on the tanh
   MLP at λ = 2, see README "float32 FO-B-MAML");
3. the inner-solve error of Cor. 1. fobbench's solves are deterministic and start every
   perturbed problem from Δ₀ = 0, so most of their truncation error is common to the solutions
   and cancels: what is left is a floor that does not depend on ν (the error-vs-ν curves are
   flat up to where the bias reaches it). Below that ν nothing is gained, and Cor. 1's
   worst-case λδ/ν term (the part that does not cancel) only grows. The floor is the
   truncation error of the derivative −λ dΔ_K/dv of the K-step map, ≈ c·ε with ε the relative
   residual of the solve (for GD, per eigen-direction h the derivative's error is K·α·h times
   the solution's, from the v-dependence of the contraction factor); measured c = 3.2 on the
   quadratic (K = 100) and 3.5 on the network (K = 20): c = :data:`FLOOR` = 3.

The rule: ν = min(:data:`MAX_NU`/reach, max(ν_round, ν_solve)), with

- ν_round = (r·eps/(p·a))^{1/(p+1)}: minimises a·ν^p + r·eps/ν (p the method's registered
  ``theory_nu``: 1 forward, 2 symmetric, 4 Richardson; a = (L̂/(λ + L̂))^p);
- ν_solve = (c·ε/a)^{1/p}: the ν where the bias reaches the solve-error floor c·ε. ε is
  measured only where the method solves the unperturbed problem itself (its stencil has a
  v = 0 term: the forward estimator): ε = mean over tasks of
  ‖∇_φ(f̂ + λ/2‖φ − θ‖²)(φ_K)‖/(λ‖φ_K − θ‖), which bounds ‖φ_K − φ*‖/‖φ_K − θ‖ by strong
  convexity (μ ≥ λ). It costs one unperturbed K-step solve per task before the perturbed
  ones (forward's inner work × 1.5 under ``auto``). Methods without a v = 0 solve (symmetric,
  Richardson) take ε = 0: their only a-priori δ, the GD contraction bound (1 − αλ)^K,
  overstates the floor 20× on the quadratic at K = 100 (0.14 vs a measured ε of 7.4e-3), and
  moving the symmetric ν up to ν_solve costs 3–40× there (its bias adds to the floor).
  For the forward estimator on GD-from-zero solves the bias even runs against the truncation
  error (K-step solutions under-shoot, the forward secant over-shoots): on the quadratic at
  K = 100 its error falls from 2.4e-2 (ν ≤ 1e-3) to 7.5e-3 (ν = 3e-2).

Constants: r = 1, c = 3, ν ≤ :data:`MAX_NU` = 0.5 for the stencil's farthest perturbation
(inside the radius μ/L̂ where the path is smooth). Near ν_round the error is within 2× of its
minimum for ν in ~[0.45, 2.2]·ν_round (sym; a misestimate of r/a by 10× moves ν by 2.15×).
Without a batch (:meth:`fobbench.estimators.base.Estimator.nu` alone: ``train``'s rows before
the first step) the rule takes ε = 0 and L̂ = 1: at λ = 2, float32 sym 8.1e-3, forward 6.0e-4,
Richardson 7.5e-2; float64 sym 1.0e-5, forward 2.6e-8, Richardson 1.4e-3.
"""

from __future__ import annotations

import torch

from fobbench.inner import InnerConfig, solve_displacement
from fobbench.params import Data, LossFn, Params

CURVATURE = 1.0
"""L̂ when it is not measured (:meth:`Estimator.nu` without a batch; a batch whose train
gradient at θ is 0): the curvature scale of a cross-entropy on normalised inputs."""

FLOOR = 3.0
"""c: the meta-gradient's relative truncation error per unit of the solve's relative residual ε
(measured 3.2 on gradcheck's quadratic at K = 100, 3.5 on the MNIST-1D tanh network at K = 20)."""

MAX_NU = 0.5
"""Upper bound of the chosen ν (dimensionless)."""

ROUNDING = 1.0
"""r: the rounding-error constant, in units of the dtype's machine epsilon."""

AUTO = "auto"
"""The value of ``EstimatorConfig.nu`` (``--nu auto``) that asks for this rule."""


def auto_nu(dtype: torch.dtype, order: float, lam: float, reach: float = 1.0,
            solve_error: float = 0.0, curvature: float = CURVATURE) -> float:
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
        solve_error: ε ≥ 0, the relative residual of the unperturbed solve (:func:`measure`;
            0 when the method has none): ν is at least ν_solve = (c·ε/a)^{1/p}, where the bias
            reaches the meta-gradient's truncation error c·ε (c = :data:`FLOOR`).
        curvature: L̂ ≥ 0, the curvature of f̂ (:func:`measure`; default :data:`CURVATURE`).
    """
    if not order > 0:
        raise ValueError(f"the bias order in ν must be > 0 (got {order})")
    cap = MAX_NU / reach
    bias = (curvature / (lam + curvature)) ** order
    if not bias > 0:  # a linear f̂: no bias, nothing to balance rounding against
        return cap
    eps = torch.finfo(dtype).eps
    nu = (ROUNDING * eps / (order * bias)) ** (1 / (order + 1))
    if solve_error > 0:
        nu = max(nu, (FLOOR * solve_error / bias) ** (1 / order))
    return min(nu, cap)


def _relative_residual(theta: Params, delta: Params, loss: LossFn, support: Data, lam: float) -> torch.Tensor:
    """‖∇f̂(θ + Δ) + λΔ‖ / (λ‖Δ‖) of one task (0 where Δ = 0), as a 0-d tensor."""
    grad = torch.func.grad(loss)({n: theta[n] + delta[n] for n in theta}, support)
    residual = torch.sqrt(sum(((grad[n] + lam * delta[n]) ** 2).sum() for n in theta))
    size = lam * torch.sqrt(sum((delta[n] ** 2).sum() for n in theta))
    return torch.where(size > 0, residual / torch.where(size > 0, size, torch.ones_like(size)),
                       torch.zeros_like(size))


def _curvature(theta: Params, loss: LossFn, support: Data, lr: float) -> torch.Tensor:
    """‖∇f̂(θ − α∇f̂(θ)) − ∇f̂(θ)‖ / ‖α∇f̂(θ)‖ of one task (NaN where ∇f̂(θ) = 0), a 0-d tensor."""
    g0 = torch.func.grad(loss)(theta, support)
    g1 = torch.func.grad(loss)({n: theta[n] - lr * g0[n] for n in theta}, support)
    change = torch.sqrt(sum(((g1[n] - g0[n]) ** 2).sum() for n in theta))
    step = lr * torch.sqrt(sum((g0[n] ** 2).sum() for n in theta))
    return torch.where(step > 0, change / torch.where(step > 0, step, torch.ones_like(step)),
                       torch.full_like(step, float("nan")))


def measure(theta: Params, loss: LossFn, support: Data, query: Data, inner: InnerConfig,
            unperturbed: bool, batching: str = "vmap", chunk_size: int | None = None) -> tuple[float, float]:
    """(L̂, ε): the batch's measured curvature and solve error, means over its tasks.

    L̂_i = ‖∇f̂(θ − α∇f̂(θ)) − ∇f̂(θ)‖/‖α∇f̂(θ)‖, the secant curvature of f̂ along one GD step
    of the inner step size α (two gradient evaluations of f̂ per task); :data:`CURVATURE` when
    ∇f̂(θ) = 0 on every task. With ``unperturbed`` (the method solves v = 0 itself), Δ_K = K
    steps of ``inner`` on f̂ + λ/2‖φ − θ‖² from 0 and ε_i = ‖∇f̂(θ + Δ_K) + λΔ_K‖/(λ‖Δ_K‖)
    ≥ ‖Δ_K − Δ*‖/‖Δ_K‖ (strong convexity μ ≥ λ); otherwise ε = 0. ``support``/``query``
    carry a leading task axis; ``batching`` as for the estimators (``vmap``: all tasks at once,
    ``chunk_size`` at a time; ``loop``: one at a time).
    """
    theta = {n: p.detach() for n, p in theta.items()}

    def one(s: Data, q: Data, in_place: bool = False) -> torch.Tensor:
        curvature = _curvature(theta, loss, s, inner.lr)
        if not unperturbed:
            return torch.stack([curvature, torch.zeros_like(curvature)])
        delta = solve_displacement(theta, loss, s, q, 0.0, inner, in_place=in_place)
        return torch.stack([curvature, _relative_residual(theta, delta, loss, s, inner.lam)])

    with torch.no_grad():
        if batching == "vmap":
            values = torch.func.vmap(one, chunk_size=chunk_size)(support, query)
        else:
            values = torch.stack([one(tuple(d[i] for d in support), tuple(d[i] for d in query), True)
                                  for i in range(int(support[0].shape[0]))])
    values = values.double()
    curvatures = values[:, 0][torch.isfinite(values[:, 0])]
    curvature = float(curvatures.mean()) if curvatures.numel() else CURVATURE
    return curvature, float(values[:, 1].mean())
