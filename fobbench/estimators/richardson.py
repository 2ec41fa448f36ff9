"""FO-B-MAML with Richardson extrapolation: bias O(ν⁴) from four perturbed solves.

The symmetric estimator (eq. 13) g_sym(ν) = −λ(φ_ν − φ_−ν)/(2ν) is an even function of ν
around the true meta-gradient: with an exact solve, g_sym(ν) = ∇F + c₂ν² + O(ν⁴). Richardson
extrapolation cancels the ν² term:

    g = (4·g_sym(ν) − g_sym(2ν))/3
      = −λ/ν · [ 2/3·(φ_ν − φ_−ν) − 1/12·(φ_2ν − φ_−2ν) ],

so the bias is O(ν⁴) (error vs ν slope 4), at the price of four inner solves per task
(v = ν, −ν, 2ν, −2ν). With an inexact solve of precision δ the error is O(ν⁴ + δ/ν), best
at ν ~ δ^{1/5}: O(δ^{4/5}), by Corollary 1's argument. The perturbation 2ν must keep the
inner problem strongly convex (λ above 2ν times the most negative eigenvalue of ∇²f).

The solutions are taken as displacements Δ_v = φ_v − θ (:func:`~fobbench.inner.solve_displacement`),
as for the symmetric estimator, so the stencil is formed from numbers stored to Δ's own precision.
The solves run one after another; summed over tasks (``loop`` batching) each solution is
added into the meta-gradient buffer as soon as it is solved, so only one is held at a time.
``--nu auto`` balances the O(ν⁴) bias against rounding and keeps 2ν ≤ 0.5
(:func:`fobbench.estimators.nu_rule.auto_nu` with the registered ``theory_nu`` and stencil).
"""

from __future__ import annotations

from fobbench.estimators.base import EstimatorConfig, accumulates, nu_of, register
from fobbench.estimators.fobmaml import fold
from fobbench.inner import solve_displacement
from fobbench.methods import METHODS
from fobbench.params import Data, LossFn, Params

METHOD = "fobmaml-richardson"

STENCIL = METHODS[METHOD].stencil
"""(multiple of ν, coefficient c) with g = −λ/ν · Σ c·φ_{m·ν}; the coefficients sum to 0."""


@register(METHOD)
def fobmaml_richardson(theta: Params, loss: LossFn, support: Data, query: Data,
                       config: EstimatorConfig, noise: Params | None = None) -> Params:
    """−λ/ν · Σ c·Δ_{mν} over :data:`STENCIL` (Σ c = 0, so θ cancels): bias O(λν⁴) with an
    exact solve."""
    nu = nu_of(METHOD, config, theta)
    scale = -config.inner.lam / nu
    total = {n: 0.0 * p for n, p in theta.items()}
    for multiple, coefficient in STENCIL:
        delta = solve_displacement(theta, loss, support, query, multiple * nu, config.inner,
                                   in_place=config.in_place)
        total = {n: total[n] + (scale * coefficient) * delta[n] for n in theta}
    return total


@accumulates(METHOD)
def fobmaml_richardson_into(theta: Params, loss: LossFn, support: Data, query: Data,
                            config: EstimatorConfig, noise: Params | None, total: Params) -> None:
    """total += :func:`fobmaml_richardson`, one solution at a time (each Δ is folded in and
    freed before the next solve)."""
    nu = nu_of(METHOD, config, theta)
    scale = -config.inner.lam / nu
    for multiple, coefficient in STENCIL:
        fold(total, solve_displacement(theta, loss, support, query, multiple * nu, config.inner,
                                       in_place=config.in_place), scale * coefficient)
