"""Reptile: the average inner-trajectory direction, eq. (4)."""

from __future__ import annotations

from fobbench.estimators.base import EstimatorConfig, register
from fobbench.inner import solve_displacement
from fobbench.params import Data, LossFn, Params


@register("reptile")
def reptile(theta: Params, loss: LossFn, support: Data, query: Data, config: EstimatorConfig,
            noise: Params | None = None) -> Params:
    """(θ − φ_K)/(Kα) = −Δ_K/(Kα), from the displacement (no cancellation against θ)."""
    delta = solve_displacement(theta, loss, support, query, 0.0, config.inner, in_place=config.in_place)
    factor = -1.0 / (config.inner.steps * config.inner.lr)
    return {n: factor * delta[n] for n in theta}
