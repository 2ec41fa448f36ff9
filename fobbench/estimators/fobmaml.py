"""FO-B-MAML: finite differences of perturbed proximal solutions, eqs. (12) and (13).

The two inner problems are solved one after the other. Summed over tasks (``loop``
batching) each solution is added into the meta-gradient buffer as soon as it is solved,
so only one solution is ever held; the per-task form keeps both and subtracts them.
"""

from __future__ import annotations

from fobbench.estimators.base import EstimatorConfig, FloorPasses, accumulates, register
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
    phi_high = solve(theta, loss, support, query, high, config.inner, in_place=config.in_place)
    phi_low = solve(theta, loss, support, query, low, config.inner, in_place=config.in_place)
    return {n: scale * (phi_high[n] - phi_low[n]) for n in theta}


def _difference_into(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
                     high: float, low: float, total: Params) -> None:
    """total += :func:`_difference`, one solution at a time."""
    scale = config.inner.lam / (high - low)
    for v, weight in ((high, -scale), (low, scale)):
        _fold(total, solve(theta, loss, support, query, v, config.inner, in_place=config.in_place), theta,
              weight)


@register("fobmaml-forward", "−λ(φ_ν − φ_0)/ν, eq. (12)", order="first", rank=60,
          hyperparameters=("nu",), theory_nu=1.0, theory_delta=0.5, stencil=((1.0, 1.0), (0.0, -1.0)),
          floor=lambda c: FloorPasses(both=c.inner.steps, support=c.inner.steps, query=0))
def fobmaml_forward(theta: Params, loss: LossFn, support: Data, query: Data,
                    config: EstimatorConfig, noise: Params | None = None) -> Params:
    """Forward difference: bias O(λν) with an exact solve (Prop. 2)."""
    return _difference(theta, loss, support, query, config, config.nu, 0.0)


@accumulates("fobmaml-forward")
def fobmaml_forward_into(theta: Params, loss: LossFn, support: Data, query: Data,
                         config: EstimatorConfig, noise: Params | None, total: Params) -> None:
    """total += eq. (12)."""
    _difference_into(theta, loss, support, query, config, config.nu, 0.0, total)


@register("fobmaml-sym", "−λ(φ_ν − φ_−ν)/(2ν), eq. (13)", order="first", rank=70,
          hyperparameters=("nu",), theory_nu=2.0, theory_delta=2.0 / 3.0,
          stencil=((1.0, 0.5), (-1.0, -0.5)),
          floor=lambda c: FloorPasses(both=2 * c.inner.steps, support=0, query=0))
def fobmaml_sym(theta: Params, loss: LossFn, support: Data, query: Data,
                config: EstimatorConfig, noise: Params | None = None) -> Params:
    """Symmetric difference: bias O(λν²) with an exact solve (Prop. 2)."""
    return _difference(theta, loss, support, query, config, config.nu, -config.nu)


@accumulates("fobmaml-sym")
def fobmaml_sym_into(theta: Params, loss: LossFn, support: Data, query: Data,
                     config: EstimatorConfig, noise: Params | None, total: Params) -> None:
    """total += eq. (13)."""
    _difference_into(theta, loss, support, query, config, config.nu, -config.nu, total)
