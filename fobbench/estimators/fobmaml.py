"""FO-B-MAML: finite differences of perturbed proximal solutions, eqs. (12) and (13).

The two inner problems are solved one after the other; only their resulting parameters
are kept between the calls, so the peak memory is that of a single inner solve.
"""

from __future__ import annotations

from fobbench.estimators.base import EstimatorConfig, register
from fobbench.inner import solve
from fobbench.params import Data, LossFn, Params


@register("fobmaml-forward", "−λ(φ_ν − φ_0)/ν, eq. (12)", order="first")
def fobmaml_forward(theta: Params, loss: LossFn, support: Data, query: Data,
                    config: EstimatorConfig, noise: Params | None = None) -> Params:
    """Forward difference: bias O(λν) with an exact solve (Prop. 2)."""
    nu, lam = config.nu, config.inner.lam
    phi_nu = solve(theta, loss, support, query, nu, config.inner)
    phi_0 = solve(theta, loss, support, query, 0.0, config.inner)
    return {n: (-lam / nu) * (phi_nu[n] - phi_0[n]) for n in theta}


@register("fobmaml-sym", "−λ(φ_ν − φ_−ν)/(2ν), eq. (13)", order="first")
def fobmaml_sym(theta: Params, loss: LossFn, support: Data, query: Data,
                config: EstimatorConfig, noise: Params | None = None) -> Params:
    """Symmetric difference: bias O(λν²) with an exact solve (Prop. 2)."""
    nu, lam = config.nu, config.inner.lam
    phi_plus = solve(theta, loss, support, query, nu, config.inner)
    phi_minus = solve(theta, loss, support, query, -nu, config.inner)
    return {n: (-lam / (2 * nu)) * (phi_plus[n] - phi_minus[n]) for n in theta}
