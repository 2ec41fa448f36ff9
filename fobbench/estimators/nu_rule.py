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
3. the inner-solve error of Cor. 1, λδ/ν in the worst case. fobbench's solves are
   deterministic and start both perturbed problems from Δ₀ = 0, so their truncation error
   is common to both solutions and cancels to first order: what is left is O(δ) and does
   not depend on ν (measured: error-vs-ν curves on the quadratic are flat in ν at K = 5 and
   20 down to ν = 1e-5, see README). Putting δ into the rule, as Cor. 1's ν ~ δ^{1/3}
   would, only moves ν into the bias-dominated range (3× worse at K = 20). So δ is left out.

Minimising a·ν² + r·eps/ν gives ν_sym = (r·eps/(2a))^{1/3}; a·ν + r·eps/ν gives
ν_forward = (r·eps/a)^{1/2}; in general a bias a·ν^p (a = (L̂/(λ + L̂))^p, p the method's
registered ``theory_nu``: 4 for the Richardson extrapolation of the symmetric estimator)
gives ν = (r·eps/(p·a))^{1/(p+1)}. Constants: L̂ = 1, r = 1 (:data:`ROUNDING`); ν is capped
so that the stencil's farthest perturbation stays ≤ :data:`MAX_NU` = 0.5 (inside the radius
μ/L̂ where the path is smooth). Near ν* the error is within 2× of its minimum for ν in
~[0.45, 2.2]·ν* (sym; a misestimate of r/a by 10× moves ν by 2.15×). Values at λ = 2:
float32 sym 8.1e-3, forward 6.0e-4, Richardson 7.5e-2; float64 sym 1.0e-5, forward 2.6e-8,
Richardson 1.4e-3; at λ = 1e3, float32 sym 0.39.
"""

from __future__ import annotations

import torch

CURVATURE = 1.0
"""L̂: the assumed curvature scale of the train loss, in the units of λ."""

MAX_NU = 0.5
"""Upper bound of the chosen ν (dimensionless)."""

ROUNDING = 1.0
"""r: the rounding-error constant, in units of the dtype's machine epsilon."""

AUTO = "auto"
"""The value of ``EstimatorConfig.nu`` (``--nu auto``) that asks for this rule."""


def auto_nu(dtype: torch.dtype, order: float, lam: float, reach: float = 1.0) -> float:
    """ν minimising the error budget of the module docstring.

    Args:
        dtype: floating dtype of θ (its machine epsilon eps enters the rounding term).
        order: p, the bias order in ν with an exact solve (the registry's ``theory_nu``):
            1 for the forward difference (12), 2 for the symmetric one (13), 4 for its
            Richardson extrapolation. The bias a·ν^p with a = (L̂/(λ + L̂))^p against
            rounding r·eps/ν is least at ν = (r·eps/(p·a))^{1/(p+1)}.
        lam: λ > 0, the proximal strength.
        reach: the largest |multiple| of ν the stencil perturbs by (2 for Richardson's ±2ν);
            ν is capped so that reach·ν ≤ :data:`MAX_NU`.
    """
    if not order > 0:
        raise ValueError(f"the bias order in ν must be > 0 (got {order})")
    eps = torch.finfo(dtype).eps
    flatten = CURVATURE / (lam + CURVATURE)
    nu = (ROUNDING * eps / (order * flatten**order)) ** (1 / (order + 1))
    return min(nu, MAX_NU / reach)
