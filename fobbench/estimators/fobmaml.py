"""FO-B-MAML: finite differences of perturbed proximal solutions, eqs. (12) and (13).

The solutions are taken as displacements Δ_v = φ_v − θ (:func:`~fobbench.inner.solve_displacement`),
so −λ(φ_ν − φ_−ν)/(2ν) = −λ(Δ_ν − Δ_−ν)/(2ν) is formed from numbers stored to Δ's own
precision: in float32 the rounding floor is ~eps·‖Δ‖/ν instead of ~eps·‖θ‖/ν.

The two inner problems are solved one after the other; both start at θ, so their first
steps share ∇f̂(θ) and ∇f(θ), computed once (the registered floor counts 2K − 1 passes of
f̂ + f for the symmetric difference; the in-place ``loop`` path, which holds one gradient
at a time, evaluates them per solve: 2K). Summed over tasks (``loop``
batching) each solution is added into the meta-gradient buffer as soon as it is solved,
so only one solution is ever held; the per-task form keeps both and subtracts them.
"""

from __future__ import annotations

from fobbench.estimators.base import EstimatorConfig, accumulates, nu_of, register
from fobbench.inner import first_gradients, solve_displacement
from fobbench.params import Data, LossFn, Params


def fold(total: Params, delta: Params, scale: float) -> None:
    """total += scale·Δ, in place."""
    for name, value in total.items():
        value.add_(delta[name], alpha=scale)


def _difference(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
                high: float, low: float) -> Params:
    """−λ(φ_high − φ_low)/(high − low) = −λ(Δ_high − Δ_low)/(high − low): the finite
    difference of two perturbed solutions.

    Both solves start at θ, so outside the in-place path their first steps share ∇f̂(θ) and
    ∇f(θ) (:func:`~fobbench.inner.first_gradients`): one gradient evaluation fewer per solve
    pair, same iterates.
    """
    scale = -config.inner.lam / (high - low)
    first = None if config.in_place else first_gradients(theta, loss, support, query)
    delta_high = solve_displacement(theta, loss, support, query, high, config.inner, in_place=config.in_place,
                                    first=first)
    delta_low = solve_displacement(theta, loss, support, query, low, config.inner, in_place=config.in_place,
                                   first=first)
    return {n: scale * (delta_high[n] - delta_low[n]) for n in theta}


def _difference_into(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
                     high: float, low: float, total: Params) -> None:
    """total += :func:`_difference`, one solution at a time."""
    scale = config.inner.lam / (high - low)
    for v, weight in ((high, -scale), (low, scale)):
        delta = solve_displacement(theta, loss, support, query, v, config.inner, in_place=config.in_place)
        fold(total, delta, weight)
        del delta  # freed before the next solve: one solution alive at a time


@register("fobmaml-forward")
def fobmaml_forward(theta: Params, loss: LossFn, support: Data, query: Data,
                    config: EstimatorConfig, noise: Params | None = None) -> Params:
    """Forward difference: bias O(λν) with an exact solve (Prop. 2)."""
    return _difference(theta, loss, support, query, config, nu_of("fobmaml-forward", config, theta), 0.0)


@accumulates("fobmaml-forward")
def fobmaml_forward_into(theta: Params, loss: LossFn, support: Data, query: Data,
                         config: EstimatorConfig, noise: Params | None, total: Params) -> None:
    """total += eq. (12)."""
    _difference_into(theta, loss, support, query, config, nu_of("fobmaml-forward", config, theta), 0.0, total)


@register("fobmaml-sym")
def fobmaml_sym(theta: Params, loss: LossFn, support: Data, query: Data,
                config: EstimatorConfig, noise: Params | None = None) -> Params:
    """Symmetric difference: bias O(λν²) with an exact solve (Prop. 2)."""
    nu = nu_of("fobmaml-sym", config, theta)
    return _difference(theta, loss, support, query, config, nu, -nu)


@accumulates("fobmaml-sym")
def fobmaml_sym_into(theta: Params, loss: LossFn, support: Data, query: Data,
                     config: EstimatorConfig, noise: Params | None, total: Params) -> None:
    """total += eq. (13)."""
    nu = nu_of("fobmaml-sym", config, theta)
    _difference_into(theta, loss, support, query, config, nu, -nu, total)
