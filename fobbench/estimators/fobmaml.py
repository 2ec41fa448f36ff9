"""FO-B-MAML: finite differences of perturbed proximal solutions, eqs. (12) and (13).

The two inner problems are solved one after the other. Summed over tasks (``loop``
batching) each solution is added into the meta-gradient buffer as soon as it is solved,
so only one solution is ever held; the per-task form keeps both and subtracts them.
"""

from __future__ import annotations

from fobbench.estimators.base import EstimatorConfig, accumulates, register
from fobbench.inner import solve
from fobbench.params import Data, LossFn, Params


def _fold(total: Params, phi: Params, theta: Params, scale: float) -> None:
    """total += scale·(φ − θ), in place. Both terms are taken relative to θ so that the
    difference of the two solutions loses no more precision than subtracting them directly."""
    for name, value in total.items():
        value.add_(phi[name] - theta[name], alpha=scale)


def _difference(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
                high: float, low: float) -> Params:
    """−λ(φ_high − φ_low)/(high − low): the finite difference of two perturbed solutions."""
    scale = -config.inner.lam / (high - low)
    phi_high = solve(theta, loss, support, query, high, config.inner)
    phi_low = solve(theta, loss, support, query, low, config.inner)
    return {n: scale * (phi_high[n] - phi_low[n]) for n in theta}


def _difference_into(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
                     high: float, low: float, total: Params) -> None:
    """total += :func:`_difference`, one solution at a time."""
    scale = config.inner.lam / (high - low)
    _fold(total, solve(theta, loss, support, query, high, config.inner), theta, -scale)
    _fold(total, solve(theta, loss, support, query, low, config.inner), theta, scale)


@register("fobmaml-forward", "−λ(φ_ν − φ_0)/ν, eq. (12)", order="first")
def fobmaml_forward(theta: Params, loss: LossFn, support: Data, query: Data,
                    config: EstimatorConfig, noise: Params | None = None) -> Params:
    """Forward difference: bias O(λν) with an exact solve (Prop. 2)."""
    return _difference(theta, loss, support, query, config, config.nu, 0.0)


@accumulates("fobmaml-forward")
def fobmaml_forward_into(theta: Params, loss: LossFn, support: Data, query: Data,
                         config: EstimatorConfig, noise: Params | None, total: Params) -> None:
    """total += eq. (12)."""
    _difference_into(theta, loss, support, query, config, config.nu, 0.0, total)


@register("fobmaml-sym", "−λ(φ_ν − φ_−ν)/(2ν), eq. (13)", order="first")
def fobmaml_sym(theta: Params, loss: LossFn, support: Data, query: Data,
                config: EstimatorConfig, noise: Params | None = None) -> Params:
    """Symmetric difference: bias O(λν²) with an exact solve (Prop. 2)."""
    return _difference(theta, loss, support, query, config, config.nu, -config.nu)


@accumulates("fobmaml-sym")
def fobmaml_sym_into(theta: Params, loss: LossFn, support: Data, query: Data,
                     config: EstimatorConfig, noise: Params | None, total: Params) -> None:
    """total += eq. (13)."""
    _difference_into(theta, loss, support, query, config, config.nu, -config.nu, total)
